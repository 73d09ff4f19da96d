"""Real servers for tests: a recording upstream app on trio + h11, and sidecar startup."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

from trimesh.config import build
from trimesh.observe.accesslog import AccessLog
from trimesh.sidecar import Bound, Sidecar


@attrs.define
class Seen:
    """One request as the upstream app saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    http_version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


Responder = Callable[[Seen, "Upstream"], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]


async def echo(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Default app: 200 with a JSON summary of the request."""
    body = json.dumps(
        {"method": seen.method.decode(), "target": seen.target.decode(), "size": len(seen.body)}
    ).encode()
    return 200, [(b"content-type", b"application/json"), (b"x-app", b"echo")], body


class Upstream:
    """A keep-alive HTTP/1.1 app that records every request it gets."""

    def __init__(self, responder: Responder = echo) -> None:
        self.responder = responder
        self.seen: list[Seen] = []
        self.connections = 0
        self.disconnects = 0
        self.disconnected = trio.Event()
        self._disconnect = trio.Condition()
        self.request_arrived = trio.Event()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                seen = await self._read_request(conn, stream)
                if seen is None:
                    return
                self.seen.append(seen)
                self.request_arrived.set()
                outcome = await self._respond_or_eof(conn, stream, seen)
                if outcome is None:
                    return  # the client went away while we were responding
                status, headers, body = outcome
                if status == 0:
                    return  # responder asked to drop the connection
                headers = [*headers, (b"content-length", str(len(body)).encode())]
                data = conn.send(h11.Response(status_code=status, headers=headers))
                if body and seen.method != b"HEAD":
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            self.disconnects += 1
            self.disconnected.set()
            await trio.aclose_forcefully(stream)
            async with self._disconnect:
                self._disconnect.notify_all()

    async def wait_disconnects(self, count: int) -> None:
        """Until `count` connections in all have ended."""
        async with self._disconnect:
            while self.disconnects < count:
                await self._disconnect.wait()

    async def _respond_or_eof(
        self, conn: h11.Connection, stream: trio.SocketStream, seen: Seen
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Run the responder while watching the socket, like a real server would."""
        result: list[tuple[int, list[tuple[bytes, bytes]], bytes]] = []

        async def respond(scope: trio.CancelScope) -> None:
            result.append(await self.responder(seen, self))
            scope.cancel()

        async def watch(scope: trio.CancelScope) -> None:
            try:
                while data := await stream.receive_some(65536):
                    conn.receive_data(data)  # pipelined bytes: keep them for h11
            except trio.BrokenResourceError:
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(respond, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
        return result[0] if result else None

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> Seen | None:
        seen: Seen | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                seen = Seen(
                    event.method, event.target, list(event.headers), http_version=event.http_version
                )
            elif isinstance(event, h11.Data) and seen is not None:
                seen.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and seen is not None:
                seen.trailers = list(event.headers)
                return seen
            else:
                return None


def sidecar_config(**sections: Any) -> dict[str, Any]:
    """A raw config dict binding every listener to port 0 on loopback."""
    raw: dict[str, Any] = {
        "listen": {
            "outbound": "127.0.0.1:0",
            "inbound": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "drain_timeout": "5s",
            "drain_delay": "10ms",
        },
        "registry": {"type": "static", "services": {}},
        "observe": {"access_log": "off"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


async def start_sidecar(
    nursery: trio.Nursery, raw: dict[str, Any], access_log: AccessLog | None = None
) -> tuple[Sidecar, Bound]:
    sidecar = Sidecar(build(raw), access_log=access_log)
    bound: Bound = await nursery.start(sidecar.run)
    return sidecar, bound
