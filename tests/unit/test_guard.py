"""The request-acceptance layer, sans-IO: `vet_head` and `RequestGuard`."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_guard import SMALL, check, drive
from trimesh.config.model import Limits
from trimesh.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    NotImplementedFraming,
    ProxyError,
    UriTooLong,
    VersionNotSupported,
)
from trimesh.http.guard import MAX_CHUNK_LINE, NO_BODY, Framing, RequestGuard, vet_head

LIMITS = Limits()
CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus" / "guard"
CHUNKED = b"Transfer-Encoding: chunked"


def head(*lines: bytes, start: bytes = b"POST /a HTTP/1.1") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


# ---------------------------------------------------------------- vet_head


@pytest.mark.parametrize(
    ("data", "framing"),
    [
        (head(b"Host: a"), NO_BODY),
        (head(b"Host: a", b"Content-Length: 0"), NO_BODY),
        (head(b"Host: a", b"Content-Length: 12"), Framing(12, False)),
        (head(b"Host: a", b"content-length:\t007 "), Framing(7, False)),
        (head(b"Host: a", b"Content-Length: %d" % (2**63 - 1)), Framing(2**63 - 1, False)),
        (head(b"Host: a", b"Transfer-Encoding: chunked"), Framing(None, True)),
        (head(b"Host: a", b"transfer-encoding: Chunked "), Framing(None, True)),
        (head(b"Host: a", CHUNKED, start=b"POST http://a/ HTTP/1.1"), Framing(None, True)),
        (head(b"Content-Length: 3", start=b"POST / HTTP/1.0"), Framing(3, False)),
        (head(start=b"GET /" + b"a" * (LIMITS.max_request_line - 14) + b" HTTP/1.1"), NO_BODY),
        (head(*(b"X-%d: 1" % i for i in range(LIMITS.max_headers))), NO_BODY),
        (head(b"Host: a:1", b"Content-Length: 0", start=b"CONNECT a:1 HTTP/1.1"), NO_BODY),
        # Only exact names frame: the underscore twin is a plain field (dropped later).
        (head(b"Host: a", b"Transfer_Encoding: chunked", b"Content-Length: 2"), Framing(2, False)),
        (head(b"Host: a", b"Content_Length: 5"), NO_BODY),
        (head(b"Host: a", b"X-A: tab\there", b"X-B: caf\xc3\xa9 \xff"), NO_BODY),
        (head(b"Host: a:80", b"X-Host: a,b"), NO_BODY),
        (head(start=b"GET / HTTP/1.0"), NO_BODY),
    ],
    ids=[
        "no-body", "cl-0", "cl", "cl-ows-leading-zeros", "cl-max", "chunked",
        "chunked-any-case", "chunked-absolute-form", "cl-on-http10", "request-line-at-limit",
        "headers-at-limit", "connect-length-0", "underscore-te-is-not-framing",
        "underscore-cl-is-not-framing", "htab-and-obs-text-in-values", "host-with-port",
        "http10-without-host",
    ],
)  # fmt: skip
def test_vet_head_framing(data: bytes, framing: Framing) -> None:
    assert vet_head(data, LIMITS) == framing


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (head(b"Content-Length: 1", CHUNKED), BadRequest),
        (head(CHUNKED, b"Content-Length: 1"), BadRequest),
        (head(CHUNKED, start=b"POST / HTTP/1.0"), BadRequest),
        (head(CHUNKED, start=b"POST / HTTP/0.9"), VersionNotSupported),
        (head(b"X: 1", b" fold"), BadRequest),
        (head(b"X: 1", b"\tfold"), BadRequest),
        (head(b"Transfer-Encoding:", b" chunked"), BadRequest),
        (head(b"X: 1\nY: 2"), BadRequest),
        (head(b"X: 1\rY: 2"), BadRequest),
        (head(b"no colon"), BadRequest),
        (head(b": empty name"), BadRequest),
        (head(b"Content-Length: 1000,1000"), BadRequest),
        (head(b"Content-Length: 1, 1"), BadRequest),
        (head(b"Content-Length: %d" % 2**63), BadRequest),
        (head(b"Content-Length: 00000000000000000001"), BadRequest),
        (head(b"Content-Length: +1"), BadRequest),
        (head(b"Content-Length: -1"), BadRequest),
        (head(b"Content-Length: 1_0"), BadRequest),
        (head(b"Content-Length: \xd9\xa3"), BadRequest),
        (head(b"Content-Length:"), BadRequest),
        (head(b"Content-Length: 1", b"Content-Length: 1"), BadRequest),
        (head(CHUNKED, CHUNKED), BadRequest),
        (head(b"Transfer-Encoding: gzip"), NotImplementedFraming),
        (head(b"Transfer-Encoding: identity"), NotImplementedFraming),
        (head(b"Transfer-Encoding: chunked, chunked"), NotImplementedFraming),
        (head(b"Transfer-Encoding: gzip, chunked"), NotImplementedFraming),
        (head(b"Transfer-Encoding:"), NotImplementedFraming),
        (head(b"Host: a:1", b"Content-Length: 1", start=b"CONNECT a:1 HTTP/1.1"), BadRequest),
        (head(b"Host: a:1", CHUNKED, start=b"CONNECT a:1 HTTP/1.1"), BadRequest),
        (head(start=b"GET /" + b"a" * (LIMITS.max_request_line - 13) + b" HTTP/1.1"), UriTooLong),
        (head(b"X: " + b"a" * LIMITS.max_header_bytes), HeadersTooLarge),
        (head(*(b"X-%d: 1" % i for i in range(LIMITS.max_headers + 1))), HeadersTooLarge),
    ],
    ids=[
        "cl-te", "te-cl", "te-http10", "te-http09", "obs-fold-sp", "obs-fold-tab", "obs-fold-te",
        "bare-lf", "bare-cr", "no-colon", "empty-name", "cl-list", "cl-list-spaced", "cl-2^63",
        "cl-20-digits", "cl-plus", "cl-minus", "cl-underscore", "cl-arabic-digit", "cl-empty",
        "two-cl", "two-te", "te-gzip", "te-identity", "te-chunked-chunked", "te-gzip-chunked",
        "te-empty", "connect-length", "connect-chunked", "request-line-over-limit",
        "head-over-limit", "headers-over-limit",
    ],
)  # fmt: skip
def test_vet_head_rejects(data: bytes, error: type[ProxyError]) -> None:
    with pytest.raises(error):
        vet_head(data, LIMITS)


CONTROLS = [bytes([c]) for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (head(b"Host: a", start=b"GET / HTTP/1.2"), VersionNotSupported),
        (head(b"Host: a", start=b"GET / HTTP/2.0"), VersionNotSupported),
        (head(b"Host: a", start=b"GET / HTTP/3.0"), VersionNotSupported),
        (head(b"Host: a", start=b"GET / HTTP/0.9"), VersionNotSupported),
        (head(b"Host: a", start=b"GET / HTTP/2"), VersionNotSupported),
        (head(b"Host: a", start=b"GET / HTTP/1.10"), VersionNotSupported),
        (b"PRI * HTTP/2.0\r\n\r\n", VersionNotSupported),
        (head(b"Host: a", start=b"GET / http/1.1"), BadRequest),
        (head(b"Host: a", start=b"GET / HTTP/1.1x"), BadRequest),
        (head(b"Host: a", start=b"GET /"), BadRequest),
        (head(b"Host: a", start=b"GET / HTTP/1.1 "), BadRequest),
        (head(b"Host: a", b"Host: a"), BadRequest),
        (head(b"Host: a", b"host: b"), BadRequest),
        (head(b"Host: a,b"), BadRequest),
        (head(b"Host: a, a"), BadRequest),
        (head(b"Host: ,"), BadRequest),
        (head(b"Host: a", start=b"GET /\x7f HTTP/1.1"), BadRequest),
    ],
    ids=[
        "http-1.2", "http-2.0", "http-3.0", "http-0.9", "http-2", "http-1.10", "h2-preface",
        "version-lowercase", "version-suffix", "no-version", "version-trailing-space",
        "two-hosts", "two-hosts-any-case", "host-list", "host-list-same", "host-comma",
        "del-in-target",
    ],
)  # fmt: skip
def test_vet_head_rejects_versions_hosts_and_controls(data: bytes, error: type[ProxyError]) -> None:
    with pytest.raises(error):
        vet_head(data, LIMITS)


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"0x{c[0]:02x}")
@pytest.mark.parametrize("where", ["value", "value-end", "name"])
def test_control_characters_in_the_head_are_400(char: bytes, where: str) -> None:
    line = {"value": b"X-A: a%sb", "value-end": b"X-A: ab%s", "name": b"X-%sA: 1"}[where]
    with pytest.raises(BadRequest):
        vet_head(head(b"Host: a", line % char), LIMITS)


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"0x{c[0]:02x}")
def test_h11_alone_refuses_only_nul_vt_and_ff_in_values(char: bytes) -> None:
    """Why the guard checks: the rest would reach a backend through h11."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head(b"Host: a", b"X-A: a%sb" % char, start=b"GET / HTTP/1.1"))
    if char in (b"\x00", b"\x0b", b"\x0c"):
        with pytest.raises(h11.RemoteProtocolError):
            conn.next_event()
    else:
        assert isinstance(conn.next_event(), h11.Request)


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"0x{c[0]:02x}")
def test_control_characters_in_trailers_are_400(char: bytes) -> None:
    guard = RequestGuard(LIMITS)
    guard.feed(head(b"Host: a", CHUNKED) + b"0\r\nX-T: a%sb\r\n\r\n" % char)
    with pytest.raises(BadRequest, match="control character"):
        pull_all(guard)


