"""Slow and misdirected peers: deadlines for whole requests, early answers, trust."""

from __future__ import annotations

import httpx
import trio
import trio.testing

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from trimesh.config import build
from trimesh.discovery.base import Instance
from trimesh.sidecar import Sidecar


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        data += b"<RST>"
    return data


async def test_request_timeout_bounds_a_slow_upload(
    nursery: trio.Nursery, upstream: Upstream, autojump_clock: trio.testing.MockClock
) -> None:
    """One byte every 30 s never trips the 60 s idle timeout; `request_timeout` ends it."""
    raw = sidecar_config(
        registry={"services": {"o": [{"address": f"127.0.0.1:{upstream.port}"}]}},
        limits={"request_timeout": "100s"},
    )
    _, bound = await start_sidecar(nursery, raw)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])

    async def drip() -> None:
        for _ in range(100):
            await trio.sleep(30)
            try:
                await stream.send_all(b"x")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async with stream, trio.open_nursery() as inner:
        start = trio.current_time()
        await stream.send_all(b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 100\r\n\r\n")
        inner.start_soon(drip)
        reply = await _read_all(stream)
        elapsed = trio.current_time() - start
        inner.cancel_scope.cancel()
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert 100 <= elapsed < 101


async def test_request_timeout_is_off_by_default(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    got = trio.Event()

    async def count(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        got.set()
        return 200, [], b"%d" % len(seen.body)

    app = Upstream(count)
    await nursery.start(app.serve)
    raw = sidecar_config(registry={"services": {"o": [{"address": f"127.0.0.1:{app.port}"}]}})
    _, bound = await start_sidecar(nursery, raw)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with stream:
        await stream.send_all(
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
        for _ in range(5):  # 200 s in all, 40 s apart: under the idle timeout each time
            await trio.sleep(40)
            await stream.send_all(b"x")
        reply = await _read_all(stream)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"5")


async def test_early_answer_to_an_upload_reaches_the_client(nursery: trio.Nursery) -> None:
    """An app that answers 401 without reading the body: the client gets the 401.

    The sidecar must keep reading (and dropping) the rest of the upload while
    it lingers; a reader parked by back-pressure would leave the client stuck
    in its write until the connection is reset.
    """

    async def deny(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 401, [], b"no"

    app = Upstream(deny)
    await nursery.start(app.serve)
    raw = sidecar_config(registry={"services": {"o": [{"address": f"127.0.0.1:{app.port}"}]}})
    _, bound = await start_sidecar(nursery, raw)
    with trio.fail_after(20):
        async with httpx.AsyncClient(
            proxy=f"http://127.0.0.1:{bound.outbound[1]}", timeout=15
        ) as c:
            r = await c.post("http://o/upload", content=b"z" * (8 * 1024 * 1024))
    assert r.status_code == 401


async def test_inbound_answers_421_for_another_service(nursery: trio.Nursery) -> None:
    """A request naming `orders` must never reach the `payments` app."""
    app = Upstream()
    await nursery.start(app.serve)
    raw = sidecar_config(service={"name": "payments"}, app={"ports": {"rest": app.port}})
    _, bound = await start_sidecar(nursery, raw)
    base = f"http://127.0.0.1:{bound.inbound[1]}"
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=5) as c:
            wrong = await c.get(f"{base}/pay", headers={"host": "orders"})
            right = await c.get(f"{base}/pay", headers={"host": "payments:8080"})
            by_ip = await c.get(f"{base}/pay")
    assert wrong.status_code == 421
    assert wrong.headers["x-trimesh-error"] == "misdirected"
    assert right.status_code == 200 and by_ip.status_code == 200
    assert len(app.seen) == 2


async def _to_payments_inbound(nursery: trio.Nursery, request: bytes) -> tuple[Upstream, bytes]:
    """Send raw `request` to the inbound listener of the `payments` sidecar."""
    app = Upstream()
    await nursery.start(app.serve)
    raw = sidecar_config(service={"name": "payments"}, app={"ports": {"rest": app.port}})
    _, bound = await start_sidecar(nursery, raw)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", bound.inbound[1])
        async with stream:
            await stream.send_all(request)
            return app, await _read_all(stream)


async def test_inbound_http10_without_host_is_forwarded(nursery: trio.Nursery) -> None:
    app, reply = await _to_payments_inbound(nursery, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert app.seen[0].header(b"host") == b"127.0.0.1:%d" % app.port


async def test_inbound_absolute_form_host_replaces_host_header(nursery: trio.Nursery) -> None:
    app, reply = await _to_payments_inbound(
        nursery, b"GET http://orders/x HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n"
    )
    # RFC 9112 3.2.2: the target's authority wins over the Host field, so this is misdirected.
    assert reply.startswith(b"HTTP/1.1 421 ")
    assert app.seen == []


async def test_registry_row_pointing_at_our_admin_port_is_never_used(nursery: trio.Nursery) -> None:
    """Anyone who can write the registry must not be able to aim traffic at our admin port."""

    sidecar = Sidecar(build(sidecar_config()))
    bound = await nursery.start(sidecar.run)
    evil = [
        Instance("admin", "a1", "127.0.0.1", bound.admin[1]),
        Instance("admin", "a2", "169.254.169.254", 80),
        Instance("admin", "a3", "0.0.0.0", 80),
    ]
    sidecar.cache.update("admin", evil)
    with trio.fail_after(10):
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{bound.outbound[1]}", timeout=5) as c:
            r = await c.get("http://admin/v1/registry")
    assert r.status_code == 503
    assert r.headers["x-trimesh-error"] == "no-instance"
