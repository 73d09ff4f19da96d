"""WebSocket through two sidecars (outbound → inbound → app), and CONNECT tunnels."""

from __future__ import annotations

from typing import Any

import trio
import trio_websocket
import websockets.sync.client
import wsproto
import wsproto.events as we

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from tests.test_proxy import raw_request
from trimesh.sidecar import Bound


async def echo_ws(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(f"echo:{message}")
    except trio_websocket.ConnectionClosed:
        pass


async def two_sidecars(nursery: trio.Nursery, app_port: int) -> tuple[Bound, Bound]:
    """Provider sidecar B in front of the app; consumer sidecar A knows `echo` at B."""
    _, provider = await start_sidecar(
        nursery, sidecar_config(service={"name": "echo"}, app={"ports": {"rest": app_port}})
    )
    raw = sidecar_config(
        service={"name": "consumer"},
        registry={"services": {"echo": [{"address": f"127.0.0.1:{provider.inbound[1]}"}]}},
    )
    _, consumer = await start_sidecar(nursery, raw)
    return consumer, provider


async def ws_server(nursery: trio.Nursery) -> int:
    server = await nursery.start(trio_websocket.serve_websocket, echo_ws, "127.0.0.1", 0, None)
    return int(server.port)


async def test_websocket_absolute_form_through_two_sidecars(nursery: trio.Nursery) -> None:
    consumer, _ = await two_sidecars(nursery, await ws_server(nursery))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", consumer.outbound[1])
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(we.Request(host="echo", target="http://echo/chat")))
        replies = await _ws_roundtrip(stream, ws, ["hello", "x" * 70000])
        await stream.aclose()
    assert replies == ["echo:hello", "echo:" + "x" * 70000]


async def _ws_roundtrip(
    stream: trio.SocketStream, ws: wsproto.WSConnection, messages: list[str]
) -> list[str]:
    replies: list[str] = []
    pending = list(messages)
    buffer = ""
    while len(replies) < len(messages):
        ws.receive_data(await stream.receive_some(65536))
        for event in ws.events():
            if isinstance(event, we.AcceptConnection):
                for m in pending:
                    await stream.send_all(ws.send(we.Message(data=m)))
            elif isinstance(event, we.TextMessage):
                buffer += event.data
                if event.message_finished:
                    replies.append(buffer)
                    buffer = ""
            elif isinstance(event, we.RejectConnection):
                raise AssertionError(f"rejected: {event.status_code}")
    return replies


async def test_websocket_via_connect_tunnel(nursery: trio.Nursery) -> None:
    consumer, _ = await two_sidecars(nursery, await ws_server(nursery))
    proxy = f"http://127.0.0.1:{consumer.outbound[1]}"

    def talk() -> list[Any]:
        with websockets.sync.client.connect("ws://echo/chat", proxy=proxy, open_timeout=5) as c:
            c.send("one")
            first = c.recv(timeout=5)
            c.send(b"\x00\x01binary")
            second = c.recv(timeout=5)
            return [first, second]

    with trio.fail_after(10):
        got = await trio.to_thread.run_sync(talk)
    assert got == ["echo:one", "echo:b'\\x00\\x01binary'"]


async def test_connect_tunnel_carries_http_through_the_pipeline(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    raw = sidecar_config(
        registry={"services": {"orders": [{"address": f"127.0.0.1:{upstream.port}"}]}}
    )
    _, bound = await start_sidecar(nursery, raw)
    out = await raw_request(
        bound.outbound[1],
        b"CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n"
        b"GET /in/tunnel HTTP/1.1\r\nHost: orders\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200 Connection Established\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2 or out.count(b"HTTP/1.1 200 ") == 3
    assert [s.target for s in upstream.seen] == [b"/in/tunnel", b"/second"]
    assert upstream.seen[0].header(b"via") is not None  # the same pipeline added Via


async def test_connect_to_unknown_target_is_refused(nursery: trio.Nursery) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config())
    out = await raw_request(
        bound.outbound[1], b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 403 ")  # an outside host not in egress.allow
    assert b"x-trimesh-error: egress-denied" in out
    out = await raw_request(
        bound.outbound[1], b"CONNECT nowhere:443 HTTP/1.1\r\nHost: nowhere:443\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 405 ")  # a service name the registry does not know
    assert b"x-trimesh-error: method-not-allowed" in out


async def test_refused_upgrade_keeps_http_mode(nursery: trio.Nursery) -> None:
    async def refuse(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 426, [(b"upgrade", b"websocket")], b"no"

    app = Upstream(refuse)
    await nursery.start(app.serve)
    raw = sidecar_config(registry={"services": {"ws": [{"address": f"127.0.0.1:{app.port}"}]}})
    _, bound = await start_sidecar(nursery, raw)
    out = await raw_request(
        bound.outbound[1],
        b"GET http://ws/ HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"GET http://ws/after HTTP/1.1\r\nHost: ws\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 426 ") == 2
    assert [s.target for s in app.seen] == [b"/", b"/after"]
    assert app.seen[0].header(b"upgrade") == b"websocket"


async def test_bad_accept_key_is_rejected(nursery: trio.Nursery) -> None:
    async def bad_switch(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: wrong\r\n\r\n"
        )
        await stream.receive_some(65536)

    listeners = await nursery.start(trio.serve_tcp, bad_switch, 0)
    port = listeners[0].socket.getsockname()[1]
    raw = sidecar_config(registry={"services": {"ws": [{"address": f"127.0.0.1:{port}"}]}})
    _, bound = await start_sidecar(nursery, raw)
    out = await raw_request(
        bound.outbound[1],
        b"GET http://ws/ HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 502 ")
    assert b"upstream-protocol" in out


async def test_h2c_upgrade_is_never_forwarded(nursery: trio.Nursery, upstream: Upstream) -> None:
    raw = sidecar_config(
        registry={"services": {"orders": [{"address": f"127.0.0.1:{upstream.port}"}]}}
    )
    _, bound = await start_sidecar(nursery, raw)
    out = await raw_request(
        bound.outbound[1],
        b"GET http://orders/ HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET http://orders/next HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 ") == 2
    names = {n for n, _ in upstream.seen[0].headers}
    assert b"upgrade" not in names and b"http2-settings" not in names


async def test_trio_websocket_client_over_a_connect_tunnel(nursery: trio.Nursery) -> None:
    consumer, _ = await two_sidecars(nursery, await ws_server(nursery))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", consumer.outbound[1])
        async with stream:
            await stream.send_all(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
            established = await stream.receive_some(65536)
            assert established.startswith(b"HTTP/1.1 200 ")
            async with trio.open_nursery() as ws_nursery:
                ws = await trio_websocket.wrap_client_stream(ws_nursery, stream, "echo", "/chat")
                await ws.send_message("via trio-websocket")
                reply = await ws.get_message()
                await ws.aclose()
    assert reply == "echo:via trio-websocket"
