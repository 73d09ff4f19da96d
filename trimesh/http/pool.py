"""Keep-alive upstream connections, pooled per endpoint, and each endpoint's state.

The pool decides synchronously (which idle connection to reuse, which to
drop), then the caller does the I/O; closing happens under a bounded shield.
A connection is checked back in only when both h11 machines reached DONE
cleanly *and* the upstream sent nothing past its response: a stray byte
would otherwise become the next client's response (pool poisoning).
"""

from __future__ import annotations

from collections import deque
from itertools import count

import h11
import trio

from trimesh.http import stream as hs
from trimesh.http.endpoint import EndpointState
from trimesh.http.stream import ByteStream, Endpoint

__all__ = ["Endpoint", "UpstreamConnection", "UpstreamPool", "close"]
MAX_RESPONSE_HEAD = 64 * 1024
# Retire a connection this long before the upstream's announced keep-alive timeout.
KEEPALIVE_MARGIN = 1.0
_ids = count(1)


class UpstreamConnection:
    """One TCP connection to an upstream endpoint and its h11 CLIENT machine."""

    __slots__ = ("endpoint", "expires", "h11", "id", "idle_since", "max_head", "requests", "stream")

    def __init__(
        self, endpoint: Endpoint, stream: ByteStream, max_head: int = MAX_RESPONSE_HEAD
    ) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.id = next(_ids)
        self.idle_since = 0.0
        self.requests = 0
        # When the upstream said it will close an idle connection (Keep-Alive: timeout=N).
        self.expires = float("inf")

    def __repr__(self) -> str:
        return (
            f"<UpstreamConnection #{self.id} {self.endpoint[0]}:{self.endpoint[1]} "
            f"requests={self.requests} ours={self.h11.our_state} theirs={self.h11.their_state}>"
        )

    @property
    def reused(self) -> bool:
        """True once this connection carried an earlier exchange."""
        return self.requests > 1

    def keepalive_hint(self, seconds: float | None) -> None:
        if seconds is not None:
            self.expires = trio.current_time() + max(0.0, seconds - KEEPALIVE_MARGIN)

    @property
    def finished(self) -> bool:
        """Both h11 machines reached DONE: the exchange ended cleanly."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def nothing_past_response(self) -> bool:
        """Not one byte (nor EOF) after the response, buffered or in the kernel."""
        leftover, closed = self.h11.trailing_data
        return not leftover and not closed and not hs.has_input(self.stream)


class UpstreamPool:
    """Idle keep-alive connections, most recently used first, per endpoint."""

    def __init__(self, *, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Endpoint, deque[UpstreamConnection]] = {}
        self._doomed: list[UpstreamConnection] = []
        self.endpoints: dict[Endpoint, EndpointState] = {}
        # Connections closed because the upstream wrote past its response.
        self.poisoned = 0
        # Idle connections retired: expired, past their keep-alive hint, or closed by the peer.
        self.retired = 0

    def __repr__(self) -> str:
        idle = {f"{h}:{p}": len(q) for (h, p), q in self._idle.items() if q}
        return (
            f"<UpstreamPool idle={idle} closing={len(self._doomed)} "
            f"poisoned={self.poisoned} retired={self.retired}>"
        )

    def state(self, endpoint: Endpoint) -> EndpointState:
        found = self.endpoints.get(endpoint)
        if found is None:
            found = self.endpoints[endpoint] = EndpointState()
        return found

    def view(self, now: float) -> dict[str, dict[str, object]]:
        """Per endpoint: requests in flight (one connection each) and the idle connections."""
        out: dict[str, dict[str, object]] = {}
        for endpoint in sorted({*self.endpoints, *self._idle}):
            state = self.endpoints.get(endpoint)
            idle = self._idle.get(endpoint, ())
            if not idle and (state is None or state.in_flight <= 0):
                continue
            out[f"{endpoint[0]}:{endpoint[1]}"] = {
                "active": 0 if state is None else max(state.in_flight, 0),
                "idle": [
                    {"id": c.id, "requests": c.requests, "idle_for": round(now - c.idle_since, 3)}
                    for c in idle
                ],
            }
        return out

    def active_count(self) -> int:
        """Attempts in flight, each holding one connection."""
        return sum(max(s.in_flight, 0) for s in self.endpoints.values())

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        if endpoint is not None:
            return len(self._idle.get(endpoint, ()))
        return sum(len(q) for q in self._idle.values())

    def _alive(self, conn: UpstreamConnection, now: float) -> bool:
        return (
            conn.idle_since >= now - self.idle_timeout
            and now < conn.expires
            and not hs.has_input(conn.stream)
        )

    def checkout(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """A live idle connection to `endpoint`, or None. Stale ones are set aside to close."""
        queue = self._idle.get(endpoint)
        if not queue:
            return None
        now = trio.current_time()
        while queue:
            conn = queue.pop()
            if self._alive(conn, now):
                return conn
            self.retired += 1
            self._doomed.append(conn)
        return None

    def checkin(self, conn: UpstreamConnection) -> bool:
        """Return a cleanly finished connection to the pool; False if it must be closed."""
        if not conn.finished:
            return False
        if not conn.nothing_past_response():
            self.poisoned += 1
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
        """Set aside every idle connection past its timeouts or closed by its peer."""
        now = trio.current_time()
        for endpoint, queue in list(self._idle.items()):
            keep = deque(c for c in queue if self._alive(c, now))
            gone = [c for c in queue if c not in keep]
            self.retired += len(gone)
            self._doomed.extend(gone)
            if keep:
                self._idle[endpoint] = keep
            else:
                del self._idle[endpoint]

    def next_expiry(self) -> float:
        """The earliest time an idle connection must be retired (for the reaper)."""
        soonest = trio.current_time() + max(self.idle_timeout / 2, 0.05)
        for queue in self._idle.values():
            for conn in queue:
                soonest = min(soonest, conn.expires, conn.idle_since + self.idle_timeout)
        return soonest

    def close_all(self) -> None:
        for queue in self._idle.values():
            self._doomed.extend(queue)
        self._idle.clear()

    async def reap(self) -> None:
        """Close what `checkout`/`expire`/`close_all` set aside (bounded, shielded)."""
        if not self._doomed:
            return
        doomed, self._doomed = self._doomed, []
        for conn in doomed:
            await close(conn)

    async def reaper(self) -> None:
        """Runs forever in the root nursery: retire idle connections when they are due."""
        while True:
            await trio.sleep_until(max(self.next_expiry(), trio.current_time() + 0.05))
            self.expire()
            await self.reap()


async def connect(endpoint: Endpoint, max_head: int = MAX_RESPONSE_HEAD) -> UpstreamConnection:
    """Open a new connection. Raises `OSError`; the caller owns the deadline."""
    return UpstreamConnection(endpoint, await hs.open_tcp(endpoint), max_head)


async def close(conn: UpstreamConnection) -> None:
    with trio.move_on_after(1, shield=True):
        await trio.aclose_forcefully(conn.stream)
