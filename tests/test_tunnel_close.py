"""WebSocket close handshakes through two sidecars, in every order.

Invariant: a tunnel loses no byte and completes its close handshake: both
ends see the other's Close frame with code 1000, whichever side closes
first, and whether the closer half-closes right after its Close frame (its
Close and FIN then arrive in one read) or waits for the reply.
"""

from __future__ import annotations

import io
import json

import pytest
import trio
import wsproto
import wsproto.events as we

from tests.servers import sidecar_config, start_sidecar
from trimesh.observe.accesslog import AccessLog
from trimesh.sidecar import Bound

RUNS = 12


class WsApp:
    """A wsproto server: echoes; on "bye" it starts the close handshake itself."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            while data := await stream.receive_some(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, we.Request):
                        await stream.send_all(ws.send(we.AcceptConnection()))
                    elif isinstance(event, we.TextMessage) and event.data == "bye":
                        await stream.send_all(ws.send(we.CloseConnection(code=1000)))
                    elif isinstance(event, we.TextMessage):
                        await stream.send_all(ws.send(we.Message(data="echo:" + event.data)))
                    elif isinstance(event, we.CloseConnection):
                        self.codes.append(event.code)
                        if ws.state is not wsproto.connection.ConnectionState.CLOSED:
                            await stream.send_all(ws.send(event.response()))
                        return  # close TCP after the handshake, as servers do
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def two_sidecars(nursery: trio.Nursery, app_port: int, log: AccessLog) -> Bound:
    _, provider = await start_sidecar(
        nursery, sidecar_config(service={"name": "echo"}, app={"ports": {"rest": app_port}})
    )
    raw = sidecar_config(
        service={"name": "consumer"},
        registry={"services": {"echo": [{"address": f"127.0.0.1:{provider.inbound[1]}"}]}},
    )
    _, consumer = await start_sidecar(nursery, raw, access_log=log)
    return consumer


async def session(port: int, *, server_closes: bool, half_close: bool) -> int | None:
    """One WebSocket session; returns the close code the client received."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    got: int | None = None
    async with stream:
        await stream.send_all(ws.send(we.Request(host="echo", target="http://echo/chat")))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return got
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, we.AcceptConnection):
                    last = "bye" if server_closes else "hello"
                    out = ws.send(we.Message(data="x" * 3000)) + ws.send(we.Message(data=last))
                    if not server_closes:
                        out += ws.send(we.CloseConnection(code=1000))
                    await stream.send_all(out)
                    if half_close and not server_closes:
                        await stream.send_eof()  # Close and FIN in (nearly) one segment
                elif isinstance(event, we.CloseConnection):
                    got = event.code
                    if server_closes:
                        await stream.send_all(ws.send(event.response()))
                        if half_close:
                            await stream.send_eof()


@pytest.mark.parametrize(
    ("server_closes", "half_close"),
    [(False, False), (False, True), (True, False), (True, True)],
    ids=["client-close", "client-close-then-fin", "server-close", "server-close-reply-fin"],
)
async def test_close_handshake_completes_every_time(
    nursery: trio.Nursery, server_closes: bool, half_close: bool
) -> None:
    app = WsApp()
    await nursery.start(app.serve)
    consumer = await two_sidecars(nursery, app.port, AccessLog(io.StringIO()))
    client_codes = []
    with trio.fail_after(30):
        for _ in range(RUNS):
            client_codes.append(
                await session(
                    consumer.outbound[1], server_closes=server_closes, half_close=half_close
                )
            )
    assert client_codes == [1000] * RUNS
    assert app.codes == [1000] * RUNS


async def test_access_log_records_a_tunnel_honestly(nursery: trio.Nursery) -> None:
    app = WsApp()
    await nursery.start(app.serve)
    out = io.StringIO()
    log = AccessLog(out)
    consumer = await two_sidecars(nursery, app.port, log)
    with trio.fail_after(10):
        assert await session(consumer.outbound[1], server_closes=False, half_close=True) == 1000
        while True:  # the record is written once the tunnel's both directions ended
            log.flush()
            if out.getvalue():
                break
            await trio.sleep(0.01)
    entry = json.loads(out.getvalue().splitlines()[-1])
    assert entry["status"] == 101
    assert entry["error"] is None
    assert entry["closed_by"] == "client"
    assert entry["bytes_in"] > 3000 and entry["bytes_out"] > 0
