"""A scripted upstream for traffic-shape tests: each connection runs `script(conn)`.

The script reads requests with `next_request()` (the raw head and body) and
writes whatever bytes it likes: a body on a 204, more than it framed, a
close mid-body, a reset. It knows nothing of h11 on its write side, so a
test can produce exactly the misbehaviour it is about.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import h11
import trio


class RawConn:
    """One accepted upstream connection as a script sees it."""

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self._h11 = h11.Connection(h11.SERVER)
        self.requests = 0

    async def next_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request head and its whole body; None at EOF."""
        conn = self._h11
        if conn.our_state is h11.DONE or conn.our_state is h11.MUST_CLOSE:
            # We wrote raw bytes, so h11 never saw a response: start it over.
            leftover = conn.trailing_data[0]
            conn = self._h11 = h11.Connection(h11.SERVER)
            if leftover:
                conn.receive_data(leftover)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                self.requests += 1
                # Mark our side done so the machine can be restarted for the next one.
                conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                return request, body
            else:
                return None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


Script = Callable[[RawConn], Awaitable[None]]


class RawUpstream:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.connections = 0
        self.closed = 0
        self.conn_closed = trio.Condition()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = RawConn(stream, self.connections)
        try:
            await self.script(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.closed += 1
            async with self.conn_closed:
                self.conn_closed.notify_all()

    async def wait_closed(self, count: int) -> None:
        async with self.conn_closed:
            while self.closed < count:
                await self.conn_closed.wait()


def response(status: int, body: bytes = b"", *, extra: list[bytes] | None = None) -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n" % (status, len(body))
    for line in extra or []:
        head += line + b"\r\n"
    return head + b"\r\n" + body


async def http_exchange(port: int, data: bytes, *, close_after: bool = True) -> bytes:
    """Send raw bytes to the sidecar; read until it closes. Bounded by the caller."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        chunks = []
        try:
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
        except trio.BrokenResourceError:
            chunks.append(b"<RST>")
        return b"".join(chunks)
