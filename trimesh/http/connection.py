"""The downstream connection driver shared by the outbound and inbound listeners.

One task per connection owns a nursery with the socket reader; requests are
read, routed by the listener's `Router` and forwarded by `exchange.forward`,
each inside its own request cancel scope that a client disconnect cancels.
What differs per direction lives in the router (`trimesh.outbound`,
`trimesh.inbound`); nothing here asks which direction it serves.

A switched connection (WebSocket 101) is spliced *after* the request scope
ends: a client's FIN then ends one direction of the tunnel (passed on as a
half-close), never the whole tunnel with bytes still in flight.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from itertools import count

import attrs
import h11
import trio

from trimesh.config.model import Limits
from trimesh.errors import (
    BadRequest,
    DownstreamGone,
    ProxyError,
    RequestTimeout,
    UpstreamConnect,
    rescue,
)
from trimesh.http import headers as hh
from trimesh.http import stream as hs
from trimesh.http import synthetic
from trimesh.http.downstream import Downstream
from trimesh.http.exchange import Policy
from trimesh.http.governance import governed
from trimesh.http.guard import NO_BODY
from trimesh.http.pool import UpstreamPool
from trimesh.http.relay import Tunnel
from trimesh.http.route import Route, Router
from trimesh.http.target import Target
from trimesh.http.tunnel import splice
from trimesh.observe.accesslog import AccessLog, AccessRecord
from trimesh.observe.introspect import current_trace
from trimesh.observe.tracing import Span, Tracer, extract, inject

log = logging.getLogger("trimesh.connection")
_conn_ids = count(1)
# How long a connection we close may keep draining the client's unread bytes.
LINGER = 2.0


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


@attrs.define(slots=True)
class ConnInfo:
    """One open downstream connection, as `GET /v1/connections` shows it."""

    peer: str
    opened: float  # trio time
    requests: int = 0
    state: str = "idle"  # idle | busy | tunnel


@attrs.frozen
class ListenerContext:
    """Everything a connection on one listener needs; shared, immutable."""

    router: Router
    limits: Limits
    policy: Policy
    pool: UpstreamPool
    access_log: AccessLog
    drain: Drain
    # Open connections by id (the admin API's view; entries live as long as the connection).
    conns: dict[int, ConnInfo] = attrs.field(factory=dict)
    # Called with each finished request's record before the access log (metrics, live stats).
    observers: tuple[Callable[[AccessRecord], None], ...] = ()
    # Trace propagation and spans; None when `observe.tracing.propagate` is off.
    tracer: Tracer | None = None


async def serve_connection(stream: hs.ByteStream, ctx: ListenerContext) -> None:
    """Handle one accepted connection until it closes. Never raises."""
    conn_id = next(_conn_ids)
    down = Downstream(stream, ctx.limits, hs.peer_host(stream))
    ctx.conns[conn_id] = info = ConnInfo(down.peer, trio.current_time())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(down.reader)
            await _requests(down, ctx, conn_id, info)
            await down.linger(LINGER)
            nursery.cancel_scope.cancel()
    except Exception:
        log.exception("conn=%d bug: unhandled error", conn_id)
    finally:
        del ctx.conns[conn_id]
        await trio.aclose_forcefully(stream)


async def _requests(down: Downstream, ctx: ListenerContext, conn_id: int, info: ConnInfo) -> None:
    fixed: Target | None = None
    while True:
        try:
            request = await _read_head(down, ctx)
        except ProxyError as exc:
            await _send_rescue_raw(down, exc, conn_id)
            return
        if request is None:
            return
        info.requests += 1
        info.state = "busy"
        if request.method == b"CONNECT":
            info.state = "tunnel"
            fixed = await _connect(down, ctx, request, conn_id, fixed)
            if fixed is None:
                return
            continue
        if not await _one_request(down, ctx, request, conn_id, fixed):
            return
        info.state = "idle"
        if down.h11.our_state is not h11.DONE or down.h11.their_state is not h11.DONE:
            return
        if ctx.drain.draining:
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
                    scope.deadline = _started_receiving(down, limits)
                event = await down.step()
                if isinstance(event, h11.Request):
                    if idle:  # the whole head arrived in the read that ended the idle wait
                        _started_receiving(down, limits)
                    return event
                if event is not None:
                    return None  # ConnectionClosed
        finally:
            ctx.drain.idle.discard(scope)
    if idle:
        return None
    raise RequestTimeout(f"request head not received within {limits.header_timeout:g}s")


def _started_receiving(down: Downstream, limits: Limits) -> float:
    """The first byte of a request arrived: start its deadlines; return the head's."""
    now = trio.current_time()
    whole = limits.request_timeout
    down.receive_deadline = math.inf if whole is None else now + whole
    return min(now + limits.header_timeout, down.receive_deadline)


