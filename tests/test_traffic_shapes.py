"""Real traffic shapes through the sidecar: streaming, misbehaving and dying upstreams.

Each test states its invariant; none waits on the clock: the upstream waits
for the client to have seen what it sent before it sends more, so a proxy
that held bytes back would hang (and the `fail_after` guard fails it).
"""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
import trio

from tests.rawserver import RawConn, RawUpstream, http_exchange, response
from tests.servers import sidecar_config, start_sidecar
from trimesh.observe.accesslog import AccessLog
from trimesh.sidecar import Bound, Sidecar


async def through(
    nursery: trio.Nursery, *ports: int, log: AccessLog | None = None, **extra: Any
) -> tuple[Sidecar, Bound]:
    raw = sidecar_config(
        service={"name": "consumer"},
        registry={"services": {"svc": [{"address": f"127.0.0.1:{p}"} for p in ports]}},
        **extra,
    )
    return await start_sidecar(nursery, raw, access_log=log)


async def raw_upstream(nursery: trio.Nursery, script: Any) -> RawUpstream:
    up = RawUpstream(script)
    await nursery.start(up.serve)
    return up


def answers(data: bytes) -> Any:
    """An upstream script: read one request, write `data`, close (FIN)."""

    async def script(conn: RawConn) -> None:
        await conn.next_request()
        await conn.send(data)

    return script


async def one_exchange(nursery: trio.Nursery, upstream_writes: bytes, request: bytes) -> bytes:
    """`request` (raw) through a sidecar to an upstream that writes `upstream_writes`."""
    up = await raw_upstream(nursery, answers(upstream_writes))
    _, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        return await http_exchange(bound.outbound[1], request)


def client(bound: Bound) -> httpx.AsyncClient:
    return httpx.AsyncClient(proxy=f"http://127.0.0.1:{bound.outbound[1]}", timeout=10)


# --- 1. streaming: the first byte is relayed at once -------------------------------


async def test_sse_events_are_relayed_one_by_one(nursery: trio.Nursery) -> None:
    """Invariant: each event reaches the client before the upstream sends the next."""
    seen = [trio.Event() for _ in range(3)]

    async def sse(conn: RawConn) -> None:
        await conn.next_request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(3):
            data = b"data: event %d\n\n" % i
            await conn.send(b"%x\r\n%s\r\n" % (len(data), data))
            await seen[i].wait()  # the next event only once the client has this one
        await conn.send(b"0\r\n\r\n")

    up = await raw_upstream(nursery, sse)
    _, bound = await through(nursery, up.port)
    events: list[str] = []
    with trio.fail_after(10):
        async with (
            client(bound) as c,
            c.stream("GET", "http://svc/events") as r,
        ):
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    seen[len(events) - 1].set()
    assert events == ["event 0", "event 1", "event 2"]


async def test_head_is_relayed_before_any_body_byte(nursery: trio.Nursery) -> None:
    """A long-poll answer: the status line reaches the client while the body waits."""
    head_seen = trio.Event()

    async def long_poll(conn: RawConn) -> None:
        await conn.next_request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        await head_seen.wait()
        await conn.send(b"done")

    up = await raw_upstream(nursery, long_poll)
    _, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c, c.stream("GET", "http://svc/poll") as r:
            assert r.status_code == 200
            head_seen.set()
            assert await r.aread() == b"done"


async def test_small_complete_response_goes_out_in_one_write(nursery: trio.Nursery) -> None:
    """Head and body of a response that arrived whole leave in a single segment."""

    async def whole(conn: RawConn) -> None:
        while await conn.next_request():
            await conn.send(response(200, b"x" * 100))

    up = await raw_upstream(nursery, whole)
    _, bound = await through(nursery, up.port)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
        async with stream:
            await stream.send_all(b"GET http://svc/ HTTP/1.1\r\nhost: svc\r\n\r\n")
            first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"x" * 100)


# --- 2. pool poisoning: no byte of one response reaches another client ---------------

