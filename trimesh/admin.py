"""The admin listener: health, readiness, Mesher's v1 endpoints, registry view.

A deliberately small h11 server: one request per connection read at a time,
JSON answers, GET and HEAD only. It shares no code path with the proxy
listeners, so a wedged data path cannot hide the admin answers. It is also
hardened on its own: a failing route answers 500 instead of ending the
sidecar, a client that does not read its answer is dropped after
`write_timeout`, connections are capped, and a request that came through one
of our own proxy listeners (our `Via` token) is refused, so a proxied request
can never reach the admin endpoints (loops, SSRF).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio

from trimesh import __version__
from trimesh.http.headers import via_has

log = logging.getLogger("trimesh.admin")
Handler = Callable[[], tuple[int, Any]]
MAX_HEAD = 16 * 1024
# A request body is read and thrown away up to this size; beyond it, 413.
MAX_BODY = 64 * 1024
RECEIVE_SIZE = 65536
# How long a connection answered with a final error (503, 413, 400) may take to read it.
REFUSE_LINGER = 1.0


class AdminRoutes:
    """Path → handler returning (status, JSON-able body)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.prefixes: dict[str, Callable[[str], tuple[int, Any]]] = {}

    def add(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def add_prefix(self, prefix: str, handler: Callable[[str], tuple[int, Any]]) -> None:
        """`handler(rest)` answers every path `prefix` + rest (rest non-empty, no `/`)."""
        self.prefixes[prefix] = handler

    def answer(self, method: bytes, target: bytes) -> tuple[int, Any]:
        """Route one request; a HEAD is answered like a GET (the server drops the body)."""
        path = _path(target)
        handler = self.routes.get(path)
        if handler is None:
            handler = self._prefixed(path)
        if handler is None:
            endpoints = sorted([*self.routes, *(f"{p}{{name}}" for p in self.prefixes)])
            return 404, {"error": f"no admin endpoint {path}", "endpoints": endpoints}
        if method not in (b"GET", b"HEAD"):
            return 405, {"error": "admin endpoints answer GET only"}
        return handler()

    def _prefixed(self, path: str) -> Handler | None:
        for prefix, handler in self.prefixes.items():
            rest = path[len(prefix) :]
            if path.startswith(prefix) and rest and "/" not in rest:
                return lambda: handler(rest)
        return None


def version_body() -> dict[str, str]:
    """Mesher's version document, field for field."""
    return {"version": __version__, "commit": "", "built": "", "Go-Chassis": ""}


@attrs.frozen
class AdminSettings:
    """Limits of the admin listener (each bounds what one client can hold)."""

    # Time to receive a request head (and its body), also the idle keep-alive limit.
    header_timeout: float = 10.0
    # Time for one answer to be taken by the client; past it the connection is dropped.
    write_timeout: float = 10.0
    # Connections served at once; more are answered 503 and closed.
    max_connections: int = 64
    # Our own Via pseudonyms (`Sidecar.via_token`): requests naming one are refused.
    via_tokens: tuple[bytes, ...] = ()


async def run_admin(
    addr: tuple[str, int],
    routes: AdminRoutes,
    settings: AdminSettings,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind `addr` (port 0 allowed), report the bound (host, port), serve until cancelled.

    Error handling: nothing a connection does (or a route raises) escapes;
    only a failure to bind does, before `started`.
    """
    listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
    bound = listeners[0].socket.getsockname()
    server = AdminServer(routes, settings)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        task_status.started((bound[0], bound[1]))


class AdminServer:
    """Connection handling for `run_admin`; counts what it holds."""

    def __init__(self, routes: AdminRoutes, settings: AdminSettings) -> None:
        self.routes = routes
        self.settings = settings
        self.active = 0
        self.refusing = 0
        self._failed_paths: set[str] = set()

    def __repr__(self) -> str:
        return f"<AdminServer active={self.active} refusing={self.refusing}>"

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # EMFILE and friends: back off instead of spinning.
                    log.error("admin accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self.handle, stream)

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection; owns and always closes `stream`."""
        if self.active >= self.settings.max_connections:
            await self._refuse(stream)
            return
        self.active += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("admin connection ended: %s", exc)
        except Exception:
            log.exception("admin handler bug: connection dropped")
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            request = None
            try:
                with trio.move_on_after(self.settings.header_timeout):
                    request = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._answer_and_close(stream, _error(conn, exc.error_status_hint, exc))
                return
            except _BodyTooLarge:
                too_large = f"request body over {MAX_BODY} bytes"
                await self._answer_and_close(stream, _error(conn, 413, too_large))
                return
            if request is None:
                return  # closed, or no request within header_timeout
            status, payload = self._answer(request)
            if not await self._send(stream, _response(conn, request.method, status, payload)):
                return
            if conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _answer(self, request: h11.Request) -> tuple[int, bytes]:
        if any(via_has(request.headers, token) for token in self.settings.via_tokens):
            return 403, _json({"error": "request came through this sidecar's proxy listener"})
        try:
            status, body = self.routes.answer(request.method, request.target)
            return status, _json(body)
        except Exception:
            self._report_bug(_path(request.target))
            return 500, _json({"error": "admin handler failed; see the sidecar log"})

    def _report_bug(self, path: str) -> None:
        """Log a failing route: its traceback once, then one line per failure."""
        if path in self._failed_paths:
            log.error("admin handler bug on %s again (traceback logged before)", path)
            return
        self._failed_paths.add(path)
        log.exception("admin handler bug on %s", path)

    async def _send(self, stream: trio.SocketStream, data: bytes) -> bool:
        """Write within `write_timeout`; False if the client did not take it in time."""
        with trio.move_on_after(self.settings.write_timeout):
            await stream.send_all(data)
            return True
        log.debug("admin client took no answer in %s s: dropped", self.settings.write_timeout)
        return False

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Over the cap: 503 and close, bounded; beyond twice the cap, close at once."""
        if self.refusing >= self.settings.max_connections:
            await trio.aclose_forcefully(stream)
            return
        self.refusing += 1
        try:
            await self._answer_and_close(stream, _OVERLOADED)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _answer_and_close(self, stream: trio.SocketStream, data: bytes) -> None:
        """Send a final answer, half-close, and read what the client still sends (bounded).

        Closing with request bytes unread would reset the connection, and the
        client could lose the answer with it.
        """
        if not await self._send(stream, data):
            return
        await stream.send_eof()
        with trio.move_on_after(min(REFUSE_LINGER, self.settings.header_timeout)):
            while await stream.receive_some(RECEIVE_SIZE):
                pass


class _BodyTooLarge(Exception):
    pass


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next request, its body read and discarded; None if the client closed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Request):
            await _discard_body(conn, stream)
            return event
        else:
            return None


async def _discard_body(conn: h11.Connection, stream: trio.SocketStream) -> None:
    """Read the request body to its end so the connection stays in sync.

    Raises `_BodyTooLarge` past `MAX_BODY`; h11's RemoteProtocolError if it is cut short.
    """
    if conn.they_are_waiting_for_100_continue:
        go_on = h11.InformationalResponse(status_code=100, headers=[])
        await stream.send_all(conn.send(go_on) or b"")
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise _BodyTooLarge
        else:
            return  # EndOfMessage


def _response(conn: h11.Connection, method: bytes, status: int, payload: bytes) -> bytes:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
    ]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if method != b"HEAD":
        data += conn.send(h11.Data(data=payload)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


def _error(conn: h11.Connection, status: int, detail: object) -> bytes:
    """An error answer that also closes the connection (its state is no longer trusted)."""
    payload = _json({"error": str(detail)})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
        (b"connection", b"close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    data += conn.send(h11.Data(data=payload)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


def _json(body: Any) -> bytes:
    return json.dumps(body, indent=1).encode() + b"\n"


def _path(target: bytes) -> str:
    return target.split(b"?", 1)[0].decode("ascii", "replace")


_OVERLOADED_BODY = _json({"error": "too many admin connections"})
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)
