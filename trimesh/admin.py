"""The admin listener: health, readiness, Mesher's v1 endpoints, registry view.

A deliberately small h11 server: one request per connection read at a time,
JSON answers, GET only. It shares no code path with the proxy listeners, so
a wedged data path cannot hide the admin answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import h11
import trio

from trimesh import __version__

log = logging.getLogger("trimesh.admin")
Handler = Callable[[], tuple[int, Any]]
MAX_HEAD = 16 * 1024


class AdminRoutes:
    """Path → handler returning (status, JSON-able body)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}

    def add(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def answer(self, method: bytes, target: bytes) -> tuple[int, Any]:
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        handler = self.routes.get(path)
        if handler is None:
            return 404, {"error": f"no admin endpoint {path}", "endpoints": sorted(self.routes)}
        if method not in (b"GET", b"HEAD"):
            return 405, {"error": "admin endpoints answer GET only"}
        return handler()


def version_body() -> dict[str, str]:
    """Mesher's version document, field for field."""
    return {"version": __version__, "commit": "", "built": "", "Go-Chassis": ""}


async def serve_admin(
    stream: trio.SocketStream, routes: AdminRoutes, header_timeout: float
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            with trio.move_on_after(header_timeout):
                request = await _next_request(conn, stream)
            if not isinstance(request, h11.Request):
                return
            status, body = routes.answer(request.method, request.target)
            payload = json.dumps(body, indent=1).encode() + b"\n"
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
            ]
            data = conn.send(h11.Response(status_code=status, headers=headers))
            if request.method != b"HEAD":
                data += conn.send(h11.Data(data=payload))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            if conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("admin connection ended: %s", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Request):
            # Admin requests carry no body we care about; drain it.
            while not isinstance(rest := conn.next_event(), h11.EndOfMessage):
                if rest is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(rest, h11.ConnectionClosed):
                    return None
            return event
        return None
