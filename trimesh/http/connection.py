"""The downstream connection driver shared by the outbound and inbound listeners.

One task per connection owns a nursery with the socket reader; requests are
read, planned by the listener's `Router`, and executed by `exchange.forward`,
each inside its own request cancel scope that a client disconnect cancels.
"""

from __future__ import annotations

import contextlib
import logging
from itertools import count

import attrs
import h11
import trio

from trimesh.config.model import Limits
from trimesh.discovery.base import RegistryError
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.session import Discovery
from trimesh.errors import (
    BadRequest,
    DownstreamGone,
    MethodNotAllowed,
    ProxyError,
    RegistryUnreachable,
    RequestTimeout,
    ServiceNotFound,
    rescue,
)
from trimesh.http.downstream import Downstream
from trimesh.http.guard import NO_BODY
from trimesh.http.pool import UpstreamPool
from trimesh.http.target import Target, parse_authority
from trimesh.mesh.exchange import ExchangeSettings, forward
from trimesh.mesh.plan import Router
from trimesh.observe.accesslog import AccessLog, AccessRecord

log = logging.getLogger("trimesh.connection")
_conn_ids = count(1)
# How long a connection we close may keep draining the client's unread bytes.
LINGER = 2.0
_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    508: b"Loop Detected",
}


class Drain:
    """Graceful-shutdown state shared by every connection of the sidecar."""

    def __init__(self) -> None:
        self.draining = False
        self.idle: set[trio.CancelScope] = set()

    def begin(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for scope in list(self.idle):
            scope.cancel()


@attrs.frozen
class ListenerContext:
    """Everything a connection on one listener needs; shared, immutable."""

    router: Router
    limits: Limits
    exchange: ExchangeSettings
    pool: UpstreamPool
    access_log: AccessLog
    drain: Drain
    cache: InstanceCache | None = None  # outbound only: CONNECT checks known services
    discovery: Discovery | None = None  # outbound only: first use of a service name


async def serve_connection(stream: trio.SocketStream, ctx: ListenerContext) -> None:
    """Handle one accepted connection until it closes. Never raises."""
    conn_id = next(_conn_ids)
    try:
        peer = stream.socket.getpeername()[0]
    except OSError:
        peer = "unknown"
    down = Downstream(stream, ctx.limits, peer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(down.reader)
            await _requests(down, ctx, conn_id, None)
            await down.linger(LINGER)
            nursery.cancel_scope.cancel()
    except Exception:
        log.exception("conn=%d bug: unhandled error", conn_id)
    finally:
        await trio.aclose_forcefully(stream)


async def _requests(
    down: Downstream, ctx: ListenerContext, conn_id: int, fixed: Target | None
) -> None:
    while not ctx.drain.draining:
        try:
            request = await _read_head(down, ctx)
        except ProxyError as exc:
            await _send_rescue_raw(down, exc, conn_id)
            return
        if request is None:
            return
        if request.method == b"CONNECT":
            fixed = await _connect(down, ctx, request, conn_id, fixed)
            if fixed is None:
                return
            continue
        if not await _one_request(down, ctx, request, conn_id, fixed):
            return
        if down.h11.our_state is not h11.DONE or down.h11.their_state is not h11.DONE:
            return
        down.h11.start_next_cycle()
        down.guard.next_message()


async def _read_head(down: Downstream, ctx: ListenerContext) -> h11.Request | None:
    """Wait for the next request head: keep-alive idle, then the header deadline."""
    limits = ctx.limits
    idle = down.guard.at_message_start
    deadline = trio.current_time() + (limits.keepalive_timeout if idle else limits.header_timeout)
    with trio.CancelScope(deadline=deadline) as scope:
        if idle:
            ctx.drain.idle.add(scope)
        try:
            while True:
                if idle and not down.guard.at_message_start:
                    idle = False
                    ctx.drain.idle.discard(scope)
                    scope.deadline = trio.current_time() + limits.header_timeout
                event = await _head_event(down)
                if isinstance(event, h11.Request):
                    return event
                if event is not None:
                    return None  # ConnectionClosed
        finally:
            ctx.drain.idle.discard(scope)
    if idle:
        return None
    raise RequestTimeout(f"request head not received within {limits.header_timeout:g}s")


async def _head_event(down: Downstream) -> h11.Event | None:
    """One step of head reading; None when the deadline should be re-checked."""
    conn = down.h11
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(str(exc)) from exc
    if event is not h11.NEED_DATA:
        return event  # type: ignore[return-value]
    chunk = down.guard.pull()
    if chunk is not None:
        conn.receive_data(chunk)
    elif down.guard.eof:
        conn.receive_data(b"")
    else:
        await down.wait_data()
    return None


async def _one_request(
    down: Downstream,
    ctx: ListenerContext,
    request: h11.Request,
    conn_id: int,
    fixed: Target | None,
) -> bool:
    """Forward one request; True if the connection may carry another."""
    rec = AccessRecord(
        conn=conn_id,
        direction=ctx.router.direction,
        method=request.method.decode("ascii", "replace"),
        path=request.target.decode("ascii", "replace"),
    )
    try:
        with trio.CancelScope() as scope:
            down.request_scope = scope
            if down.gone:
                scope.cancel()
            try:
                return await _plan_and_forward(down, ctx, request, fixed, rec)
            finally:
                # Out of the scope, writes (error answers) get their own deadline.
                down.request_scope = None
        rec.error = "downstream-disconnect"
        return False
    except ProxyError as exc:
        rec.error, rec.status = exc.kind, exc.status
        return await _send_rescue(down, exc, conn_id, head=request.method == b"HEAD")
    except DownstreamGone:
        rec.error = "downstream-disconnect"
        return False
    finally:
        ctx.access_log.write(rec)


async def _plan_and_forward(
    down: Downstream,
    ctx: ListenerContext,
    request: h11.Request,
    fixed: Target | None,
    rec: AccessRecord,
) -> bool:
    try:
        plan = ctx.router.plan(request, down.guard.framing, down.peer, fixed)
    except ServiceNotFound as missing:
        # First use of a name: ask the registry once, then plan again.
        if not await _resolve_first_use(ctx, missing.service):
            raise
        plan = ctx.router.plan(request, down.guard.framing, down.peer, fixed)
    rec.service, rec.instance = plan.service, plan.instance
    return await forward(down, request, plan, ctx.pool, ctx.exchange, rec)


async def _resolve_first_use(ctx: ListenerContext, service: str | None) -> bool:
    """Load a service the cache has never seen from the registry; True if it now has one.

    Only misses pay for this: the request path reads the cache alone once a
    service is known (the watcher `resolve` starts keeps it current).
    """
    if ctx.discovery is None or ctx.cache is None or service is None:
        return False
    try:
        with trio.fail_after(ctx.exchange.connect_timeout):
            await ctx.discovery.resolve(service)
    except (RegistryError, trio.TooSlowError) as exc:
        raise RegistryUnreachable(f"looking up {service!r}: {str(exc) or 'timed out'}") from exc
    return ctx.cache.lookup(service) is not None


async def _connect(
    down: Downstream,
    ctx: ListenerContext,
    request: h11.Request,
    conn_id: int,
    fixed: Target | None,
) -> Target | None:
    """`CONNECT <service>:<port>`: answer 200 and serve the tunnel as HTTP/1.1."""
    rec = AccessRecord(
        conn=conn_id,
        direction=ctx.router.direction,
        method="CONNECT",
        path=request.target.decode("ascii", "replace"),
    )
    try:
        try:
            host, port = parse_authority(request.target)
        except BadRequest as exc:
            raise MethodNotAllowed("CONNECT needs <service-name>:<port>") from exc
        known = ctx.cache is not None and (
            ctx.cache.lookup(host) is not None or await _resolve_first_use(ctx, host)
        )
        if not known or fixed is not None:
            raise MethodNotAllowed(
                "CONNECT is only supported to a known service name (no egress tunnelling)"
            )
        event = await down.next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise BadRequest("CONNECT with a body")
        rec.service, rec.status = host, 200
        established = h11.Response(status_code=200, headers=[], reason=b"Connection Established")
        await down.send(down.h11.send(established))
    except ProxyError as exc:
        rec.error, rec.status = exc.kind, exc.status
        await _send_rescue(down, exc, conn_id, close=True)
        return None
    except DownstreamGone:
        return None
    finally:
        ctx.access_log.write(rec)
    down.restart_http()
    return Target(host, port, b"/")


async def _send_rescue(
    down: Downstream, exc: ProxyError, conn_id: int, *, close: bool = False, head: bool = False
) -> bool:
    """Answer a proxy error through h11 if a response can still be sent; True to keep going."""
    if down.h11.our_state is not h11.SEND_RESPONSE or down.gone:
        return False
    answer = rescue(exc)
    if down.h11.their_state is h11.SEND_BODY and down.guard.framing == NO_BODY:
        # A bodyless request only lacks its EndOfMessage event; take it so we can keep alive.
        await down.next_event()
    must_close = close or answer.close or down.h11.their_state is not h11.DONE
    headers = answer.headers()
    if must_close:
        headers.append((b"connection", b"close"))
    log.debug("conn=%d answering %d %s: %s", conn_id, answer.status, answer.kind, exc.detail)
    try:
        reason = _REASONS.get(answer.status, b"")
        data = down.h11.send(
            h11.Response(status_code=answer.status, headers=headers, reason=reason)
        )
        if not head:
            data += down.h11.send(h11.Data(data=answer.body))
        data += down.h11.send(h11.EndOfMessage())
        await down.send(data)
    except (h11.LocalProtocolError, DownstreamGone):
        return False
    return not must_close


async def _send_rescue_raw(down: Downstream, exc: ProxyError, conn_id: int) -> None:
    """Answer an error found before h11 accepted a request head, then close."""
    answer = rescue(exc)
    log.info("conn=%d rejected request: %d %s: %s", conn_id, answer.status, answer.kind, exc.detail)
    reason = _REASONS.get(answer.status, b"Error")
    head = b"HTTP/1.1 %d %s\r\n" % (answer.status, reason)
    head += b"".join(b"%s: %s\r\n" % kv for kv in answer.headers())
    with trio.move_on_after(1):
        with contextlib.suppress(DownstreamGone):
            await down.send(head + b"connection: close\r\n\r\n" + answer.body)
