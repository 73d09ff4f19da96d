"""The request-acceptance layer: vets raw request bytes before h11 sees them.

h11 accepts things a proxy must not pass on (both Content-Length and
Transfer-Encoding, Transfer-Encoding before HTTP/1.1, obs-fold, bare LF in the
header block, `Content-Length: 1000,1000`, lengths above 2^63, a body on
CONNECT, over-long chunk-size lines it waits on forever, huge header blocks
arriving in one read, any `HTTP/d.d` version, control characters such as
\x01 or DEL in field values, a `Host` that is a list). `RequestGuard` owns
the downstream byte buffer and hands h11 exactly one vetted message at a
time: first the head, once it is complete and clean (and no chunked body
bytes already in hand are bad), then only the bytes that belong to that
message's body. Bytes after the message stay here, so a rejected or
unfinished message can never leak into a second request. The verdict does
not depend on how the bytes were split into reads, and a search resumes
where the last read ended (no quadratic rescans).

Sans-IO: no trio here. Error handling: raises `BadRequest`,
`HeadersTooLarge`, `BodyTooLarge`, `UriTooLong`, `NotImplementedFraming` or
`VersionNotSupported`.
"""

from __future__ import annotations

import re

import attrs

from trimesh.config.model import Limits
from trimesh.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    NotImplementedFraming,
    UriTooLong,
    VersionNotSupported,
)

MAX_CONTENT_LENGTH = 2**63 - 1
MAX_CHUNK_LINE = 4096
# RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request-line.
MAX_LEADING_EMPTY_LINES = 4

# Control characters other than HTAB (CR and LF are checked as line endings).
# h11 refuses only NUL, VT and FF in values; a backend may cut a value at the
# others or read them as separators. Found by deleting them (`bytes.translate`
# is ~3x faster than a regex search on a typical head).
_CONTROLS = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
# Shaped like a version, so the answer is 505 rather than 400 (RFC 9110 15.6.6).
_ANY_VERSION = re.compile(rb"HTTP/[0-9]+(?:\.[0-9]+)?")

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE = range(7)


@attrs.frozen
class Framing:
    """How the body of a vetted head is delimited."""

    content_length: int | None
    chunked: bool


NO_BODY = Framing(0, False)


def vet_head(head: bytes | bytearray, limits: Limits) -> Framing:
    """Check a complete head (ending in CRLFCRLF); return its body framing."""
    # The request line first: a long one is 414 however the bytes were split.
    if _first_line_too_long(head, limits.max_request_line):
        raise UriTooLong(f"request line over {limits.max_request_line} bytes")
    if len(head) > limits.max_header_bytes:
        raise HeadersTooLarge(f"header block over {limits.max_header_bytes} bytes")
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        raise BadRequest("bare CR or LF in the header block")
    if b"\n " in head or b"\n\t" in head:
        # Before any field is read: a folded Transfer-Encoding is a fold (400), not a coding.
        raise BadRequest("obsolete line folding in headers")
    if len(head.translate(None, _CONTROLS)) != len(head):
        raise BadRequest("control character in the request head")
    lines = bytes(head[:-4]).split(b"\r\n")
    request_line = lines[0]
    if len(lines) - 1 > limits.max_headers:
        raise HeadersTooLarge(f"more than {limits.max_headers} header fields")
    # h11 accepts any HTTP/d.d and would have us forward it as 1.1.
    version = request_line.rpartition(b" ")[2]
    if version not in _VERSIONS:
        if _ANY_VERSION.fullmatch(version):
            raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are supported")
        raise BadRequest("malformed request line")
    length, chunked = _read_fields(lines, limits)
    if chunked and length is not None:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    # HTTP/1.0 has no chunked framing (RFC 9112 6.1).
    if chunked and version == b"HTTP/1.0":
        raise BadRequest("Transfer-Encoding on HTTP/1.0")
    if (chunked or length) and request_line.startswith(b"CONNECT "):
        # CONNECT has no content (RFC 9110 9.3.6): a framed "body" would be read
        # here as a body and by others as the first tunnel bytes.
        raise BadRequest("CONNECT with a body")
    if chunked:
        return Framing(None, True)
    return Framing(length or 0, False)