POISON = {
    # what the upstream writes for request i (marker m), beyond a correct response
    "body-on-204": lambda m: b"HTTP/1.1 204 No Content\r\n\r\nJUNK" + m,
    "body-on-head": lambda m: response(200, b"", extra=[b"x-m: " + m])[:-2] + b"\r\n" + b"JUNK" + m,
    "longer-than-framed": lambda m: response(200, b"ok-" + m) + b"JUNK" + m,
    "double-write": lambda m: response(200, b"ok-" + m) + response(200, b"JUNK" + m),
}


@pytest.mark.parametrize("shape", sorted(POISON))
async def test_bytes_past_a_response_never_reach_the_next_client(
    nursery: trio.Nursery, shape: str
) -> None:
    """Invariant: response i reaches request i; a connection with unread bytes is closed."""

    async def sloppy(conn: RawConn) -> None:
        while (got := await conn.next_request()) is not None:
            request, _ = got
            marker = request.target.rsplit(b"/", 1)[1]
            if shape == "body-on-head" and request.method != b"HEAD":
                await conn.send(response(200, b"ok-" + marker))
            else:
                await conn.send(POISON[shape](marker))

    up = await raw_upstream(nursery, sloppy)
    sidecar, bound = await through(nursery, up.port)
    method = "HEAD" if shape == "body-on-head" else "GET"
    with trio.fail_after(10):
        for i in range(4):
            # A new client each time: only the pool could carry bytes between them.
            async with client(bound) as c:
                r = await c.request(method, f"http://svc/m{i}")
                m = f"m{i}".encode()
                assert b"JUNK" not in r.content
                if shape == "body-on-204":
                    assert r.status_code == 204
                elif shape == "body-on-head":
                    assert r.headers["x-m"] == f"m{i}"
                else:
                    assert r.content == b"ok-" + m
    pool = sidecar.pools[0]
    assert pool.poisoned + pool.retired >= 3, repr(pool)
    assert up.connections == 4


# --- 3. stale keep-alive connections --------------------------------------------


def _closes_second_request(how: str) -> Any:
    """Answer the first request, then close the connection when the next one arrives."""

    async def script(conn: RawConn) -> None:
        if await conn.next_request() is None:
            return
        await conn.send(response(200, b"first"))
        if await conn.next_request() is None:
            return
        if how == "rst":
            conn.reset()
        # Return without answering: FIN (or RST) just as the request arrived.

    return script


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_idempotent_request_on_a_stale_connection_is_sent_again(
    nursery: trio.Nursery, how: str
) -> None:
    up = await raw_upstream(nursery, _closes_second_request(how))
    _sidecar, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            assert (await c.get("http://svc/a")).content == b"first"
            r = await c.put("http://svc/b", content=b"replayed body")
    assert r.status_code == 200
    assert r.content == b"first"  # the fresh connection's first answer
    assert up.connections == 2


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_non_idempotent_request_is_never_sent_twice(nursery: trio.Nursery, how: str) -> None:
    up = await raw_upstream(nursery, _closes_second_request(how))
    _, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            assert (await c.get("http://svc/a")).status_code == 200
            r = await c.post("http://svc/b", content=b"pay once")
    assert (r.status_code, up.connections) == (502, 1)
    assert b"not sent again: POST is not idempotent" in r.content  # never an empty reply
    assert r.headers["x-trimesh-error"] == "upstream-protocol"
    assert up.connections == 1


async def test_keepalive_timeout_hint_retires_the_connection(nursery: trio.Nursery) -> None:
    """`Keep-Alive: timeout=1` means the upstream may close within a second: don't reuse."""

    async def hinting(conn: RawConn) -> None:
        while await conn.next_request():
            await conn.send(response(200, b"ok", extra=[b"keep-alive: timeout=1"]))

    up = await raw_upstream(nursery, hinting)
    _sidecar, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            for _ in range(3):
                assert (await c.get("http://svc/")).status_code == 200
    assert up.connections == 3


