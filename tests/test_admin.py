"""The admin listener on its own: bugs answer 500, slow readers are dropped, caps, Via.

Real sockets and the real clock (kernel socket buffers do not follow a MockClock),
with small timeouts; every wait is on an event or a deadline.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import h11
import pytest
import trio

from trimesh.admin import AdminRoutes, AdminSettings, run_admin

TOKENS = (b"trimesh-1a2b3c4d-out", b"trimesh-1a2b3c4d-inb")
BIG = 16 << 20  # far more than loopback socket buffers hold once the client stops reading


def _routes(**extra: Callable[[], tuple[int, Any]]) -> AdminRoutes:
    routes = AdminRoutes()
    routes.add("/health", lambda: (200, {"status": "alive"}))
    for name, handler in extra.items():
        routes.add(f"/{name}", handler)
    return routes


async def _start(nursery: trio.Nursery, routes: AdminRoutes, **settings: Any) -> tuple[str, int]:
    values = {"header_timeout": 2.0, "write_timeout": 2.0, "via_tokens": TOKENS, **settings}
    addr: tuple[str, int] = await nursery.start(
        run_admin, ("127.0.0.1", 0), routes, AdminSettings(**values)
    )
    return addr


class Client:
    """One keep-alive connection driven through an h11 CLIENT machine."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def ask(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> tuple[h11.Response, bytes]:
        given = headers or []
        host = [] if any(n == b"host" for n, _ in given) else [(b"host", b"127.0.0.1")]
        fields = [*host, *given]
        if body:
            fields.append((b"content-length", b"%d" % len(body)))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        await self.stream.send_all(data + (self.conn.send(h11.EndOfMessage()) or b""))
        response: h11.Response | None = None
        content = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return response, content
            else:
                raise AssertionError(f"unexpected {event!r}")


