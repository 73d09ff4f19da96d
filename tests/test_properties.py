"""Properties of the whole data path, checked with hypothesis over real loopback sockets.

One sidecar and one recording upstream serve all examples of a test: the
test runs in pytest-trio, starts them, then runs the hypothesis search in a
worker thread (`trio.to_thread`), each example calling back into the trio
loop with `trio.from_thread.run`. Shrinking works as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import attrs
import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_guard import drive, pieces_of
from tests.servers import Seen, Upstream
from tests.test_adversarial import outbound_port, parse_responses, read_to_close, send_quietly
from trimesh.config.model import Limits
from trimesh.http.headers import HOP_BY_HOP, filter_trailers
from trimesh.observe.tracing import HEADERS as TRACE_HEADERS

# Headers a proxy may add or rewrite on a request / a response (RFC 9110 7.6).
REQUEST_REWRITES = frozenset(
    {b"host", b"via", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
     b"x-forwarded-port", b"x-cse-context", b"content-length", b"transfer-encoding",
     b"x-trimesh-deadline-ms"} | TRACE_HEADERS  # trace context is continued, not copied
)  # fmt: skip
RESPONSE_REWRITES = frozenset({b"via", b"content-length", b"connection"})


def lowered_list(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower(), v) for n, v in fields]


RESERVED = HOP_BY_HOP | REQUEST_REWRITES | {b"expect", b"date", b"server"}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KIB = 1024


@pytest.fixture(autouse=True)
def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="trimesh")
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def run_property(prop: Callable[[], None], limit: float = 120) -> None:
    """Run a @given function in a worker thread; its examples call back into trio."""
    with trio.fail_after(limit):
        await trio.to_thread.run_sync(prop)


def in_trio(fn: Callable[..., Awaitable[object]], *args: object) -> None:
    trio.from_thread.run(fn, *args)


# ---------------------------------------------------------------- strategies

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
NAME = st.text(TOKEN_CHARS, min_size=1, max_size=16).filter(
    lambda n: n.lower().encode() not in RESERVED and not n.lower().startswith("x-forwarded")
)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
FIELDS = st.lists(st.tuples(NAME, VALUE), max_size=8).map(
    lambda fs: [(n.encode(), v.encode()) for n, v in fs]
)
PATH = st.from_regex(
    r"\A/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,30}(\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]{0,20})?\Z"
)


def blob(size: int, seed: int) -> bytes:
    """Random bytes without asking hypothesis for 200 KiB of entropy."""
    return random.Random(seed).randbytes(size)


def cuts(total: int, seed: int, most: int) -> list[int]:
    """Random piece sizes adding up to `total`."""
    rng = random.Random(seed)
    sizes = []
    while total > 0:
        n = min(total, rng.randint(1, most))
        sizes.append(n)
        total -= n
    return sizes


@attrs.frozen
class Message:
    method: bytes
    target: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    chunk_seed: int
    send_seed: int
    trailers: list[tuple[bytes, bytes]]


@st.composite
def requests(draw: st.DrawFn) -> Message:
    size = draw(st.sampled_from([0, 1, 100]) | st.integers(0, 200 * KIB))
    chunked = draw(st.booleans())
    return Message(
        method=draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])),
        target=draw(PATH).encode(),
        fields=draw(FIELDS),
        body=blob(size, draw(st.integers(0, 2**32))),
        chunked=chunked,
        chunk_seed=draw(st.integers(0, 2**32)),
        send_seed=draw(st.integers(0, 2**32)),
        trailers=draw(FIELDS) if chunked else [],
    )


@attrs.frozen
class Reply:
    status: int
    fields: list[tuple[bytes, bytes]]
    body: bytes


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    status = draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)))
    size = draw(st.sampled_from([0, 1]) | st.integers(0, 200 * KIB))
    return Reply(status, draw(FIELDS), blob(size, draw(st.integers(0, 2**32))))


def lowered(fields: list[tuple[bytes, bytes]]) -> Counter[tuple[bytes, bytes]]:
    return Counter((n.lower(), v) for n, v in fields)


def without(
    fields: list[tuple[bytes, bytes]], names: frozenset[bytes]
) -> Counter[tuple[bytes, bytes]]:
    return Counter((n, v) for n, v in fields if n not in names)


def encode(msg: Message) -> bytes:
    """The request as a client writes it, chunked at random sizes if `chunked`."""
    client = h11.Connection(h11.CLIENT)
    if msg.chunked:
        framing = (b"Transfer-Encoding", b"chunked")
    else:
        framing = (b"Content-Length", b"%d" % len(msg.body))
    headers = [(b"Host", b"orders"), *msg.fields, framing]
    target = b"http://orders" + msg.target
    out = client.send(h11.Request(method=msg.method, target=target, headers=headers))
    pos = 0
    for n in cuts(len(msg.body), msg.chunk_seed, 64 * KIB) if msg.chunked else [len(msg.body)]:
        if n:
            out += client.send(h11.Data(data=msg.body[pos : pos + n]))
        pos += n
    return out + client.send(h11.EndOfMessage(headers=msg.trailers))


async def read_response(stream: trio.SocketStream, method: bytes) -> tuple[h11.Response, bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    response, body = None, bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, bytes(body)
        else:
            raise AssertionError(f"unexpected {event!r}")


# ---------------------------------------------------------------- (a) pass-through


async def test_valid_requests_and_responses_pass_through_unchanged(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream)

    async def one(msg: Message, reply: Reply) -> None:
        async def respond(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            return reply.status, reply.fields, reply.body

        upstream.responder = respond
        before = len(upstream.seen)
        data = encode(msg)
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                pos = 0
                for n in cuts(len(data), msg.send_seed, 16 * KIB):
                    await stream.send_all(data[pos : pos + n])
                    pos += n
                response, body = await read_response(stream, msg.method)

        assert len(upstream.seen) == before + 1
        seen = upstream.seen[-1]
        assert (seen.method, seen.target, seen.body) == (msg.method, msg.target, msg.body)
        # Names with "_" are dropped on the way to a backend (limits.allow_underscores).
        sent = [(n, v) for n, v in msg.fields if b"_" not in n]
        assert without(seen.headers, REQUEST_REWRITES) == lowered(sent)
        assert seen.header(b"host") == b"orders"
        assert seen.header(b"via") is not None and seen.header(b"x-forwarded-for") == b"127.0.0.1"
        if msg.chunked:
            assert seen.header(b"transfer-encoding") == b"chunked"
            # Trailers pass filtered: no framing, routing, credential or "_" names.
            assert Counter(seen.trailers) == lowered(filter_trailers(lowered_list(msg.trailers)))
        else:
            assert seen.header(b"content-length") == b"%d" % len(msg.body)

        assert (response.status_code, body) == (reply.status, reply.body)
        back = list(response.headers)
        assert without(back, RESPONSE_REWRITES) == lowered(reply.fields)
        assert dict(back)[b"content-length"] == b"%d" % len(reply.body)
        assert dict(back)[b"via"].startswith(b"1.1 trimesh-")

    @SETTINGS
    @given(requests(), replies())
    def prop(msg: Message, reply: Reply) -> None:
        in_trio(one, msg, reply)

    await run_property(prop)


# ---------------------------------------------------------------- (b) malformed input

HEADER_TIMEOUT = 0.5
# The acceptance rules of the sidecar under test, for the reference verdict.
LIMITS = Limits()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few hostile edits."""
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        tail = b"Transfer-Encoding: chunked\r\n\r\n" + (
            b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"  # fmt: skip
    else:
        tail = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    data = bytearray(b"POST http://orders/m?q=1 HTTP/1.1\r\nHost: orders\r\nX-A: b\r\n" + tail)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "replace", "delete", "dup-cl", "garbage"]))
        byte = draw(st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"\t", b"0", b"\xff"]))
        if edit == "insert":
            data[at:at] = byte
        elif edit == "replace":
            data[at : at + 1] = byte
        elif edit == "delete":
            del data[at : at + 1]
        elif edit == "dup-cl":
            line = data.find(b"\r\n") + 2
            data[line:line] = b"Content-Length: %d\r\n" % draw(st.integers(0, 50))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


