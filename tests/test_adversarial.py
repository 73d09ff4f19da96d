"""Hostile and malformed clients against the real sidecar, over raw loopback sockets.

Every request here is sent absolute-form to the outbound listener for the
static service `orders`, backed by the recording `Upstream`. A rejected
request must get its 4xx, the connection must close (we read to EOF without
half-closing), and the upstream must have seen nothing: no request, not even
a connection. Timeouts run on trio's autojump clock, so 75 s take ~ms.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar

HOST = b"Host: orders\r\n"
SMUGGLED = b"GET http://orders/smuggled HTTP/1.1\r\nHost: orders\r\n\r\n"


# ---------------------------------------------------------------- helpers


async def outbound_port(nursery: trio.Nursery, upstream: Upstream, **limits: Any) -> int:
    """Start a sidecar whose service `orders` is `upstream`; return the outbound port."""
    raw = sidecar_config(
        registry={"services": {"orders": [{"address": f"127.0.0.1:{upstream.port}"}]}},
        limits=limits,
    )
    _, bound = await start_sidecar(nursery, raw)
    return bound.outbound[1]


@attrs.frozen
class Reply:
    """Everything the sidecar sent before closing, and how it closed."""

    data: bytes
    reset: bool

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1]) if self.data.startswith(b"HTTP/1.1 ") else 0


async def read_to_close(stream: trio.SocketStream) -> Reply:
    """Read until EOF or reset; the caller's fail_after bounds the wait."""
    chunks = []
    try:
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    except trio.BrokenResourceError:
        return Reply(b"".join(chunks), reset=True)
    return Reply(b"".join(chunks), reset=False)


async def send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    """Send, tolerating the peer closing on us mid-send (it rejected what it read)."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)


async def exchange(port: int, data: bytes, *, limit: float = 5) -> Reply:
    """Send `data` without half-closing and read until the sidecar closes."""
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(send_quietly, stream, data)
            return await read_to_close(stream)


def parse_responses(data: bytes) -> tuple[list[tuple[h11.Response, bytes]], bytes]:
    """Every complete response in `data` (as an h11 client reads them) and what is left."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    out: list[tuple[h11.Response, bytes]] = []
    while True:
        conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        response, body = None, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return out, bytes(conn.trailing_data[0])
        assert response is not None
        out.append((response, body))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out, bytes(conn.trailing_data[0])
        conn.start_next_cycle()


def assert_single_rejection(reply: Reply, status: int) -> None:
    """Exactly one error response, announced as the last on the connection."""
    responses, rest = parse_responses(reply.data)
    assert [r.status_code for r, _ in responses] == [status], reply.data[:300]
    response, body = responses[0]
    headers = dict(response.headers)
    assert headers[b"connection"] == b"close"
    assert headers[b"x-trimesh-error"]
    assert body.startswith(b"trimesh: ")
    assert rest == b""


def assert_untouched(upstream: Upstream) -> None:
    assert upstream.seen == []
    assert upstream.connections == 0


@pytest.fixture(autouse=True)
def no_unhandled_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """A hostile client must never reach the `bug: unhandled error` path."""
    caplog.set_level(logging.WARNING, logger="trimesh")
    yield
    if request.node.get_closest_marker("xfail") is None:
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------- the table