async def _one_request(
    down: Downstream, ctx: ListenerContext, request: h11.Request, conn_id: int, fixed: Target | None
) -> bool:
    """Forward one request; True if the connection may carry another."""
    rec = AccessRecord(
        conn=conn_id,
        direction=ctx.router.direction,
        method=request.method.decode("ascii", "replace"),
        path=request.target.decode("ascii", "replace"),
    )
    outcome: bool | Tunnel = False
    span = _request_span(ctx, request, rec)
    token = None if span is None else current_trace.set((rec.trace_id or "", rec.span_id or ""))
    try:
        outcome = await _in_request_scope(down, ctx, request, fixed, rec, span)
    except ProxyError as exc:
        rec.error, rec.status = exc.kind, exc.status
        return await _send_rescue(down, exc, conn_id, head=request.method == b"HEAD")
    except DownstreamGone:
        rec.error = rec.error or "downstream-disconnect"
        return False
    finally:
        if span is not None:
            span.set_response(rec.status, rec.error)
            span.end()  # a tunnel's span ends at its 101, not when it closes
        if token is not None:
            current_trace.reset(token)
        if not isinstance(outcome, Tunnel):
            _finished(ctx, rec)
    if isinstance(outcome, Tunnel):
        await _tunnel(down, ctx, outcome, rec)
        return False
    return outcome


def _request_span(ctx: ListenerContext, request: h11.Request, rec: AccessRecord) -> Span | None:
    """The request's span here: `server` inbound; outbound a `client` span, the first
    attempt's, with a child span for each further attempt."""
    tracer = ctx.tracer
    if tracer is None:
        return None
    inbound = ctx.router.direction == "inbound"
    headers = hh.items(request.headers)
    span = tracer.start(rec.method, "server" if inbound else "client", extract(headers))
    rec.trace_id, rec.span_id = span.context.trace_id, span.context.span_id
    return span


def _finished(ctx: ListenerContext, rec: AccessRecord) -> None:
    """A request (or tunnel) ended: metrics and live figures, then the access log."""
    rec.duration = time.monotonic() - rec.started
    for observe in ctx.observers:
        observe(rec)
    ctx.access_log.write(rec)


async def _in_request_scope(
    down: Downstream,
    ctx: ListenerContext,
    request: h11.Request,
    fixed: Target | None,
    rec: AccessRecord,
    span: Span | None = None,
) -> bool | Tunnel:
    """Route and forward inside the request scope (a disconnect cancels it)."""
    policy = ctx.policy  # one snapshot for the whole request
    with trio.CancelScope() as scope, trio.CancelScope() as writes:
        down.request_scope, down.write_scope = scope, writes
        if down.gone:
            scope.cancel()
        try:
            route = await ctx.router.route(request, down.guard.framing, down.peer, fixed)
            rec.service, rec.source = route.service, route.source
            if span is not None:
                _traced(route, span, rec, ctx)
            return await governed(down, request, route, ctx.router, ctx.pool, policy, rec)
        finally:
            # Out of the scope, writes (error answers) get their own deadline.
            down.request_scope = down.write_scope = None
    if writes.cancelled_caught:
        down.gone = True
        raise DownstreamGone("client stopped reading")
    raise DownstreamGone("client disconnected")


def _traced(route: Route, span: Span, rec: AccessRecord, ctx: ListenerContext) -> None:
    """Describe the span; inbound, the app gets its context (outbound, each attempt's)."""
    path = rec.path.partition("?")[0]
    if ctx.router.direction == "inbound":
        host = route.candidates[0].endpoint if route.candidates else ("", 0)
        span.set_request(rec.method, path, host[0], host[1], route.source)
        route.headers = [*route.headers, *inject(span.context)]
    else:
        span.name = f"{rec.method} {route.service}"
        span.set_request(rec.method, path, route.service or "", None, route.service)
        route.span, route.tracer = span, ctx.tracer


