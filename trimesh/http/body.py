"""The request body as a replayable source: what an attempt sends upstream.

Events read from the client are remembered while their total size fits the
cap, so a second attempt can send the same body again. Once the body
outgrows the cap the memory is dropped and the request is no longer
replayable: it streams straight through.

Error handling: raises `RequestTimeout` when the client stalls for the idle
timeout (or passes `limits.request_timeout`), the client's own
`ProxyError`s, or `BadRequest` on an unexpected event.
"""

from __future__ import annotations

import h11
import trio

from trimesh.errors import BadRequest, RequestTimeout
from trimesh.http import headers as hh
from trimesh.http.downstream import Downstream

BodyEvent = h11.Data | h11.EndOfMessage


class ReplayBody:
    """Request body events: replayed from memory first, then read live from the client."""

    __slots__ = (
        "_down",
        "_events",
        "_idle",
        "_limit",
        "_pos",
        "_size",
        "done",
        "received",
        "replayable",
    )

    def __init__(self, down: Downstream, limit: int, idle_timeout: float) -> None:
        self._down = down
        self._limit = limit
        self._idle = idle_timeout
        self._events: list[BodyEvent] = []
        self._size = 0
        self._pos = 0
        self.replayable = True
        # Body bytes read from the client (each counted once, however often replayed).
        self.received = 0
        # True once the client's EndOfMessage was read.
        self.done = False

    def __repr__(self) -> str:
        return (
            f"<ReplayBody buffered={self._size} at={self._pos}/{len(self._events)} "
            f"replayable={self.replayable} done={self.done}>"
        )

    def rewind(self) -> bool:
        """Start over from the first event; False if the body was not kept."""
        if not self.replayable:
            return False
        self._pos = 0
        return True

    async def next(self) -> BodyEvent:
        """The next body event for the current attempt."""
        if self._pos < len(self._events):
            event = self._events[self._pos]
            self._pos += 1
            return event
        event = await self._read()
        if self.replayable:
            if isinstance(event, h11.Data):
                self._size += len(event.data)
            if self._size > self._limit:
                self.replayable = False
                self._events.clear()
            else:
                self._events.append(event)
                self._pos += 1
        return event

    async def _read(self) -> BodyEvent:
        down = self._down
        deadline = min(trio.current_time() + self._idle, down.receive_deadline)
        with trio.move_on_at(deadline):
            event = await down.next_event()
            if isinstance(event, h11.Data):
                self.received += len(event.data)
                return event
            if isinstance(event, h11.EndOfMessage):
                self.done = True
                if event.headers:
                    # Framing, routing and credentials never travel as trailers.
                    return h11.EndOfMessage(headers=hh.filter_trailers(hh.items(event.headers)))
                return event
            raise BadRequest(f"unexpected client event {event!r}")
        if deadline == down.receive_deadline:
            raise RequestTimeout("request not received within limits.request_timeout")
        raise RequestTimeout("request body stalled")