async def test_idle_close_by_upstream_then_request_succeeds(nursery: trio.Nursery) -> None:
    """An upstream that closed its idle keep-alive connection (FIN) costs no 502."""
    first_done = trio.Event()

    async def closes_when_idle(conn: RawConn) -> None:
        if await conn.next_request() is None:
            return
        await conn.send(response(200, b"ok"))
        first_done.set()

    up = await raw_upstream(nursery, closes_when_idle)
    _, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            assert (await c.get("http://svc/1")).status_code == 200
            await up.wait_closed(1)
            r = await c.post("http://svc/2", content=b"x")
    assert r.status_code == 200


# --- 4. upstreams that die mid-response --------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_upstream_dying_mid_body_truncates_never_completes(
    nursery: trio.Nursery, how: str
) -> None:
    async def dies(conn: RawConn) -> None:
        await conn.next_request()
        await conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"a" * 100)
        if how == "rst":
            conn.reset()

    up = await raw_upstream(nursery, dies)
    out = io.StringIO()
    sidecar, bound = await through(nursery, up.port, log=AccessLog(out))
    with trio.fail_after(10):
        reply = await http_exchange(
            bound.outbound[1], b"GET http://svc/ HTTP/1.1\r\nhost: svc\r\n\r\n"
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 1000" in head
    assert body.startswith(b"a" * 100)
    assert len(body) < 1000  # truncated: the client can tell
    sidecar.access_log.flush()
    entry = json.loads(out.getvalue().splitlines()[-1])
    assert entry["status"] == 200
    assert entry["error"] == "upstream-protocol"


async def test_chunked_response_cut_mid_body_has_no_last_chunk(nursery: trio.Nursery) -> None:
    cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    reply = await one_exchange(nursery, cut, b"GET http://svc/ HTTP/1.1\r\nhost: svc\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"hello" in reply
    assert not reply.endswith(b"0\r\n\r\n")


async def test_upstream_dying_before_the_head_gets_an_error_answer(nursery: trio.Nursery) -> None:
    up = await raw_upstream(nursery, answers(b"HTTP/1.1 200 OK\r\ncontent-le"))
    _, bound = await through(nursery, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            r = await c.get("http://svc/")
    assert r.status_code == 502
    assert r.headers["x-trimesh-error"] == "upstream-protocol"


async def test_response_head_over_the_limit_is_reported_as_such(nursery: trio.Nursery) -> None:
    up = await raw_upstream(
        nursery, answers(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n")
    )
    _, bound = await through(nursery, up.port, limits={"max_response_header_bytes": "4KiB"})
    with trio.fail_after(10):
        async with client(bound) as c:
            r = await c.get("http://svc/")
    assert r.status_code == 502
    assert "response head too large" in r.text


# --- 5. shapes that used to escape the error taxonomy -------------------------------


async def test_trailers_are_dropped_for_an_http10_client(nursery: trio.Nursery) -> None:
    with_trailers = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
        b"2\r\nhi\r\n0\r\nx-sum: 42\r\n\r\n"
    )
    reply = await one_exchange(nursery, with_trailers, b"GET http://svc/ HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b"hi")
    assert b"x-sum: 42" not in reply


async def test_forbidden_trailers_never_pass(nursery: trio.Nursery) -> None:
    with_trailers = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nx-sum: 42\r\nset-cookie: a=b\r\ncontent-length: 5\r\n\r\n"
    )
    request = b"GET http://svc/ HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n"
    reply = await one_exchange(nursery, with_trailers, request)
    trailer_part = reply.rpartition(b"0\r\n")[2]
    assert b"x-sum: 42" in trailer_part
    assert b"set-cookie" not in trailer_part.lower()
    assert b"content-length" not in trailer_part.lower()


# --- 11. a refused instance is skipped -----------------------------------------------


async def test_refused_instance_is_skipped(nursery: trio.Nursery) -> None:
    async def ok(conn: RawConn) -> None:
        while await conn.next_request():
            await conn.send(response(200, b"alive"))

    up = await raw_upstream(nursery, ok)
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    _, bound = await through(nursery, dead_port, up.port)
    with trio.fail_after(10):
        async with client(bound) as c:
            for _ in range(4):
                r = await c.post("http://svc/", content=b"x")
                assert r.status_code == 200
                assert r.content == b"alive"