def post(*lines: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = b"POST http://orders/a HTTP/%s\r\n%s" % (version, HOST)
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def get(*lines: bytes) -> bytes:
    return post(*lines).replace(b"POST", b"GET", 1)


def connect(*lines: bytes, body: bytes) -> bytes:
    """CONNECT to the known service: allowed without a body (a tunnel to `orders`)."""
    head = b"CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n"
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked"
MIB = 1 << 20


@attrs.frozen
class Case:
    id: str
    data: bytes
    status: int
    # A complete message: anything appended is a would-be second request.
    complete: bool = True


CASES = [
    # Both framings: the classic CL.TE / TE.CL desync shapes.
    Case("cl-then-te", post(b"Content-Length: 6", CHUNKED, body=b"0\r\n\r\nX"), 400),
    Case(
        "te-then-cl", post(CHUNKED, b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), 400
    ),
    Case("te-on-http10", post(CHUNKED, body=b"0\r\n\r\n", version=b"1.0"), 400),
    # An unsupported version is 505 before its framing is looked at.
    Case("te-on-http09", post(CHUNKED, body=b"0\r\n\r\n", version=b"0.9"), 505),
    Case("obs-fold-space", get(b"X-A: 1", b" folded"), 400),
    Case("obs-fold-tab", get(b"X-A: 1", b"\tfolded"), 400),
    Case("obs-fold-te", post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n"), 400),
    Case("bare-lf-in-header-block", get(b"X-A: 1\nX-B: 2"), 400),
    Case("bare-lf-line-endings", b"GET http://orders/a HTTP/1.1\nHost: orders\n\n", 400),
    Case("bare-lf-ends-head", b"GET http://orders/a HTTP/1.1\r\nHost: orders\r\n\n", 400),
    Case("bare-cr", get(b"X-A: 1\rX-B: 2"), 400),
    Case("cl-list", post(b"Content-Length: 1000,1000"), 400),
    Case("cl-list-spaced", post(b"Content-Length: 3, 3", body=b"abc"), 400),
    Case("cl-2^63", post(b"Content-Length: %d" % 2**63), 400),
    Case("cl-20-digits", post(b"Content-Length: 99999999999999999999"), 400),
    Case("two-cl-same", post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), 400),
    Case("two-cl-differ", post(b"Content-Length: 3", b"Content-Length: 5", body=b"abc"), 400),
    Case("cl-plus-sign", post(b"Content-Length: +3", body=b"abc"), 400),
    Case("cl-negative", post(b"Content-Length: -1"), 400),
    Case("cl-hex", post(b"Content-Length: 0x3", body=b"abc"), 400),
    Case("te-gzip", post(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 501),
    Case("te-identity", post(b"Transfer-Encoding: identity"), 501),
    Case(
        "te-chunked-chunked", post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 501
    ),
    Case("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    Case("te-xchunked", post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 501),
    # VT is a control character: refused as such before the coding is read.
    Case("te-vtab-chunked", post(b"Transfer-Encoding: \x0bchunked", body=b"0\r\n\r\n"), 400),
    Case("two-te", post(CHUNKED, CHUNKED, body=b"0\r\n\r\n"), 400),
    Case("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    Case("space-before-colon", get(b"X-A : 1"), 400),
    Case("nul-in-header-value", get(b"X-A: a\x00b"), 400),
    Case("nul-in-header-name", get(b"X-\x00A: 1"), 400),
    Case("nul-in-target", b"GET http://orders/a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    Case("two-host-headers", get(b"Host: elsewhere"), 400),
    Case("two-host-headers-same", get(b"host: orders"), 400),
    Case("host-list", b"GET http://orders/a HTTP/1.1\r\nHost: orders,evil\r\n\r\n", 400),
    Case("host-list-spaced", b"GET http://orders/a HTTP/1.1\r\nHost: orders, orders\r\n\r\n", 400),
    # Versions h11 would accept and we would have forwarded as HTTP/1.1.
    Case("http-1.2", get().replace(b"HTTP/1.1", b"HTTP/1.2", 1), 505),
    Case("http-2.0", get().replace(b"HTTP/1.1", b"HTTP/2.0", 1), 505),
    Case("http-3.0", get().replace(b"HTTP/1.1", b"HTTP/3.0", 1), 505),
    Case("http-0.9", get().replace(b"HTTP/1.1", b"HTTP/0.9", 1), 505),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # h11 lets these through in values (only NUL, VT, FF are refused there).
    Case("soh-in-header-value", get(b"X-A: a\x01b"), 400),
    Case("esc-in-header-value", get(b"X-A: a\x1bb"), 400),
    Case("del-in-header-value", get(b"X-A: a\x7fb"), 400),
    Case("ff-in-header-value", get(b"X-A: a\x0cb"), 400),
    Case("soh-in-trailer-value", post(CHUNKED, body=b"0\r\nX-T: a\x01b\r\n\r\n"), 400),
    Case("del-in-trailer-value", post(CHUNKED, body=b"0\r\nX-T: a\x7fb\r\n\r\n"), 400),
    Case("connect-with-length", connect(b"Content-Length: 5", body=b"hello"), 400),
    Case("connect-with-chunked-body", connect(CHUNKED, body=b"0\r\n\r\n"), 400),
    Case(
        "chunk-size-line-over-4kib",
        post(CHUNKED, body=b"1;" + b"x" * 10_000),
        400,
        complete=False,
    ),
    Case("chunk-size-zeros-over-4kib", post(CHUNKED, body=b"0" * 10_000), 400, complete=False),
    Case("chunk-size-not-hex", post(CHUNKED, body=b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-0x", post(CHUNKED, body=b"0x3\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-negative", post(CHUNKED, body=b"-3\r\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-size-overflow", post(CHUNKED, body=b"f" * 18 + b"\r\nabc\r\n"), 400),
    Case("chunk-data-without-crlf", post(CHUNKED, body=b"3\r\nabcXX0\r\n\r\n"), 400),
    Case("chunk-size-bare-lf", post(CHUNKED, body=b"3\nabc\r\n0\r\n\r\n"), 400),
    Case("chunk-ext-bare-lf", post(CHUNKED, body=b"3;x\nabc\r\n0\r\n\r\n"), 400),
    Case("trailer-obs-fold", post(CHUNKED, body=b"0\r\nX-T: 1\r\n folded\r\n\r\n"), 400),
    Case("header-block-1mib", get(b"X-Big: " + b"a" * MIB), 431),
    Case("headers-over-max", get(*(b"X-%d: 1" % i for i in range(150))), 431),
    Case("request-line-9kib", get().replace(b"/a", b"/" + b"a" * 9000), 414),
    Case("request-line-unfinished", b"GET http://orders/" + b"a" * 20_000, 414, complete=False),
    Case("request-line-1mib", b"GET http://orders/" + b"a" * MIB, 414, complete=False),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
async def test_rejected_and_closed_before_upstream(
    nursery: trio.Nursery, upstream: Upstream, case: Case
) -> None:
    port = await outbound_port(nursery, upstream)
    reply = await exchange(port, case.data)
    assert_single_rejection(reply, case.status)
    assert_untouched(upstream)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.complete])
async def test_bytes_after_a_rejected_request_never_become_a_request(
    nursery: trio.Nursery, upstream: Upstream, case: Case
) -> None:
    port = await outbound_port(nursery, upstream)
    reply = await exchange(port, case.data + SMUGGLED)
    assert_single_rejection(reply, case.status)
    assert_untouched(upstream)
    # The sidecar still serves, and the upstream sees only what we send now.
    canary = await exchange(
        port, b"GET http://orders/canary HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
    )
    assert canary.status == 200
    assert [s.target for s in upstream.seen] == [b"/canary"]


async def test_long_chunk_size_line_after_the_head_is_rejected_not_awaited(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    """The head may already be upstream; the line is refused at 4 KiB, not at a timeout."""
    port = await outbound_port(nursery, upstream, body_idle_timeout="1h")
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(post(CHUNKED))
            await send_quietly(stream, b"a" * 5000)
            reply = await read_to_close(stream)
    assert reply.status == 400
    assert b"chunk-size" in reply.data
    assert upstream.seen == []


async def test_chunked_body_stays_valid_across_the_look_ahead(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    """Head and a whole chunked body in one send: vetting ahead must not eat any of it."""
    port = await outbound_port(nursery, upstream)
    body = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    reply = await exchange(port, post(CHUNKED, b"Connection: close", body=body))
    assert reply.status == 200
    assert upstream.seen[0].body == b"abcde"
    assert upstream.seen[0].trailers == [(b"x-t", b"1")]


async def test_deeply_nested_cse_context_is_answered(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream)
    reply = await exchange(port, get(b"X-Cse-Context: " + b"[" * 60_000, b"Connection: close"))
    assert reply.status == 200
    assert upstream.seen[0].header(b"x-cse-context") == b'{"x-cse-src-microservice":"trimesh-app"}'


async def test_underscore_twin_of_transfer_encoding_neither_frames_nor_reaches_upstream(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    """`Transfer_Encoding` is no framing here, and a backend that maps "_" to "-"
    never sees it: the body is the 5 Content-Length bytes, and the bytes after
    them are a second, separate request."""
    port = await outbound_port(nursery, upstream)
    first = post(b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n")
    second = b"GET http://orders/b HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
    reply = await exchange(port, first + second)
    responses, rest = parse_responses(reply.data)
    assert [r.status_code for r, _ in responses] == [200, 200] and rest == b""
    assert [(s.target, s.body) for s in upstream.seen] == [(b"/a", b"0\r\n\r\n"), (b"/b", b"")]
    sent = {n for n, _ in upstream.seen[0].headers}
    assert b"transfer_encoding" not in sent and b"transfer-encoding" not in sent
    assert upstream.seen[0].header(b"content-length") == b"5"


async def test_underscore_fields_are_dropped(nursery: trio.Nursery, upstream: Upstream) -> None:
    port = await outbound_port(nursery, upstream)
    request = get(
        b"X_Forwarded_For: 6.6.6.6", b"x_cse_context: {}", b"X-Kept: 1", b"Connection: close"
    )
    reply = await exchange(port, request)
    assert reply.status == 200
    names = {n for n, _ in upstream.seen[0].headers}
    assert not {n for n in names if b"_" in n}
    assert upstream.seen[0].header(b"x-kept") == b"1"
    assert upstream.seen[0].header(b"x-forwarded-for") == b"127.0.0.1"


async def test_underscore_fields_pass_when_allowed(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream, allow_underscores=True)
    reply = await exchange(port, get(b"X_Custom: 1", b"Connection: close"))
    assert reply.status == 200
    assert upstream.seen[0].header(b"x_custom") == b"1"


async def test_request_trailers_cannot_carry_framing_routing_or_credentials(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    """Only end-to-end trailer fields pass; the `Trailer` field announcing them does too."""
    port = await outbound_port(nursery, upstream)
    trailers = (
        b"Content-Length: 99\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n"
        b"Authorization: Bearer x\r\nCookie: a=1\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Cse-Context: {}\r\nProxy-Foo: 1\r\nX_Sum: 1\r\nX-Checksum: 42\r\n"
    )
    body = b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n"
    reply = await exchange(
        port, post(CHUNKED, b"Trailer: X-Checksum", b"Connection: close", body=body)
    )
    assert reply.status == 200
    seen = upstream.seen[0]
    assert (seen.body, seen.trailers) == (b"abc", [(b"x-checksum", b"42")])
    assert seen.header(b"trailer") == b"X-Checksum"


async def test_response_heads_lose_hop_by_hop_fields(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    async def respond(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        fields = [(b"keep-alive", b"timeout=5"), (b"connection", b"x-secret"), (b"x-secret", b"s"),
                  (b"x-ok", b"1"), (b"via", b"1.0 app")]  # fmt: skip
        return 200, fields, b"ok"

    upstream.responder = respond
    port = await outbound_port(nursery, upstream)
    reply = await exchange(port, get(b"Connection: close"))
    [(response, body)], _ = parse_responses(reply.data)
    names = [n for n, _ in response.headers]
    assert body == b"ok" and b"x-ok" in names
    assert not {b"keep-alive", b"x-secret"} & set(names)
    assert dict(response.headers)[b"via"].startswith(b"1.0 app, 1.1 trimesh-")


NOMINATING = b"Connection: close, host, content-length, transfer-encoding, x-cse-context, x-a"


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
async def test_connection_cannot_remove_host_or_framing(
    nursery: trio.Nursery, upstream: Upstream, listener: str
) -> None:
    """Host and framing survive a Connection that names them; other named fields go."""
    raw = sidecar_config(
        registry={"services": {"orders": [{"address": f"127.0.0.1:{upstream.port}"}]}},
        app={"ports": {"rest": upstream.port}},
    )
    _, bound = await start_sidecar(nursery, raw)
    if listener == "outbound":
        port, target, host = bound.outbound[1], b"http://orders/a", b"orders"
    else:
        port, target, host = bound.inbound[1], b"/a", b"127.0.0.1:%d" % bound.inbound[1]
    request = (
        b"POST %s HTTP/1.1\r\nHost: %s\r\n%s\r\nContent-Length: 3\r\n"
        b"X-Cse-Context: {}\r\nX-A: 1\r\nX-B: 2\r\n\r\nabc" % (target, host, NOMINATING)
    )
    reply = await exchange(port, request)
    assert reply.status == 200, reply.data[:300]
    seen = upstream.seen[0]
    assert seen.header(b"host") == host
    assert (seen.header(b"content-length"), seen.body) == (b"3", b"abc")
    assert seen.header(b"x-a") is None and seen.header(b"x-b") == b"2"


# ---------------------------------------------------------------- time


async def trickle(stream: trio.SocketStream, first: bytes, pieces: Iterator[bytes]) -> None:
    """A slow client: a piece per second until the sidecar hangs up."""
    await send_quietly(stream, first)
    for piece in pieces:
        await trio.sleep(1)  # the client's pacing, not a wait for a condition
        try:
            await stream.send_all(piece)
        except trio.BrokenResourceError:
            return


def header_lines() -> Iterator[bytes]:
    yield b"GET http://orders/a HTTP/1.1\r\n"
    yield from (b"X-%d: y\r\n" % i for i in count())


def single_bytes() -> Iterator[bytes]:
    head = b"GET http://orders/a HTTP/1.1\r\nHost: orders\r\n" + b"X-Pad: y\r\n" * 100
    return (head[i : i + 1] for i in range(len(head)))


@pytest.mark.parametrize("pieces", [header_lines, single_bytes], ids=["lines", "bytes"])
async def test_slowloris_gets_408_at_the_header_timeout(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    upstream: Upstream,
    pieces: Callable[[], Iterator[bytes]],
) -> None:
    port = await outbound_port(nursery, upstream, header_timeout="10s")
    slow = pieces()
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        async with stream, trio.open_nursery() as client:
            client.start_soon(trickle, stream, next(slow), slow)
            reply = await read_to_close(stream)
            client.cancel_scope.cancel()
    assert 10 <= trio.current_time() - start < 11
    assert_single_rejection(reply, 408)
    assert_untouched(upstream)


async def test_silent_connection_closed_at_keepalive_timeout_without_response(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream, keepalive_timeout="75s", header_timeout="10s")
    with trio.fail_after(300):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        async with stream:
            reply = await read_to_close(stream)
    assert 75 <= trio.current_time() - start < 76
    assert reply == Reply(b"", reset=False)
    assert_untouched(upstream)


async def test_idle_keepalive_connection_closed_after_keepalive_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream, keepalive_timeout="75s", header_timeout="10s")
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(method=b"GET", target=b"http://orders/k", headers=[(b"host", b"orders")])
    with trio.fail_after(300):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
            while not isinstance(event := client.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
            answered = trio.current_time()
            reply = await read_to_close(stream)
    assert 75 <= trio.current_time() - answered < 76
    assert reply == Reply(b"", reset=False)
    assert [s.target for s in upstream.seen] == [b"/k"]