def _read_fields(lines: list[bytes], limits: Limits) -> tuple[int | None, bool]:
    """The framing fields of a head's lines; one Host that is not a list."""
    length: int | None = None
    chunked = host = False
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0:
            raise BadRequest("malformed header line")
        name = line[:colon].lower()
        if name == b"content-length":
            if length is not None:
                raise BadRequest("more than one Content-Length")
            length = _content_length(line[colon + 1 :].strip(b" \t"), limits)
        elif name == b"transfer-encoding":
            if chunked:
                raise BadRequest("more than one Transfer-Encoding")
            if line[colon + 1 :].strip(b" \t").lower() != b"chunked":
                raise NotImplementedFraming("only Transfer-Encoding: chunked is supported")
            chunked = True
        elif name == b"host":
            # Which of two hosts (or of a list) is meant depends on who reads it.
            if host:
                raise BadRequest("more than one Host")
            if b"," in line:
                raise BadRequest("Host is a list")
            host = True
    return length, chunked


def _first_line_too_long(buf: bytes | bytearray, limit: int) -> bool:
    """True once the request line (its CRLF not counted) is known to exceed `limit`."""
    end = buf.find(b"\n", 0, limit + 2)
    if end < 0:
        end = min(len(buf), limit + 2)
    if end and buf[end - 1] == 0x0D:
        end -= 1
    return end > limit


def _content_length(value: bytes, limits: Limits) -> int:
    if not value.isdigit() or not value.isascii():
        raise BadRequest("Content-Length is not a single decimal number")
    if len(value) > 19 or int(value) > MAX_CONTENT_LENGTH:
        raise BadRequest("Content-Length above 2^63-1")
    n = int(value)
    if limits.max_body_bytes is not None and n > limits.max_body_bytes:
        raise BodyTooLarge(f"body over {limits.max_body_bytes} bytes")
    return n


