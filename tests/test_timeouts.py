"""Default timeouts on virtual time: a 30 s deadline takes milliseconds to test.

pytest-trio's `autojump_clock` jumps the clock whenever every task is blocked;
loopback sends are delivered inside the syscall, so real sockets still work.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from trimesh.config import Limits, UpstreamConfig
from trimesh.sidecar import Bound


async def _routing_o_to(nursery: trio.Nursery, port: int) -> Bound:
    """A sidecar whose service `o` is the app on `port`."""
    raw = sidecar_config(registry={"services": {"o": [{"address": f"127.0.0.1:{port}"}]}})
    _, bound = await start_sidecar(nursery, raw)
    return bound


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_default_header_timeout_answers_408(
    nursery: trio.Nursery, upstream: Upstream, autojump_clock: trio.testing.MockClock
) -> None:
    bound = await _routing_o_to(nursery, upstream.port)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"GET http://o/ HTTP/1.1\r\nHost: o\r\n")  # never finished
        reply = await _read_all(stream)
    elapsed = trio.current_time() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert Limits().header_timeout <= elapsed < Limits().header_timeout + 1
    assert upstream.seen == []


async def test_default_keepalive_timeout_closes_silently(
    nursery: trio.Nursery, upstream: Upstream, autojump_clock: trio.testing.MockClock
) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config())
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        start = trio.current_time()
        reply = await _read_all(stream)
    elapsed = trio.current_time() - start
    assert reply == b""
    assert Limits().keepalive_timeout <= elapsed < Limits().keepalive_timeout + 1


async def test_default_upstream_response_timeout_is_504(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def never(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep_forever()
        raise AssertionError

    app = Upstream(never)
    await nursery.start(app.serve)
    bound = await _routing_o_to(nursery, app.port)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"GET http://o/ HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        reply = await _read_all(stream)
    elapsed = trio.current_time() - start
    assert reply.startswith(b"HTTP/1.1 504 ")
    assert b"x-trimesh-error: upstream-timeout" in reply
    timeout = UpstreamConfig().response_timeout
    assert timeout <= elapsed < timeout + 1
    await app.disconnected.wait()


async def test_default_body_idle_timeout_is_408(
    nursery: trio.Nursery, upstream: Upstream, autojump_clock: trio.testing.MockClock
) -> None:
    bound = await _routing_o_to(nursery, upstream.port)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        start = trio.current_time()
        await stream.send_all(
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 10\r\n\r\nabc"
        )
        reply = await _read_all(stream)
    elapsed = trio.current_time() - start
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert Limits().body_idle_timeout <= elapsed < Limits().body_idle_timeout + 1


async def test_client_that_stops_reading_is_dropped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def huge(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [], b"x" * (64 << 20)

    app = Upstream(huge)
    await nursery.start(app.serve)
    bound = await _routing_o_to(nursery, app.port)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"GET http://o/ HTTP/1.1\r\nHost: o\r\n\r\n")
        await app.disconnected.wait()  # we never read: the sidecar gives up on us
    elapsed = trio.current_time() - start
    assert Limits().body_idle_timeout <= elapsed < Limits().body_idle_timeout + 1


async def test_upstream_that_stops_reading_the_body_is_504(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def deaf(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)  # the head, then never read again
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, deaf, 0)
    port = listeners[0].socket.getsockname()[1]
    bound = await _routing_o_to(nursery, port)
    size = 64 << 20
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])

    async def upload() -> None:
        head = b"PUT http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n" % size
        try:
            await stream.send_all(head)
            for _ in range(size >> 20):
                await stream.send_all(b"u" * (1 << 20))
        except trio.BrokenResourceError:
            pass  # the sidecar answered and closed

    async with stream, trio.open_nursery() as client:
        start = trio.current_time()
        client.start_soon(upload)
        reply = await stream.receive_some(65536)
        client.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    assert reply.startswith(b"HTTP/1.1 504 ")
    assert b"x-trimesh-error: upstream-timeout" in reply
    assert Limits().body_idle_timeout <= elapsed < Limits().body_idle_timeout + 1
