"""The client side of one accepted connection: socket, reader task, guard, h11 SERVER.

A dedicated reader task owns `receive_some` on the socket and feeds the
`RequestGuard`; the handler task takes vetted bytes from the guard. Keeping
the socket read in its own task is what lets a client disconnect cancel the
request in flight at once, even while the handler waits on the upstream.

Resource handling: the reader stops at EOF or error; the connection's
nursery cancels it when the handler ends. Error handling: protocol errors in
the client's bytes surface from `next_event` as `ProxyError`s; socket errors
on send raise `DownstreamGone`.
"""

from __future__ import annotations

import math

import h11
import trio

from trimesh.config.model import Limits
from trimesh.errors import BadRequest, DownstreamGone, NotImplementedFraming, ProxyError
from trimesh.http.guard import RequestGuard

READ_SIZE = 32768
# The reader pauses when this much is buffered and not yet taken (backpressure):
# what one connection may hold beyond the kernel's buffers. A head being read
# must fit whole (the guard judges complete heads), so the mark is at least
# `limits.max_header_bytes` + 1.
HIGH_WATER = 32768


class Downstream:
    __slots__ = (
        "_data",
        "_space",
        "cut",
        "discard",
        "gone",
        "guard",
        "h11",
        "limits",
        "peer",
        "receive_deadline",
        "request_scope",
        "stream",
        "write_scope",
    )

    def __init__(self, stream: trio.SocketStream, limits: Limits, peer: str) -> None:
        self.stream = stream
        self.limits = limits
        self.peer = peer
        self.guard = RequestGuard(limits)
        self.h11 = _server_machine(limits)
        self._data = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.gone = False
        self.discard = False
        # The scope of the request in flight; the reader cancels it on disconnect.
        self.request_scope: trio.CancelScope | None = None
        # Inside a request: the scope `send` re-aims as its write-stall deadline.
        self.write_scope: trio.CancelScope | None = None
        # When the request being read must be complete (`limits.request_timeout`).
        self.receive_deadline = math.inf
        # A response was cut short: close at once, never linger or keep alive.
        self.cut = False

    def __repr__(self) -> str:
        return (
            f"<Downstream {self.peer} ours={self.h11.our_state} "
            f"theirs={self.h11.their_state} {self.guard!r} gone={self.gone}>"
        )

    async def reader(self) -> None:
        """Task: move socket bytes into the guard until EOF; then cancel the request."""
        while True:
            if self.guard.buffered > max(HIGH_WATER, self.limits.max_header_bytes):
                await self._space.park()
                continue
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self.discard and data:
                continue
            self.guard.feed(data)
            self._data.unpark_all()
            if not data:
                self.gone = True
                if self.request_scope is not None:
                    self.request_scope.cancel()
                return

    async def linger(self, seconds: float) -> None:
        """Close our side gracefully: half-close, then discard input until EOF or `seconds`.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy the error response the client has not read yet (nginx's
        lingering_close solves the same problem).
        """
        if self.gone or self.cut or self.guard.nothing_unread:
            return  # nothing unread: a plain close sends no RST
        self.discard = True
        self.guard.take_rest()
        self._space.unpark_all()  # a reader parked by back-pressure must see the rest
        with trio.move_on_after(seconds):
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            while not self.gone:
                await self._data.park()

    async def wait_data(self) -> None:
        """Park until the reader delivers more bytes (or EOF)."""
        self._space.unpark_all()
        await self._data.park()

    def restart_http(self) -> None:
        """After CONNECT: the tunnel's bytes are a fresh HTTP/1.1 connection."""
        rest = self.guard.take_rest()
        self.guard = RequestGuard(self.limits)
        self.guard.feed(rest) if rest else None
        if self.gone:
            self.guard.eof = True
        self.h11 = _server_machine(self.limits)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event of the request being read, feeding h11 vetted bytes only."""
        while (event := await self.step()) is None:
            pass
        return event

    async def step(self) -> h11.Event | type[h11.PAUSED] | None:
        """One step of reading: an event, or None once bytes were fed or waited for.

        The head reader calls this directly so it can re-check its deadlines
        between steps.
        """
        conn = self.h11
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _client_error(exc) from exc
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        chunk = self.guard.pull()
        if chunk is not None:
            conn.receive_data(chunk)
        elif self.guard.eof:
            conn.receive_data(b"")
        else:
            await self.wait_data()
        return None

    async def send(self, data: bytes | bytearray) -> None:
        """Write to the client; a client that stops reading for `body_idle_timeout` is gone.

        Inside a request, `write_scope` (owned by the connection driver, apart
        from the request's policy deadline) is re-aimed per write, which saves
        a cancel scope per write on the hot path; the driver turns its expiry
        into `DownstreamGone`.
        """
        scope = self.write_scope
        if scope is None:
            with trio.move_on_after(self.limits.body_idle_timeout) as stuck:
                await self._send(data)
            if stuck.cancelled_caught:
                raise self._lost("client stopped reading")
            return
        scope.deadline = trio.current_time() + self.limits.body_idle_timeout
        try:
            await self._send(data)
        finally:
            scope.deadline = math.inf

    async def _send(self, data: bytes | bytearray) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(str(exc)) from exc

    def _lost(self, why: str) -> DownstreamGone:
        """A write failed: the client is gone and h11 must know the send did not happen."""
        self.gone = True
        self.h11.send_failed()
        return DownstreamGone(why)

    async def receive_raw(self) -> bytes:
        """For tunnels: every buffered byte, waiting for some; b"" at EOF."""
        while not self.guard.buffered and not self.guard.eof:
            await self.wait_data()
        return self.guard.take_rest()


def _server_machine(limits: Limits) -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes + 1)


def _client_error(exc: h11.RemoteProtocolError) -> ProxyError:
    if exc.error_status_hint == 501:
        return NotImplementedFraming(str(exc))
    return BadRequest(str(exc))