def test_version_verdict_waits_for_the_head_and_keeps_the_earlier_checks_first() -> None:
    """Same order whole or split: a bare LF (seen early) outranks the version."""
    guard = RequestGuard(LIMITS)
    guard.feed(b"GET / HTTP/2.0\r\nHost: a\r\n")
    assert guard.pull() is None
    guard.feed(b"\r\n")
    with pytest.raises(VersionNotSupported):
        guard.pull()
    data = b"GET / HTTP/2.0\r\nX: 1\n\n"
    for pieces_ in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(BadRequest):
            feed_pieces(pieces_)


def test_content_length_over_max_body_is_413() -> None:
    with pytest.raises(BodyTooLarge):
        vet_head(head(b"Content-Length: 1025"), SMALL)
    assert vet_head(head(b"Content-Length: 1024"), SMALL) == Framing(1024, False)


# ---------------------------------------------------------------- RequestGuard


END = None  # a message boundary in the list of released pieces
Released = list[bytes | None]


def pull_all(guard: RequestGuard) -> Released:
    """Everything `pull` releases now, with END after each message."""
    out: Released = []
    while True:
        chunk = guard.pull()
        if chunk is not None:
            out.append(chunk)
        elif guard.message_done:
            out.append(END)
            guard.next_message()
        else:
            return out