class RequestGuard:
    """Owns the downstream buffer; releases one vetted message's bytes at a time.

    Feed socket bytes with `feed`; call `pull` for the next bytes h11 may see
    (`None` when more input is needed, b"" never). After a message's body is
    complete, `pull` returns `None` until `next_message` is called.
    """

    __slots__ = (
        "_body_seen",
        "_buf",
        "_framing",
        "_limits",
        "_remaining",
        "_scanned",
        "_skipped",
        "_state",
        "eof",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._body_seen = 0
        # Empty lines skipped before this head; counted across reads so the cap
        # does not depend on how the bytes were split.
        self._skipped = 0
        # Bytes at the front of the buffer already searched for the end of the
        # head (or of the chunk-size/trailer line) being waited on: a search
        # resumes there, so input trickled a byte per read costs linear time.
        self._scanned = 0
        self._framing = NO_BODY
        self.eof = False

    def __repr__(self) -> str:
        return f"<RequestGuard state={self._state} buffered={len(self._buf)} eof={self.eof}>"

    def feed(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self.eof = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def framing(self) -> Framing:
        return self._framing

    @property
    def message_done(self) -> bool:
        return self._state == _DONE

    @property
    def at_message_start(self) -> bool:
        """True while no byte of the next message has arrived."""
        return self._state == _HEAD and not self._buf

    @property
    def nothing_unread(self) -> bool:
        """True when the current message was read whole and nothing follows it yet."""
        return self._state in (_HEAD, _DONE) and not self._buf

    def next_message(self) -> None:
        """Start looking for the next request head (after a complete exchange)."""
        self._state = _HEAD
        self._skipped = 0
        self._scanned = 0

    def take_rest(self) -> bytes:
        """Hand over every buffered byte (the connection becomes a tunnel)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        self._state = _DONE
        return rest

    def pull(self) -> bytes | None:
        if self._state == _HEAD:
            return self._pull_head()
        if self._state == _DONE or not self._buf:
            return None
        if self._state == _LENGTH:
            return self._pull_length()
        return self._pull_chunked()

    def _pull_head(self) -> bytes | None:
        buf = self._buf
        while buf[:2] == b"\r\n" and self._skipped < MAX_LEADING_EMPTY_LINES:
            del buf[:2]
            self._skipped += 1
            self._scanned = 0
        # Back up 3 bytes: the previous read may have ended inside a delimiter.
        start = max(0, self._scanned - 3)
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            self._check_partial_head(start)
            self._scanned = len(buf)
            return None
        self._scanned = 0
        head = bytes(buf[: end + 4])
        framing = vet_head(head, self._limits)
        self._framing = framing
        self._body_seen = 0
        if framing.chunked:
            self._state = _CHUNK_SIZE
            self._vet_buffered_body(end + 4)
        elif framing.content_length:
            self._state, self._remaining = _LENGTH, framing.content_length
        else:
            self._state = _DONE
        del buf[: end + 4]
        return head

    def _check_partial_head(self, start: int) -> None:
        """Reject an unfinished head early; bytes before `start` passed these checks."""
        buf = self._buf
        if buf.find(b"\n\n", start) >= 0 or buf.find(b"\n\r\n", start) >= 0:
            raise BadRequest("bare LF in the header block")
        limit = self._limits.max_request_line
        # Once limit+2 bytes were seen, the request-line verdict is final.
        if self._scanned < limit + 2 and _first_line_too_long(buf, limit):
            raise UriTooLong(f"request line over {self._limits.max_request_line} bytes")
        if len(buf) > self._limits.max_header_bytes:
            raise HeadersTooLarge(f"header block over {self._limits.max_header_bytes} bytes")

    def _vet_buffered_body(self, pos: int) -> None:
        """Raise now if the chunked body bytes already here are bad.

        Without this look-ahead the head would go upstream (a connection
        opened, a request started) for a message whose rejection is already
        certain from bytes in hand. Nothing is consumed.
        """
        saved = (self._state, self._remaining, self._body_seen, self._scanned)
        try:
            while pos < len(self._buf) and self._state != _DONE:
                pos = self._step_chunked(self._buf, pos)
                if pos < 0:
                    break
        finally:
            self._state, self._remaining, self._body_seen, self._scanned = saved

    def _pull_length(self) -> bytes:
        n = min(self._remaining, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._remaining -= n
        if not self._remaining:
            self._state = _DONE
        return out

    def _pull_chunked(self) -> bytes | None:
        """Consume as much chunked framing as is buffered; return those raw bytes."""
        pos = 0
        buf = self._buf
        while pos < len(buf) and self._state != _DONE:
            step = self._step_chunked(buf, pos)
            if step < 0:
                break
            pos = step
        if pos == 0:
            return None
        out = bytes(buf[:pos])
        del buf[:pos]
        return out

    def _step_chunked(self, buf: bytearray, pos: int) -> int:
        """Advance one framing element; return the new position, or -(pos+1) to wait."""
        state = self._state
        if state == _CHUNK_DATA:
            n = min(self._remaining, len(buf) - pos)
            self._remaining -= n
            if not self._remaining:
                self._state = _CHUNK_CRLF
            return pos + n
        if state == _CHUNK_CRLF:
            if len(buf) - pos < 2:
                return -(pos + 1)
            if buf[pos : pos + 2] != b"\r\n":
                raise BadRequest("chunk data not followed by CRLF")
            self._state = _CHUNK_SIZE
            return pos + 2
        # A line we waited on starts at pos 0 (what came before it was released);
        # resume its search, backing up 1 byte for a CR the last read ended on.
        start = pos + max(0, self._scanned - 1)
        end = buf.find(b"\r\n", start)
        if end < 0:
            if buf.find(b"\n", start) >= 0:
                raise BadRequest("chunk-size or trailer line not ended by CRLF")
            if state == _CHUNK_SIZE and len(buf) - pos > MAX_CHUNK_LINE:
                raise BadRequest("chunk-size line too long")
            # Same measure as `_trailer_line`, so the status does not depend on the split.
            if (
                state == _TRAILERS
                and self._remaining + len(buf) - pos > self._limits.max_header_bytes
            ):
                raise HeadersTooLarge("trailer block too large")
            self._scanned = len(buf) - pos
            return -(pos + 1)
        self._scanned = 0
        line = bytes(buf[pos:end])
        if state == _CHUNK_SIZE:
            self._chunk_size_line(line)
        else:
            self._trailer_line(line, end + 2 - pos)
        return end + 2

    def _chunk_size_line(self, line: bytes) -> None:
        if len(line) > MAX_CHUNK_LINE or b"\n" in line or b"\r" in line:
            raise BadRequest("chunk-size line too long")
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or not _is_hex(size_text):
            raise BadRequest("bad chunk size")
        size = int(size_text, 16)
        self._body_seen += size
        limit = self._limits.max_body_bytes
        if limit is not None and self._body_seen > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        if size:
            self._state, self._remaining = _CHUNK_DATA, size
        else:
            self._state, self._remaining = _TRAILERS, 0

    def _trailer_line(self, line: bytes, consumed: int) -> None:
        if not line:
            self._state = _DONE
            return
        self._remaining += consumed
        if self._remaining > self._limits.max_header_bytes:
            raise HeadersTooLarge("trailer block too large")
        if line[:1] in (b" ", b"\t") or b"\n" in line or b"\r" in line or b":" not in line:
            raise BadRequest("malformed trailer line")
        if len(line.translate(None, _CONTROLS)) != len(line):
            raise BadRequest("control character in a trailer field")


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _is_hex(text: bytes) -> bool:
    return all(c in _HEX for c in text)
