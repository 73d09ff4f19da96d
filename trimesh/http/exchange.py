"""One upstream exchange: send the request, stream the response back.

A request without a body is sent in one write and needs no extra task; a
request with a body runs its body pump beside the response reader (nursery
of two), so `Expect: 100-continue` and early responses cannot deadlock.

Error handling: upstream failures raise `UpstreamConnect`, `UpstreamTimeout`
or `UpstreamProtocol`; a client that goes away raises `DownstreamGone`.
Resource handling: the upstream connection goes back to the pool only when
both h11 machines finished cleanly; otherwise it is closed before returning.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import h11
import trio

from trimesh.errors import (
    DownstreamGone,
    ProxyError,
    RequestTimeout,
    UpstreamConnect,
    UpstreamProtocol,
    UpstreamTimeout,
)
from trimesh.http import headers as hh
from trimesh.http import pool as hpool
from trimesh.http.downstream import Downstream
from trimesh.http.pool import UpstreamConnection, UpstreamPool
from trimesh.http.tunnel import splice, valid_websocket_switch
from trimesh.mesh.plan import Plan
from trimesh.observe.accesslog import AccessRecord

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
FLUSH_AT = 65536
EOM = h11.EndOfMessage()


@attrs.frozen
class ExchangeSettings:
    connect_timeout: float
    response_timeout: float
    body_idle_timeout: float
    via_token: bytes
    # True once the sidecar drains: responses then say `Connection: close`.
    draining: Callable[[], bool] = lambda: False


class _Stale(Exception):
    """A reused connection failed before the upstream saw or answered anything."""


@attrs.define(slots=True)
class _BodyState:
    done: bool = False
    error: BaseException | None = None
    # The response-head wait: its deadline starts when the body is fully sent.
    head_scope: trio.CancelScope | None = None


async def forward(
    down: Downstream,
    request: h11.Request,
    plan: Plan,
    pool: UpstreamPool,
    cfg: ExchangeSettings,
    rec: AccessRecord,
) -> bool:
    """Run the exchange; return True if the downstream connection may be reused."""
    framing = down.guard.framing
    bodyless = not framing.chunked and not framing.content_length
    event = h11.Request(
        method=request.method, target=plan.target, headers=plan.headers, _parsed=True
    )
    if bodyless:
        await _expect(down, h11.EndOfMessage)
    conn = pool.checkout(plan.endpoint)
    await pool.reap()
    retry_ok = request.method in IDEMPOTENT and bodyless
    try:
        if conn is not None:
            try:
                await _start(conn, event, bodyless, cfg)
            except _Stale:
                await hpool.close(conn)
                conn = None
                if not retry_ok:
                    raise UpstreamProtocol("pooled connection closed by upstream") from None
        if conn is None:
            conn = await _connect(plan, cfg)
            try:
                await _start(conn, event, bodyless, cfg)
            except _Stale:
                raise UpstreamProtocol("upstream closed the connection") from None
        rec.upstream = f"{plan.endpoint[0]}:{plan.endpoint[1]}"
        if bodyless:
            reusable = await _relay(down, conn, request, plan, cfg, rec, body_done=True)
        else:
            reusable = await _with_body(down, conn, request, plan, cfg, rec)
        if not pool.checkin(conn):
            await hpool.close(conn)
        return reusable
    except BaseException:
        if conn is not None:
            await hpool.close(conn)
        raise


async def _connect(plan: Plan, cfg: ExchangeSettings) -> UpstreamConnection:
    with trio.move_on_after(cfg.connect_timeout) as scope:
        return await hpool.connect(plan.endpoint)
    assert scope.cancelled_caught
    raise UpstreamConnect(f"connect to {plan.endpoint[0]}:{plan.endpoint[1]} timed out")


async def _start(
    conn: UpstreamConnection, event: h11.Request, bodyless: bool, cfg: ExchangeSettings
) -> None:
    """Send the head (and end of message when bodyless); `_Stale` if the peer is gone."""
    data = conn.h11.send(event)
    if bodyless:
        data += conn.h11.send(EOM)
    conn.requests += 1
    try:
        await conn.stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        conn.h11.send_failed()
        raise _Stale() from exc


async def _expect(down: Downstream, kind: type[h11.Event]) -> h11.Event:
    event = await down.next_event()
    if not isinstance(event, kind):
        raise UpstreamProtocol(f"unexpected client event {event!r}")
    return event


async def _up_event(conn: UpstreamConnection, *, first: bool = False) -> h11.Event:
    """The next response event; `_Stale` when a reused connection closes before a byte."""
    while True:
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocol(f"malformed response: {exc}") from exc
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.ConnectionClosed):
                if first and conn.requests > 1:
                    raise _Stale()
                raise UpstreamProtocol("upstream closed the connection before responding")
            return event  # type: ignore[return-value]
        try:
            data = await conn.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if first and conn.requests > 1:
                raise _Stale() from exc
            raise UpstreamProtocol("upstream reset the connection") from exc
        conn.h11.receive_data(data)


async def _response_head(
    conn: UpstreamConnection, cfg: ExchangeSettings, state: _BodyState | None = None
) -> h11.Event:
    """The first response event, within `response_timeout` of the request being sent."""
    with trio.CancelScope() as scope:
        if state is None or state.done:
            scope.deadline = trio.current_time() + cfg.response_timeout
        else:
            state.head_scope = scope
        return await _up_event(conn, first=True)
    assert scope.cancelled_caught
    raise UpstreamTimeout(f"no response within {cfg.response_timeout:g}s")


async def _relay(
    down: Downstream,
    conn: UpstreamConnection,
    request: h11.Request,
    plan: Plan,
    cfg: ExchangeSettings,
    rec: AccessRecord,
    *,
    body_done: bool,
    state: _BodyState | None = None,
) -> bool:
    """Stream the response to the client; True if both connections may be reused."""
    try:
        event = await _response_head(conn, cfg, state)
    except _Stale:
        raise UpstreamProtocol("pooled connection closed by upstream") from None
    while isinstance(event, h11.InformationalResponse):
        if event.status_code == 101:
            return await _switch(down, conn, request, event, cfg, rec)
        await down.send(down.h11.send(event))
        event = await _response_head(conn, cfg, state)
    if not isinstance(event, h11.Response):
        raise UpstreamProtocol(f"unexpected response event {event!r}")
    finished = body_done or (state is not None and state.done)
    close = not finished or cfg.draining()
    out = bytearray(down.h11.send(_response_event(event, cfg.via_token, close=close)))
    rec.status = event.status_code
    while True:
        event = await _body_event(conn, cfg)
        if isinstance(event, h11.Data):
            rec.bytes_out += len(event.data)
            out += down.h11.send(event)
            if len(out) >= FLUSH_AT:
                await down.send(bytes(out))
                out.clear()
            continue
        if isinstance(event, h11.EndOfMessage):
            out += down.h11.send(event)
            await down.send(bytes(out))
            return finished and down.h11.our_state is h11.DONE
        raise UpstreamProtocol(f"unexpected response event {event!r}")


async def _body_event(conn: UpstreamConnection, cfg: ExchangeSettings) -> h11.Event:
    """The next body event: parsed from buffered bytes if possible, else read idle-bounded."""
    try:
        event = conn.h11.next_event()
    except h11.RemoteProtocolError as exc:
        raise UpstreamProtocol(f"malformed response: {exc}") from exc
    if event is not h11.NEED_DATA and not isinstance(event, h11.ConnectionClosed):
        return event  # type: ignore[return-value]
    with trio.move_on_after(cfg.body_idle_timeout) as scope:
        return await _up_event(conn)
    assert scope.cancelled_caught
    raise UpstreamTimeout("response body stalled")


def _response_event(resp: h11.Response, via: bytes, *, close: bool) -> h11.Response:
    kept, length = hh.end_to_end(hh.items(resp.headers))
    if length is not None:
        kept.append((b"content-length", length))
    hh.append_list(kept, b"via", b"1.1 " + via)
    if close:
        kept.append((b"connection", b"close"))
    return h11.Response(
        status_code=resp.status_code, headers=kept, reason=resp.reason, _parsed=True
    )


async def _switch(
    down: Downstream,
    conn: UpstreamConnection,
    request: h11.Request,
    event: h11.InformationalResponse,
    cfg: ExchangeSettings,
    rec: AccessRecord,
) -> bool:
    """The upstream accepted a WebSocket upgrade: validate, answer 101, tunnel."""
    if not valid_websocket_switch(hh.items(request.headers), hh.items(event.headers)):
        raise UpstreamProtocol("invalid 101 Switching Protocols for websocket")
    kept, _ = hh.end_to_end(hh.items(event.headers), keep_upgrade=True)
    hh.append_list(kept, b"via", b"1.1 " + cfg.via_token)
    switch = h11.InformationalResponse(status_code=101, headers=kept, reason=event.reason)
    rec.status = 101
    await down.send(down.h11.send(switch))
    prefix, _ = conn.h11.trailing_data
    rec.bytes_out += await splice(down, conn.stream, bytes(prefix))
    return False


async def _with_body(
    down: Downstream,
    conn: UpstreamConnection,
    request: h11.Request,
    plan: Plan,
    cfg: ExchangeSettings,
    rec: AccessRecord,
) -> bool:
    """Body pump ‖ response relay; True if both sides may be reused."""
    state = _BodyState()
    reusable = False
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_body, down, conn, cfg, rec, state, nursery.cancel_scope)
        try:
            reusable = await _relay(
                down, conn, request, plan, cfg, rec, body_done=False, state=state
            )
        except (ProxyError, DownstreamGone) as exc:
            failure = exc
        # An early response ends the exchange; an unfinished body forbids reuse.
        nursery.cancel_scope.cancel()
    if state.error is not None:
        raise state.error
    if failure is not None:
        raise failure
    return reusable and state.done


async def _pump_body(
    down: Downstream,
    conn: UpstreamConnection,
    cfg: ExchangeSettings,
    rec: AccessRecord,
    state: _BodyState,
    scope: trio.CancelScope,
) -> None:
    """Move request body events from the client to the upstream, idle-bounded."""
    try:
        while True:
            with trio.move_on_after(cfg.body_idle_timeout) as idle:
                event = await down.next_event()
            if idle.cancelled_caught:
                raise RequestTimeout("request body stalled")
            if isinstance(event, h11.Data):
                rec.bytes_in += len(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                raise UpstreamProtocol(f"unexpected client event {event!r}")
            with trio.move_on_after(cfg.body_idle_timeout) as stuck:
                try:
                    await conn.stream.send_all(conn.h11.send(event))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.h11.send_failed()
                    return  # the relay sees the upstream's answer or its reset
            if stuck.cancelled_caught:
                conn.h11.send_failed()
                raise UpstreamTimeout("upstream stopped reading the request body")
            if isinstance(event, h11.EndOfMessage):
                state.done = True
                if state.head_scope is not None:
                    state.head_scope.deadline = trio.current_time() + cfg.response_timeout
                return
    except (ProxyError, DownstreamGone) as exc:
        state.error = exc
        scope.cancel()