def feed_pieces(pieces: list[bytes], limits: Limits = LIMITS) -> Released:
    """Feed the pieces one read at a time; everything released, with END marks."""
    guard = RequestGuard(limits)
    out: Released = []
    for piece in pieces:
        guard.feed(piece)
        out += pull_all(guard)
    return out


def flat(released: Released) -> tuple[bytes, int]:
    """Released bytes joined, and the number of message boundaries."""
    return b"".join(c for c in released if c is not END), released.count(END)


GET = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
CHUNKED_POST = head(b"Host: a", CHUNKED) + b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"


def test_one_message_at_a_time() -> None:
    guard = RequestGuard(LIMITS)
    guard.feed(POST + GET)
    assert guard.pull() == POST[: POST.index(b"abc")]
    assert guard.pull() == b"abc"
    assert guard.message_done
    assert guard.pull() is None  # the GET waits until the exchange is over
    assert guard.buffered == len(GET)
    guard.next_message()
    assert guard.pull() == GET
    assert guard.message_done and guard.buffered == 0


def test_chunked_framing_is_released_whole_and_stops_at_the_end() -> None:
    guard = RequestGuard(LIMITS)
    guard.feed(CHUNKED_POST + GET)
    top = head(b"Host: a", CHUNKED)
    assert pull_all(guard) == [top, CHUNKED_POST[len(top) :], END, GET, END]


def test_at_message_start_and_take_rest() -> None:
    guard = RequestGuard(LIMITS)
    assert guard.at_message_start
    guard.feed(b"G")
    assert not guard.at_message_start
    assert guard.take_rest() == b"G"
    assert guard.buffered == 0 and guard.pull() is None


def test_eof_is_recorded_and_never_released() -> None:
    guard = RequestGuard(LIMITS)
    guard.feed(b"GET / HT")
    guard.feed(b"")
    assert guard.eof
    assert guard.pull() is None


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\n\nX", BadRequest),
        (b"GET / HTTP/1.1\nHost: a\n\n", BadRequest),
        (b"GET /" + b"a" * 9000, UriTooLong),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, HeadersTooLarge),
        # Over both limits: the request line is the more precise complaint.
        (b"GET /" + b"a" * 70_000, UriTooLong),
    ],
    ids=["bare-lf-pair", "bare-lf-lines", "request-line", "header-bytes", "request-line-first"],
)
def test_unfinished_head_is_rejected_without_waiting(stream: bytes, error: type) -> None:
    guard = RequestGuard(LIMITS)
    guard.feed(stream)
    with pytest.raises(error):
        guard.pull()