async def first_answer_or_close(stream: trio.SocketStream) -> bytes:
    """Read until a response head is complete, or the sidecar closes."""
    data = b""
    try:
        while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def test_malformed_requests_never_crash_hang_or_leak_upstream(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(
        nursery, upstream, header_timeout=f"{HEADER_TIMEOUT}s",
        body_idle_timeout=f"{HEADER_TIMEOUT}s",
    )  # fmt: skip

    async def one(data: bytes, half_close: bool) -> None:
        before, conns = len(upstream.seen), upstream.connections
        # Byte by byte is the split that lets the most heads through (no look-ahead).
        reference = drive(pieces_of(data, 1), LIMITS)
        with trio.fail_after(HEADER_TIMEOUT + 1.5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await send_quietly(stream, data)
                if half_close:
                    await send_quietly_eof(stream)
                answer = await first_answer_or_close(stream)
        if answer:
            assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        assert len(upstream.seen) - before <= len(reference.accepted)
        if reference.heads == 0:
            assert (len(upstream.seen), upstream.connections) == (before, conns)

    @SETTINGS
    @given(mutated(), st.booleans())
    def prop(data: bytes, half_close: bool) -> None:
        in_trio(one, data, half_close)

    await run_property(prop)


async def send_quietly_eof(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()


# ---------------------------------------------------------------- (d) pipelining


async def test_pipelined_requests_are_answered_in_order(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    port = await outbound_port(nursery, upstream)

    async def one(paths: list[bytes], send_seed: int) -> None:
        before = len(upstream.seen)
        data = b"".join(b"GET http://orders%s HTTP/1.1\r\nHost: orders\r\n\r\n" % p for p in paths)
        data += b"GET http://orders/last HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream, trio.open_nursery() as client:

                async def send() -> None:
                    pos = 0
                    for n in cuts(len(data), send_seed, 200):
                        await send_quietly(stream, data[pos : pos + n])
                        pos += n

                client.start_soon(send)
                reply = await read_to_close(stream)
        responses, rest = parse_responses(reply.data)
        targets = [json.loads(body)["target"].encode() for _, body in responses]
        assert targets == [*paths, b"/last"]
        assert rest == b""
        assert [s.target for s in upstream.seen[before:]] == [*paths, b"/last"]

    @SETTINGS
    @given(st.lists(PATH.map(str.encode), min_size=1, max_size=10), st.integers(0, 2**32))
    def prop(paths: list[bytes], send_seed: int) -> None:
        in_trio(one, paths, send_seed)

    await run_property(prop)
