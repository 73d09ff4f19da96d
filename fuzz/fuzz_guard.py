"""Fuzz the request-acceptance layer: RequestGuard feeding an h11 SERVER machine.

Invariant (for any input bytes, fed whole, byte by byte and in 7-byte pieces,
then EOF, under the default limits and under small ones):

1. Nothing raises except our `ProxyError` taxonomy or `h11.RemoteProtocolError`
   (h11's verdict on a head the guard passed). Anything else is a bug.
2. h11 never holds a byte beyond the message boundary: at every
   `EndOfMessage` the guard agrees the message is done and h11 has no
   trailing data; h11 never starves mid-body while the guard thinks the
   body is complete (their framings agree).
3. The split does not matter: every way of feeding accepts the same complete
   requests (method, target, version, headers, body, trailers) and reaches
   the same verdict (rejected or not).
4. Every head h11 delivers is one we may forward: HTTP/1.0 or 1.1, at most one
   Host and no list in it, no control character but HTAB in any field value
   or trailer value.

Run: `python fuzz/fuzz_guard.py [libFuzzer flags] [corpus dirs]` (atheris), as
h11's fuzz/afl-server.py does for h11 alone. `check` is also replayed over
fuzz/corpus/guard/ by tests/unit/test_guard.py.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable, Iterator

import attrs

if __name__ == "__main__":
    import atheris

    # Coverage feedback from the code under test only, not the stdlib.
    _instrumented = atheris.instrument_imports(include=["h11", "trimesh"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import h11

    from trimesh.config.model import Limits
    from trimesh.errors import ProxyError
    from trimesh.http.guard import RequestGuard

SMALL = Limits(max_header_bytes=512, max_headers=8, max_request_line=128, max_body_bytes=1024)
LIMITS = (Limits(), SMALL)
# A response that also refuses any protocol switch, so the next cycle can start.
_ANSWER = h11.Response(status_code=404, headers=[(b"content-length", b"0")])
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@attrs.frozen
class Accepted:
    """One complete request as h11 delivered it after the guard."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class Outcome:
    accepted: tuple[Accepted, ...]
    # Request heads h11 delivered: each is one the sidecar would forward.
    heads: int
    # The status the client would get (a ProxyError's, or 400/501 from h11), None if none.
    rejected: int | None


def drive(pieces: Iterable[bytes], limits: Limits) -> Outcome:
    """Feed `pieces` then EOF through guard + h11 as the sidecar does; check invariant 2."""
    driver = _Driver(limits)
    try:
        for piece in [*pieces, b""]:
            driver.guard.feed(piece)
            if not driver.pump():
                break
    except ProxyError as exc:
        return Outcome(tuple(driver.accepted), driver.heads, exc.status)
    except h11.RemoteProtocolError as exc:
        status = 501 if exc.error_status_hint == 501 else 400
        return Outcome(tuple(driver.accepted), driver.heads, status)
    return Outcome(tuple(driver.accepted), driver.heads, None)


class _Driver:
    """The sidecar's read loop without sockets: guard.pull() is all h11 ever gets."""

    def __init__(self, limits: Limits) -> None:
        self.guard = RequestGuard(limits)
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=limits.max_header_bytes + 1
        )
        self.accepted: list[Accepted] = []
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.heads = 0
        self.eof_sent = False

    def pump(self) -> bool:
        """Process everything fed so far; False once the connection is finished."""
        guard, conn = self.guard, self.conn
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                assert not (guard.message_done and conn.their_state is h11.SEND_BODY), (
                    "the guard ended the body before h11 did"
                )
                chunk = guard.pull()
                if chunk is not None:
                    assert chunk, "pull() returned b''"
                    conn.receive_data(chunk)
                elif guard.eof and not self.eof_sent:
                    conn.receive_data(b"")
                    self.eof_sent = True
                else:
                    return True
            elif isinstance(event, h11.Request):
                _check_forwardable(event)
                self.request = event
                self.heads += 1
                self.body.clear()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.end_of_message(event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return False
                conn.start_next_cycle()
                guard.next_message()
            else:  # ConnectionClosed, or PAUSED: nothing more will be read
                return False

    def end_of_message(self, event: h11.EndOfMessage) -> None:
        assert not any(_CONTROL.search(v) for _, v in event.headers), event
        assert self.guard.message_done, "h11 ended the message before the guard did"
        assert not self.conn.trailing_data[0], "h11 was handed bytes beyond the message"
        request = self.request
        assert request is not None
        self.accepted.append(
            Accepted(
                request.method,
                request.target,
                request.http_version,
                tuple(request.headers),
                bytes(self.body),
                tuple(event.headers),
            )
        )
        self.conn.send(_ANSWER)
        self.conn.send(h11.EndOfMessage())


def _check_forwardable(request: h11.Request) -> None:
    """Invariant 4 for a request head h11 accepted after the guard."""
    assert request.http_version in (b"1.0", b"1.1"), request
    hosts = [v for n, v in request.headers if n == b"host"]
    assert len(hosts) <= 1 and b"," not in b"".join(hosts), request
    assert not any(_CONTROL.search(v) for _, v in request.headers), request


def pieces_of(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def check(data: bytes) -> None:
    """The invariant above; raises AssertionError (or the unexpected exception) if broken."""
    for limits in LIMITS:
        whole = drive([data], limits)
        for size in (1, 7):
            split = drive(pieces_of(data, size), limits)
            assert split.accepted == whole.accepted, (size, split, whole)
            assert (split.rejected is None) == (whole.rejected is None), (size, split, whole)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
