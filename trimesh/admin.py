"""The admin listener: health, readiness, Mesher's v1 endpoints, metrics, the dashboard.

A deliberately small h11 server: one request per connection read at a time,
JSON answers (or `Raw` ones: metrics text, the dashboard's files), GET and
HEAD, plus PUT/POST on the few endpoints registered as mutating, which need
the admin token when one is set (`listen.admin_token`, a bearer token; off
loopback every endpoint needs it). It shares no code path with the proxy
listeners, so a wedged data path cannot hide the admin answers. It is also
hardened on its own: a failing route answers 500 instead of ending the
sidecar, a client that does not read its answer is dropped after
`write_timeout`, connections are capped, and a request that came through one
of our own proxy listeners (our `Via` token) is refused, so a proxied request
can never reach the admin endpoints (loops, SSRF).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import h11
import trio

from trimesh import __version__
from trimesh.discovery.trust import is_localhost, parse_ip
from trimesh.http.headers import via_has

log = logging.getLogger("trimesh.admin")
Handler = Callable[[], tuple[int, Any]]
MAX_HEAD = 16 * 1024
# A request body is read and thrown away up to this size; beyond it, 413.
MAX_BODY = 64 * 1024
RECEIVE_SIZE = 65536
# How long a connection answered with a final error (503, 413, 400) may take to read it.
REFUSE_LINGER = 1.0


@attrs.frozen
class Raw:
    """A non-JSON answer body: its content type and bytes."""

    content_type: str
    body: bytes


@attrs.frozen
class AdminRequest:
    """What a request handler sees: method, path, query, headers (lower-case names), body."""

    method: bytes
    path: str
    query: str
    headers: Mapping[bytes, bytes]
    body: bytes = b""


RequestHandler = Callable[[AdminRequest], tuple[int, Any]]
AsyncHandler = Callable[[AdminRequest], Awaitable[tuple[int, Any]]]


class AdminRoutes:
    """Path → handler returning (status, JSON-able body or `Raw`)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.prefixes: dict[str, Callable[[str], tuple[int, Any]]] = {}
        # Handlers that see the request, and the methods each accepts.
        self.requests: dict[str, tuple[RequestHandler, frozenset[bytes]]] = {}
        # GET handlers that must await (work moved off the loop, e.g. a metrics scrape).
        self.awaiting: dict[str, AsyncHandler] = {}

    def add_async(self, path: str, handler: AsyncHandler) -> None:
        """`await handler(request)` answers GET/HEAD `path`; it owns its own deadline."""
        self.awaiting[path] = handler

    def add(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def add_request(
        self, path: str, handler: RequestHandler, methods: tuple[bytes, ...] = (b"GET",)
    ) -> None:
        """`handler(request)` answers `path`; a method other than GET/HEAD is mutating."""
        self.requests[path] = (
            handler,
            frozenset({*methods, b"HEAD"} if b"GET" in methods else methods),
        )

    def mutating(self, method: bytes) -> bool:
        return method not in (b"GET", b"HEAD")

    def add_prefix(self, prefix: str, handler: Callable[[str], tuple[int, Any]]) -> None:
        """`handler(rest)` answers every path `prefix` + rest (rest non-empty, no `/`)."""
        self.prefixes[prefix] = handler

    def answer(
        self,
        method: bytes,
        target: bytes,
        headers: Mapping[bytes, bytes] | None = None,
        body: bytes = b"",
    ) -> tuple[int, Any]:
        """Route one request; a HEAD is answered like a GET (the server drops the body)."""
        path = _path(target)
        found = self.requests.get(path)
        if found is not None:
            handler_for, methods = found
            if method not in methods:
                allowed = ", ".join(sorted(m.decode() for m in methods))
                return 405, {"error": f"{path} answers {allowed}"}
            query = target.partition(b"?")[2].decode("ascii", "replace")
            return handler_for(AdminRequest(method, path, query, headers or {}, body))
        handler = self.routes.get(path)
        if handler is None:
            handler = self._prefixed(path)
        if handler is None:
            endpoints = sorted(
                [
                    *self.routes,
                    *self.requests,
                    *self.awaiting,
                    *(f"{p}{{name}}" for p in self.prefixes),
                ]
            )
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
    # `listen.admin_token`: needed by mutating endpoints, and by all when `token_for_all`.
    token: str | None = attrs.field(default=None, repr=False)
    token_for_all: bool = False


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
            received = None
            try:
                with trio.move_on_after(self.settings.header_timeout):
                    received = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._answer_and_close(stream, _error(conn, exc.error_status_hint, exc))
                return
            except _BodyTooLarge:
                too_large = f"request body over {MAX_BODY} bytes"
                await self._answer_and_close(stream, _error(conn, 413, too_large))
                return
            if received is None:
                return  # closed, or no request within header_timeout
            request, body = received
            status, payload, content_type = await self._answer(request, body)
            answer = _response(conn, request.method, status, payload, content_type)
            if not await self._send(stream, answer):
                return
            if conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes, bytes]:
        json_type = b"application/json"
        if any(via_has(request.headers, token) for token in self.settings.via_tokens):
            refused = {"error": "request came through this sidecar's proxy listener"}
            return 403, _json(refused), json_type
        headers = {name.lower(): value for name, value in request.headers}
        if not self.settings.token_for_all and not _local_host(headers.get(b"host", b"")):
            # A web page whose own name was pointed at 127.0.0.1 (DNS rebinding) must
            # not read the admin API: on loopback, answer only to an IP or localhost.
            refused = {"error": "the admin listener answers to an IP address or localhost"}
            return 403, _json(refused), json_type
        denied = self._authorize(request.method, headers)
        if denied is not None:
            return denied[0], _json({"error": denied[1]}), json_type
        try:
            waiting = self.routes.awaiting.get(_path(request.target))
            if waiting is not None and request.method in (b"GET", b"HEAD"):
                query = request.target.partition(b"?")[2].decode("ascii", "replace")
                ask = AdminRequest(request.method, _path(request.target), query, headers, body)
                status, answer = await waiting(ask)
            else:
                status, answer = self.routes.answer(request.method, request.target, headers, body)
            if isinstance(answer, Raw):
                return status, answer.body, answer.content_type.encode()
            return status, _json(answer), json_type
        except Exception:
            self._report_bug(_path(request.target))
            return 500, _json({"error": "admin handler failed; see the sidecar log"}), json_type

    def _authorize(self, method: bytes, headers: Mapping[bytes, bytes]) -> tuple[int, str] | None:
        """None if allowed; else 401 (no token sent) or 403 (a wrong one)."""
        token = self.settings.token
        if token is None or not (self.settings.token_for_all or self.routes.mutating(method)):
            return None
        sent = headers.get(b"authorization", b"")
        scheme, _, value = sent.partition(b" ")
        if scheme.lower() != b"bearer" or not value:
            return 401, "this endpoint needs the admin token: Authorization: Bearer <token>"
        if not hmac.compare_digest(value.strip(), token.encode()):
            return 403, "wrong admin token"
        return None

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


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; None if the client closed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Request):
            return event, await _read_body(conn, stream)
        else:
            return None


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes:
    """Read the request body to its end so the connection stays in sync.

    Raises `_BodyTooLarge` past `MAX_BODY`; h11's RemoteProtocolError if it is cut short.
    """
    if conn.they_are_waiting_for_100_continue:
        go_on = h11.InformationalResponse(status_code=100, headers=[])
        await stream.send_all(conn.send(go_on) or b"")
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _BodyTooLarge
        else:
            return bytes(body)  # EndOfMessage


def _response(
    conn: h11.Connection,
    method: bytes,
    status: int,
    payload: bytes,
    content_type: bytes = b"application/json",
) -> bytes:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(payload)),
        (b"cache-control", b"no-store"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trimesh admin"'))
    if not content_type.startswith(b"application/json"):
        # The dashboard's files: only our own origin may load or frame them.
        headers += [
            (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
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


def _local_host(host: bytes) -> bool:
    """Whether a Host header names an IP literal or localhost (any port), or is absent."""
    if not host:
        return True
    name = host.decode("ascii", "replace")
    name = name[: name.find("]") + 1] if name.startswith("[") else name.rsplit(":", 1)[0]
    return parse_ip(name) is not None or is_localhost(name)


def _path(target: bytes) -> str:
    return target.split(b"?", 1)[0].decode("ascii", "replace")


_OVERLOADED_BODY = _json({"error": "too many admin connections"})
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_OVERLOADED_BODY), _OVERLOADED_BODY)
)