@pytest.mark.parametrize("extra", [0, 1])
def test_request_line_limit_is_the_same_whole_or_split(extra: int) -> None:
    target = b"/" + b"a" * (LIMITS.max_request_line - 14 + extra)
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert len(data.split(b"\r\n")[0]) == LIMITS.max_request_line + extra
    for pieces in ([data], [data[:-27], data[-27:]], [data[i : i + 1] for i in range(len(data))]):
        if extra:
            with pytest.raises(UriTooLong):
                feed_pieces(pieces)
        else:
            assert flat(feed_pieces(pieces)) == (data, 1)


@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_leading_empty_lines_are_capped_however_split(split: str) -> None:
    four = b"\r\n" * 4 + GET
    five = b"\r\n" * 5 + GET
    assert flat(feed_pieces(pieces(four, split))) == (GET, 1)
    # The fifth is read as the (empty) request line; the real one is no header line.
    with pytest.raises(BadRequest):
        feed_pieces(pieces(five, split))


def pieces(data: bytes, split: str) -> list[bytes]:
    return [data] if split == "whole" else [data[i : i + 1] for i in range(len(data))]


BAD_BODIES = [
    pytest.param(b"1;" + b"x" * MAX_CHUNK_LINE, BadRequest, id="chunk-line-over-4kib"),
    pytest.param(b"zz\r\n", BadRequest, id="not-hex"),
    pytest.param(b" 3\r\nabc\r\n", None, id="leading-space-is-h11s-call"),
    pytest.param(b"3\nabc\r\n", BadRequest, id="bare-lf"),
    pytest.param(b"3\r\nabcXX", BadRequest, id="data-without-crlf"),
    pytest.param(b"0\r\nX: 1\n", BadRequest, id="trailer-bare-lf"),
    pytest.param(b"0\r\n fold\r\n\r\n", BadRequest, id="trailer-fold"),
    pytest.param(b"0\r\nX: " + b"a" * 600 + b"\r\n\r\n", HeadersTooLarge, id="trailers-too-big"),
    pytest.param(b"3ff\r\n" + b"a" * 1023 + b"\r\n2\r\n", BodyTooLarge, id="over-max-body"),
]


@pytest.mark.parametrize(("body", "error"), BAD_BODIES)
def test_bad_chunked_body_in_hand_is_rejected_before_the_head_is_released(
    body: bytes, error: type | None
) -> None:
    """Look-ahead: the head is not released (nothing goes upstream) for a doomed message."""
    guard = RequestGuard(SMALL)
    guard.feed(head(b"Host: a", CHUNKED) + body)
    if error is None:
        assert guard.pull() == head(b"Host: a", CHUNKED)
        return
    with pytest.raises(error):
        guard.pull()


@pytest.mark.parametrize(("body", "error"), [p for p in BAD_BODIES if p.values[1] is not None])
def test_bad_chunked_body_arriving_later_is_rejected_as_it_arrives(
    body: bytes, error: type
) -> None:
    guard = RequestGuard(SMALL)
    guard.feed(head(b"Host: a", CHUNKED))
    assert guard.pull() == head(b"Host: a", CHUNKED)
    with pytest.raises(error):
        for byte in range(len(body)):
            guard.feed(body[byte : byte + 1])
            pull_all(guard)


def test_valid_chunked_body_survives_the_look_ahead_unconsumed() -> None:
    guard = RequestGuard(LIMITS)
    partial = CHUNKED_POST[:-7]
    guard.feed(partial)
    assert guard.pull() == head(b"Host: a", CHUNKED)
    assert guard.buffered == len(partial) - len(head(b"Host: a", CHUNKED))
    guard.feed(CHUNKED_POST[-7:])
    assert flat(pull_all(guard)) == (CHUNKED_POST[len(head(b"Host: a", CHUNKED)) :], 1)