async def _get(port: int, target: bytes = b"/health", **kw: Any) -> tuple[h11.Response, bytes]:
    client = await Client.connect(port)
    async with client.stream:
        return await client.ask(b"GET", target, **kw)


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@pytest.mark.allow_unhandled_errors
async def test_a_failing_route_answers_500_and_the_server_keeps_serving(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> tuple[int, Any]:
        raise RuntimeError("boom")

    _, port = await _start(nursery, _routes(broken=broken, unjsonable=lambda: (200, object())))
    with trio.fail_after(5):
        client = await Client.connect(port)
        async with client.stream:
            for _ in range(2):
                response, body = await client.ask(b"GET", b"/broken")
                assert response.status_code == 500
                assert "error" in json.loads(body)
            response, body = await client.ask(b"GET", b"/unjsonable")
            assert response.status_code == 500
            response, body = await client.ask(b"GET", b"/health")  # same connection
            assert (response.status_code, json.loads(body)) == (200, {"status": "alive"})
        assert (await _get(port))[0].status_code == 200  # and new ones
    bugs = [r for r in caplog.records if r.name == "trimesh.admin" and "bug" in r.message]
    # The traceback is logged once per route; a repeat is one line without it.
    assert [(r.message, r.exc_info is not None) for r in bugs] == [
        ("admin handler bug on /broken", True),
        ("admin handler bug on /broken again (traceback logged before)", False),
        ("admin handler bug on /unjsonable", True),
    ]


async def _stuck_reader(port: int) -> trio.SocketStream:
    """A connection with a tiny receive buffer (no autotuning) that will not read."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _statuses_until_served(port: int) -> list[int]:
    """GET /health on new connections until one is answered 200 (under the caller's deadline).

    Polling: the server's freed slot is not observable from outside otherwise.
    """
    statuses = [(await _get(port))[0].status_code]
    while statuses[-1] != 200:
        await trio.sleep(0.02)
        statuses.append((await _get(port))[0].status_code)
    return statuses


async def test_a_client_that_does_not_read_is_dropped_and_frees_its_slot(
    nursery: trio.Nursery,
) -> None:
    routes = _routes(big=lambda: (200, "x" * BIG))
    _, port = await _start(nursery, routes, write_timeout=0.2, max_connections=1)
    with trio.fail_after(10):
        stuck = await _stuck_reader(port)
        await stuck.send_all(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # While it holds the only slot, others are refused; once dropped, served.
        statuses = await _statuses_until_served(port)
        assert set(statuses[:-1]) == {503}
        received = await _read_all(stuck)  # what the kernel still held, then EOF
        await stuck.aclose()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < BIG  # cut short: the answer was abandoned


async def test_connections_over_the_cap_get_503(nursery: trio.Nursery) -> None:
    _, port = await _start(nursery, _routes(), max_connections=2)
    with trio.fail_after(5):
        held = [await Client.connect(port) for _ in range(2)]
        for client in held:  # both are being served (and count) before we go over
            assert (await client.ask(b"GET", b"/health"))[0].status_code == 200
        response, body = await _get(port)
        assert response.status_code == 503
        assert (b"connection", b"close") in response.headers
        assert json.loads(body) == {"error": "too many admin connections"}
        await held[0].stream.aclose()
        assert set((await _statuses_until_served(port))[:-1]) <= {503}
        await held[1].stream.aclose()


@pytest.mark.parametrize(
    "via",
    [b"1.1 trimesh-1a2b3c4d-out", b"1.0 fred, 1.1 trimesh-1a2b3c4d-inb (trimesh)"],
)
async def test_requests_through_our_own_proxy_are_refused(
    nursery: trio.Nursery, via: bytes
) -> None:
    _, port = await _start(nursery, _routes())
    with trio.fail_after(5):
        response, body = await _get(port, headers=[(b"via", via)])
        assert response.status_code == 403
        assert "proxy" in json.loads(body)["error"]
        other, _ = await _get(port, headers=[(b"via", b"1.1 trimesh-ffffffff-out")])
        assert other.status_code == 200  # another sidecar's hop is not ours


async def test_head_and_bodies(nursery: trio.Nursery) -> None:
    _, port = await _start(nursery, _routes())
    with trio.fail_after(5):
        client = await Client.connect(port)
        async with client.stream:
            get, get_body = await client.ask(b"GET", b"/health?verbose=1")
            head, head_body = await client.ask(b"HEAD", b"/health")
            assert head.status_code == 200 and head_body == b""
            length = dict(head.headers)[b"content-length"]
            assert length == dict(get.headers)[b"content-length"] == b"%d" % len(get_body)
            posted, _ = await client.ask(b"POST", b"/health", body=b"x" * 1000)
            assert posted.status_code == 405
            assert dict(posted.headers)[b"allow"] == b"GET, HEAD"
            with_body, _ = await client.ask(b"GET", b"/health", body=b"{}")
            assert with_body.status_code == 200  # the body was read and the connection kept
            missing, missing_body = await client.ask(b"GET", b"/nope")
            assert missing.status_code == 404
            assert "/health" in json.loads(missing_body)["endpoints"]


async def test_oversized_body_and_garbage_are_answered_then_closed(nursery: trio.Nursery) -> None:
    _, port = await _start(nursery, _routes())
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            head = b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
            await stream.send_all(head + b"x" * 100000)
            assert (await _read_all(stream)).startswith(b"HTTP/1.1 413 ")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"NOT HTTP\r\n\r\n")
            assert (await _read_all(stream)).startswith(b"HTTP/1.1 400 ")


async def test_a_silent_client_is_closed_after_header_timeout(nursery: trio.Nursery) -> None:
    _, port = await _start(nursery, _routes(), header_timeout=0.1)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await _read_all(stream) == b""


async def test_run_admin_reports_its_port_and_stops_when_cancelled() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host, port = await _start(nursery, _routes())
            assert host == "127.0.0.1" and port > 0
            assert (await _get(port))[0].status_code == 200
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_hostname_is_refused_on_loopback_against_dns_rebinding(
    nursery: trio.Nursery,
) -> None:
    _, port = await _start(nursery, _routes())
    for host, status in [
        (b"attacker.example:%d" % port, 403),
        (b"localhost:%d" % port, 200),
        (b"127.0.0.1", 200),
        (b"[::1]:%d" % port, 200),
    ]:
        with trio.fail_after(5):
            client = await Client.connect(port)
            async with client.stream:
                response, _ = await client.ask(b"GET", b"/health", [(b"host", host)])
        assert response.status_code == status, host