async def _tunnel(
    down: Downstream, ctx: ListenerContext, tunnel: Tunnel, rec: AccessRecord
) -> None:
    """Splice a switched connection, outside any request scope; log it once it ends."""
    try:
        stats = await splice(
            down,
            tunnel.upstream,
            tunnel.prefix,
            idle_timeout=ctx.limits.tunnel_idle_timeout,
            stall_timeout=ctx.limits.body_idle_timeout,
        )
        rec.bytes_in, rec.bytes_out = stats.bytes_up, stats.bytes_down
        rec.closed_by = stats.closed_by
    finally:
        down.cut = True  # nothing to linger for: both directions ended
        with trio.move_on_after(1, shield=True):
            await trio.aclose_forcefully(tunnel.upstream)
        _finished(ctx, rec)


async def _connect(
    down: Downstream, ctx: ListenerContext, request: h11.Request, conn_id: int, fixed: Target | None
) -> Target | None:
    """`CONNECT host:port`: answer 200, then serve the tunnel.

    To a service, the tunnel carries HTTP/1.1 that is routed like the rest;
    to an allowed egress host (`target.addresses`), it is a byte tunnel
    (HTTPS), and the connection ends with it.
    """
    rec = AccessRecord(
        conn=conn_id,
        direction=ctx.router.direction,
        method="CONNECT",
        path=request.target.decode("ascii", "replace"),
    )
    upstream: trio.SocketStream | None = None
    tunnelling = False
    try:
        if fixed is not None:
            raise BadRequest("CONNECT inside a CONNECT tunnel")
        target = await ctx.router.tunnel(request)
        event = await down.next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise BadRequest("CONNECT with a body")
        if target.addresses:
            upstream = await _open_egress(target, ctx.policy.connect_timeout)
            peer_host, peer_port = upstream.socket.getpeername()[:2]
            rec.upstream = f"{peer_host}:{peer_port}"
        rec.service, rec.status = target.host, 200
        established = h11.Response(status_code=200, headers=[], reason=b"Connection Established")
        await down.send(down.h11.send(established))
        tunnelling = upstream is not None
    except ProxyError as exc:
        rec.error, rec.status = exc.kind, exc.status
        await _send_rescue(down, exc, conn_id, close=True)
        return None
    except DownstreamGone:
        return None
    finally:
        if not tunnelling:
            if upstream is not None:
                await trio.aclose_forcefully(upstream)
            _finished(ctx, rec)
    if upstream is not None:
        await _tunnel(down, ctx, Tunnel(upstream, b""), rec)
        return None
    down.restart_http()
    return target


async def _open_egress(target: Target, connect_timeout: float) -> trio.SocketStream:
    """A TCP connection to the first of an egress host's addresses that accepts."""
    errors = []
    for host, port in target.addresses:
        try:
            with trio.fail_after(connect_timeout):
                return await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            errors.append(f"{host}:{port}: {getattr(exc, 'strerror', None) or 'timed out'}")
    raise UpstreamConnect(f"cannot reach {target.host}: {'; '.join(errors)}")


async def _send_rescue(
    down: Downstream, exc: ProxyError, conn_id: int, *, close: bool = False, head: bool = False
) -> bool:
    """Answer a proxy error if a response can still be sent; True to keep going."""
    if down.gone or down.cut:
        return False
    if down.h11.our_state is not h11.SEND_RESPONSE:
        if down.h11.our_state is h11.SEND_BODY:
            down.cut = True  # a head went out: the client must see a cut, never a clean end
        return False
    answer = rescue(exc)
    if down.h11.their_state is h11.SEND_BODY and down.guard.framing == NO_BODY:
        # A bodyless request only lacks its EndOfMessage event; take it so we can keep alive.
        with contextlib.suppress(ProxyError, DownstreamGone):
            await down.next_event()
    must_close = close or answer.close or down.h11.their_state is not h11.DONE
    log.debug("conn=%d answering %d %s: %s", conn_id, answer.status, answer.kind, exc.detail)
    try:
        await down.send(synthetic.send(down.h11, answer, close=must_close, head_only=head))
    except (h11.LocalProtocolError, DownstreamGone):
        return False
    return not must_close


async def _send_rescue_raw(down: Downstream, exc: ProxyError, conn_id: int) -> None:
    """Answer an error found before h11 accepted a request head, then close."""
    log.info("conn=%d rejected request: %d %s: %s", conn_id, exc.status, exc.kind, exc.detail)
    with trio.move_on_after(1), contextlib.suppress(DownstreamGone):
        await down.send(synthetic.render(exc))
