"""Keep-alive upstream connections, pooled per endpoint.

The pool decides synchronously (which idle connection to reuse, which to
drop), then the caller does the I/O; closing happens under a bounded shield.
A connection is only checked back in when both h11 machines reached DONE
cleanly; everything else is closed.
"""

from __future__ import annotations

import select
from collections import deque
from itertools import count

import h11
import trio

from trimesh.errors import UpstreamConnect

Endpoint = tuple[str, int]
MAX_RESPONSE_HEAD = 64 * 1024
_ids = count(1)


class UpstreamConnection:
    """One TCP connection to an upstream endpoint and its h11 CLIENT machine."""

    __slots__ = ("endpoint", "h11", "id", "idle_since", "requests", "stream")

    def __init__(self, endpoint: Endpoint, stream: trio.SocketStream) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.id = next(_ids)
        self.idle_since = 0.0
        self.requests = 0

    def __repr__(self) -> str:
        return (
            f"<UpstreamConnection #{self.id} {self.endpoint[0]}:{self.endpoint[1]} "
            f"requests={self.requests} ours={self.h11.our_state} theirs={self.h11.their_state}>"
        )

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def peer_closed(self) -> bool:
        """True if the idle socket is readable: EOF, reset, or bytes nobody asked for."""
        try:
            poller = select.poll()
            poller.register(self.stream.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class UpstreamPool:
    """Idle keep-alive connections, most recently used first, per endpoint."""

    def __init__(self, *, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Endpoint, deque[UpstreamConnection]] = {}
        self._doomed: list[UpstreamConnection] = []

    def __repr__(self) -> str:
        idle = {f"{h}:{p}": len(q) for (h, p), q in self._idle.items() if q}
        return f"<UpstreamPool idle={idle} closing={len(self._doomed)}>"

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        if endpoint is not None:
            return len(self._idle.get(endpoint, ()))
        return sum(len(q) for q in self._idle.values())

    def checkout(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """A live idle connection to `endpoint`, or None. Stale ones are set aside to close."""
        queue = self._idle.get(endpoint)
        if not queue:
            return None
        oldest_ok = trio.current_time() - self.idle_timeout
        while queue:
            conn = queue.pop()
            if conn.idle_since >= oldest_ok and not conn.peer_closed():
                return conn
            self._doomed.append(conn)
        return None

    def checkin(self, conn: UpstreamConnection) -> bool:
        """Return a cleanly finished connection to the pool; False if it must be closed."""
        if not conn.reusable:
            return False
        try:
            conn.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        conn.idle_since = trio.current_time()
        queue = self._idle.setdefault(conn.endpoint, deque())
        queue.append(conn)
        while len(queue) > self.max_idle:
            self._doomed.append(queue.popleft())
        return True

    def expire(self) -> None:
        """Set aside every idle connection past the idle timeout or closed by its peer."""
        oldest_ok = trio.current_time() - self.idle_timeout
        for endpoint, queue in list(self._idle.items()):
            keep = deque(c for c in queue if c.idle_since >= oldest_ok and not c.peer_closed())
            self._doomed.extend(c for c in queue if c not in keep)
            if keep:
                self._idle[endpoint] = keep
            else:
                del self._idle[endpoint]

    def close_all(self) -> None:
        for queue in self._idle.values():
            self._doomed.extend(queue)
        self._idle.clear()

    async def reap(self) -> None:
        """Close what `checkout`/`expire`/`close_all` set aside (bounded, shielded)."""
        doomed, self._doomed = self._doomed, []
        for conn in doomed:
            await close(conn)

    async def reaper(self) -> None:
        """Runs forever in the root nursery: expire idle connections periodically."""
        while True:
            await trio.sleep(max(self.idle_timeout / 2, 0.05))
            self.expire()
            await self.reap()


async def connect(endpoint: Endpoint) -> UpstreamConnection:
    """Open a new connection. Raises `UpstreamConnect`; the caller owns the deadline."""
    try:
        stream = await trio.open_tcp_stream(*endpoint)
    except OSError as exc:
        raise UpstreamConnect(f"{endpoint[0]}:{endpoint[1]}: {exc.strerror or exc}") from exc
    return UpstreamConnection(endpoint, stream)


async def close(conn: UpstreamConnection) -> None:
    with trio.move_on_after(1, shield=True):
        await trio.aclose_forcefully(conn.stream)