@pytest.mark.parametrize(
    ("before", "trickled"),
    [
        (b"", b"GET / HTTP/1.1\r\nX-A: " + b"a" * 65_000),
        (head(b"Host: a", CHUNKED) + b"0\r\n", b"X-T: " + b"a" * 65_000),
    ],
    ids=["head", "trailers"],
)
def test_input_trickled_a_byte_per_read_costs_linear_time(before: bytes, trickled: bytes) -> None:
    """Each read resumes the search; rescanning the whole buffer took ~5 s of CPU here."""
    guard = RequestGuard(LIMITS)
    guard.feed(before)
    pull_all(guard)
    started = time.process_time()
    for i in range(len(trickled)):
        guard.feed(trickled[i : i + 1])
        assert guard.pull() in (None, b"0\r\n")
    assert time.process_time() - started < 1.5


# ---------------------------------------------------------------- properties

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text("abcdefghijklmnopqrstuvwxyzABCDEF0123456789 ;=,/", max_size=30).map(str.strip)


@st.composite
def valid_message(draw: st.DrawFn) -> bytes:
    """One well-formed request: no body, Content-Length, or chunked with extensions/trailers."""
    fields = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
    lines = [b"Host: a"] + [b"x-%s: %s" % (n.encode(), v.encode()) for n, v in fields]
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=300)) if kind != "none" else b""
    empty = b"\r\n" * draw(st.integers(0, 4))
    if kind == "length":
        return empty + head(*lines, b"Content-Length: %d" % len(body)) + body
    if kind == "none":
        return empty + head(*lines, start=b"GET /%s HTTP/1.1" % draw(TOKEN).encode())
    framed, rest = b"", body
    while rest:
        n = draw(st.integers(1, len(rest)))
        ext = draw(st.sampled_from([b"", b";a=1", b"; q"]))
        framed += b"%x%s\r\n%s\r\n" % (n, ext, rest[:n])
        rest = rest[n:]
    trailers = b"".join(b"x-t-%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields[:2])
    return empty + head(*lines, CHUNKED) + framed + b"0\r\n" + trailers + b"\r\n"


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=60, deadline=None)
@given(st.lists(valid_message(), min_size=1, max_size=4).flatmap(
    lambda msgs: st.tuples(st.just(msgs), split(b"".join(msgs)))
))  # fmt: skip
def test_any_split_of_a_valid_stream_releases_the_same_bytes_and_boundaries(
    example: tuple[list[bytes], list[bytes]],
) -> None:
    messages, reads = example
    data = b"".join(messages)
    whole = feed_pieces([data])
    bytewise = feed_pieces([data[i : i + 1] for i in range(len(data))])
    chunked = feed_pieces(reads)
    assert flat(whole) == flat(bytewise) == flat(chunked)
    # Only the allowed leading empty lines are dropped, and each message ends once.
    assert flat(whole) == (b"".join(m.lstrip(b"\r\n") for m in messages), len(messages))
    # The acceptance layer with h11 behind it agrees, too.
    assert len(drive(reads, LIMITS).accepted) == len(messages)


PARTS = [
    b"GET http://o/a HTTP/1.1", b"POST /b HTTP/1.0", b"CONNECT o:80 HTTP/1.1", b"HTTP/0.9",
    b"Host: o", b"Content-Length: 3", b"Content-Length: 0", CHUNKED, b"Transfer-Encoding: Chunked",
    b"Connection: close", b"Upgrade: x", b"X: y", b" fold", b"\r\n", b"\n", b"\r", b"abc",
    b"3\r\nabc\r\n", b"0\r\n", b"0\r\n\r\n", b"X-T: 1\r\n", b"ff;e=1\r\n", b":", b" ", b"\x00",
    b"GET http://o/ HTTP/1.2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"HTTP/2.0", b"Host: a,b",
    b"Transfer_Encoding: chunked", b"\x01", b"\x7f", b"\t",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PARTS) | st.binary(max_size=4), max_size=30))
def test_fuzz_invariant_holds_on_http_shaped_noise(parts: list[bytes]) -> None:
    """The fuzz harness's invariant, on inputs built from HTTP fragments."""
    check(b"".join(parts))


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_fuzz_invariant_holds_on_the_seed_corpus(path: Path) -> None:
    check(path.read_bytes())


def test_seed_corpus_has_the_valid_shapes_and_the_smuggling_shapes() -> None:
    verdicts = {p.name: drive([p.read_bytes()], LIMITS) for p in CORPUS.iterdir()}
    assert 10 <= len(verdicts) <= 20
    accepted = {name for name, v in verdicts.items() if v.rejected is None}
    assert accepted == {
        "01-get.http", "02-post-content-length.http", "03-chunked-trailers.http",
        "04-pipelined.http", "05-leading-empty-lines.http",
    }  # fmt: skip
    assert len(verdicts["04-pipelined.http"].accepted) == 4
