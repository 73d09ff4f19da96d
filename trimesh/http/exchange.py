"""The upstream driver: attempts, then one commit.

An **attempt** picks an endpoint, checks out (or opens) a connection, sends
the request and waits for the response head: nothing is written to the
client yet, so another attempt, or an error answer, is still possible. A
reused connection that fails before a single response byte (the upstream
closed it while it sat idle) is `_Stale`: an idempotent request is sent
again on a fresh connection, its body replayed from the `ReplayBody`; a
refused connection moves on to another candidate (nothing was sent).
**Commit** (`relay.commit`) writes the head and streams the body.

A request without a body is sent in one write and needs no extra task; one
with a body runs its pump beside the head wait and the relay (nursery of
two), so `Expect: 100-continue` and early responses cannot deadlock.

Error handling: raises `UpstreamConnect`, `UpstreamTimeout`,
`UpstreamProtocol`, or `DownstreamGone`. Resource handling: the connection
goes back to the pool only after a clean end (`pool.checkin`); otherwise it
is closed before returning, except a switched (101) connection, which the
returned `Tunnel` owns.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs
import h11
import trio

from trimesh.errors import (
    BadRequest,
    DownstreamGone,
    ProxyError,
    UpstreamConnect,
    UpstreamProtocol,
    UpstreamTimeout,
)
from trimesh.http import pool as hpool
from trimesh.http import stream as hs
from trimesh.http.body import ReplayBody
from trimesh.http.downstream import Downstream
from trimesh.http.endpoint import EndpointState
from trimesh.http.pool import UpstreamConnection, UpstreamPool
from trimesh.http.relay import Tunnel, commit, response_event, switch_event
from trimesh.http.route import Candidate, Route, Router
from trimesh.http.tunnel import valid_websocket_switch
from trimesh.observe.accesslog import AccessRecord
from trimesh.observe.tracing import Span, inject
from trimesh.policy import deadline as pdeadline
from trimesh.policy.balancer import cookie_value
from trimesh.policy.retry import IDEMPOTENT_METHODS

EOM = h11.EndOfMessage()
# Fresh connections tried after stale pooled ones, per request.
MAX_STALE_RETRIES = 2


@attrs.frozen
class Policy:
    """The settings one request runs under: read once per request, never mid-request."""

    connect_timeout: float
    response_timeout: float
    body_idle_timeout: float
    via_token: bytes
    max_response_head: int = hpool.MAX_RESPONSE_HEAD
    replay_limit: int = 64 * 1024
    allow_underscores: bool = False
    # True once the sidecar drains: responses then say `Connection: close`.
    draining: Callable[[], bool] = lambda: False


class _Stale(Exception):
    """A reused connection failed before the upstream answered a single byte."""


@attrs.define(slots=True)
class _Exchange:
    """One request's state across its attempts."""

    down: Downstream
    request: h11.Request
    route: Route
    policy: Policy
    rec: AccessRecord
    body: ReplayBody | None
    # The response-head deadline starts once the body is fully sent.
    body_sent: bool = False
    head_wait: trio.CancelScope | None = None
    pump_error: BaseException | None = None
    # When the request's policy deadline ends (trio time; inf: none), and its scope.
    deadline: float = math.inf
    deadline_scope: trio.CancelScope | None = None
    # Scopes whose deadlines stop applying once a response is committed.
    disarm: list[trio.CancelScope] = attrs.Factory(list)
    committed: bool = False
    retries: int = 0
    # Attempts started (stale, refused-then-connected, retries and hedges all count).
    attempts: int = 0
    # The current attempt's per-try deadline (trio time; inf: none).
    try_deadline: float = math.inf


class _Retry(Exception):
    """The attempt's response head is one the retry policy asks to try again."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def forward(
    down: Downstream,
    request: h11.Request,
    route: Route,
    router: Router,
    pool: UpstreamPool,
    policy: Policy,
    rec: AccessRecord,
) -> bool | Tunnel:
    """Run attempts until one commits; True if the downstream connection may be reused.

    The whole attempt phase (retries and backoff included) runs under the
    request's policy deadline: `timeout`, clamped by the caller's propagated
    deadline. It stops applying once a response is committed: a streamed body
    is bounded by the idle timeouts instead.
    """
    framing = down.guard.framing
    bodyless = not framing.chunked and not framing.content_length
    body = None if bodyless else ReplayBody(down, policy.replay_limit, policy.body_idle_timeout)
    ex = _Exchange(down, request, route, policy, rec, body, body_sent=bodyless)
    now = trio.current_time()
    if route.propagated is not None:
        if route.propagated <= 0:
            raise UpstreamTimeout("the caller's deadline had already passed; not forwarded")
        ex.deadline = now + route.propagated
    try:
        with trio.CancelScope(deadline=ex.deadline) as scope:
            ex.deadline_scope = scope
            ex.disarm.append(scope)
            if bodyless:
                await _client_eom(down)
                _start_timeout(ex)
            return await _attempts(ex, router, pool)
        raise UpstreamTimeout(_deadline_detail(ex))
    finally:
        if body is not None:
            rec.bytes_in = body.received


def _start_timeout(ex: _Exchange) -> None:
    """The request is all sent (or read): the policy's `timeout` starts now."""
    timeout = ex.route.policy.timeout
    scope = ex.deadline_scope
    if timeout is not None and scope is not None and not ex.committed:
        ex.deadline = min(ex.deadline, trio.current_time() + timeout)
        scope.deadline = ex.deadline


def _deadline_detail(ex: _Exchange) -> str:
    timeout = ex.route.policy.timeout
    own = "" if timeout is None else f"timeout {timeout:g}s"
    theirs = "" if ex.route.propagated is None else f"the caller's {ex.route.propagated:g}s"
    return (
        f"no response within the request's deadline ({' / '.join(x for x in (own, theirs) if x)})"
    )


async def _attempts(ex: _Exchange, router: Router, pool: UpstreamPool) -> bool | Tunnel:
    """Pick, attempt, and on a stale or refused connection or a retryable failure pick again."""
    route, request = ex.route, ex.request
    retry = route.policy.retry
    tried: list[hpool.Endpoint] = []
    failed: list[hpool.Endpoint] = []
    stale = 0
    same: hpool.Endpoint | None = None
    while True:
        candidate = _choose(router, route, tried, failed, same)
        if candidate is None:
            raise UpstreamConnect(f"no instance of {route.service!r} accepted a connection")
        endpoint = candidate.endpoint
        ex.rec.instance = candidate.instance_id
        conn = pool.checkout(endpoint) if stale == 0 else None
        await pool.reap()
        try:
            if conn is None:
                conn = await _connect(endpoint, ex, tried)
                if conn is None:
                    continue  # refused: nothing was sent, try another instance
            delay = _hedge_delay(ex)
            if delay is not None:
                return await _hedged(ex, candidate, conn, router, pool, delay, tried, failed)
            return await _tried(ex, conn, pool)
        except _Stale:
            stale += 1
            if stale > MAX_STALE_RETRIES or not _replayable(ex):
                why = f"{endpoint[0]}:{endpoint[1]} closed a kept-alive connection"
                if request.method not in IDEMPOTENT_METHODS:
                    why += f"; not sent again: {request.method.decode()} is not idempotent"
                raise UpstreamProtocol(why) from None
            continue
        except _Retry:
            pass  # `_committed` decided (and spent the budget) before raising
        except ProxyError as exc:
            if not _may_retry(ex, exc):
                raise
        ex.retries += 1
        ex.rec.retries = ex.retries
        failed.append(endpoint)
        same = endpoint if retry.same_instance(ex.retries - 1) else None
        await trio.sleep(retry.backoff.delay(ex.retries - 1, _rng))


_rng = random.Random()


def _outlier_failed(ex: _Exchange, endpoint: hpool.Endpoint, exc: _Stale | ProxyError) -> None:
    """Count a failed attempt against its instance; a stale pooled connection is not one."""
    guards = ex.route.guards
    if guards is not None and not isinstance(exc, _Stale) and exc.retry_kind is not None:
        guards.outlier.failed(endpoint, trio.current_time(), len(ex.route.candidates))


def _choose(
    router: Router,
    route: Route,
    tried: list[hpool.Endpoint],
    failed: list[hpool.Endpoint],
    same: hpool.Endpoint | None,
) -> Candidate | None:
    """The next candidate: the same endpoint, or one not yet failed (any, once all have)."""
    if same is not None and same not in tried:
        for c in route.candidates:
            if c.endpoint == same:
                return c
    fresh = router.pick(route, tried + failed if failed else tried)
    return fresh if fresh is not None or not failed else router.pick(route, tried)


def _may_retry(ex: _Exchange, exc: ProxyError | None, status: int = 0) -> bool:
    """Whether a failure (or a response `status`) may be tried again: policy, then budget.

    A True answer spends from the service's retry budget.
    """
    retry = ex.route.policy.retry
    if ex.committed or ex.retries >= retry.max_retries:
        return False
    if exc is None:
        kind_ok = retry.retryable_status(status)
    else:
        kind_ok = exc.retry_kind is not None and retry.retryable_failure(exc.retry_kind)
    if not kind_ok or not retry.allowed(ex.request.method, _replayable_body(ex)):
        return False
    budget = ex.route.budget
    return budget is None or budget.try_spend(trio.current_time())


def _replayable_body(ex: _Exchange) -> bool:
    return ex.body is None or ex.body.replayable


async def _tried(ex: _Exchange, conn: UpstreamConnection, pool: UpstreamPool) -> bool | Tunnel:
    """One attempt under its own per-try deadline (`per_try_timeout`)."""
    per_try = ex.route.policy.per_try_timeout
    if per_try is None:
        return await _attempt(ex, conn, pool)
    ex.try_deadline = trio.current_time() + per_try
    with trio.CancelScope(deadline=ex.try_deadline) as scope:
        ex.disarm.append(scope)
        try:
            return await _attempt(ex, conn, pool)
        finally:
            ex.disarm.remove(scope)
            ex.try_deadline = math.inf
    raise UpstreamTimeout(
        f"no response within the per-try timeout of {per_try:g}s", retry_kind="per-try-timeout"
    )


def _replayable(ex: _Exchange) -> bool:
    return ex.request.method in IDEMPOTENT_METHODS and _replayable_body(ex)


def _hedge_delay(ex: _Exchange) -> float | None:
    """Seconds before this attempt is hedged, or None: it runs alone.

    Only bodyless idempotent requests are hedged (never a WebSocket upgrade),
    and a `p95` delay waits until the service has enough latencies observed.
    """
    route = ex.route
    hedge = route.policy.hedge
    if hedge is None or route.latency is None or route.websocket:
        return None
    if not hedge.allowed(ex.request.method, ex.body is None):
        return None
    return hedge.delay_for(route.latency)


@attrs.define(slots=True, eq=False)
class _Try:
    """One attempt of a hedged request: its connection, endpoint state and per-try deadline.

    Sending and waiting are separate steps, so the wait can be interrupted (the
    hedge delay) and resumed in the race without sending twice.
    """

    candidate: Candidate
    conn: UpstreamConnection | None
    state: EndpointState | None = None
    started: float = 0.0
    deadline: float = math.inf
    reported: bool = False
    span: Span | None = None
    failure: str | None = None

    async def send(self, ex: _Exchange, pool: UpstreamPool) -> None:
        """Connect if needed, then send the bodyless request."""
        if self.conn is None:
            self.conn = await _connect(self.candidate.endpoint, ex, [])
            if self.conn is None:
                host, port = self.candidate.endpoint
                raise UpstreamConnect(f"{host}:{port} refused the connection")
        conn = self.conn
        self.state = pool.state(conn.endpoint)
        self.state.started()
        self.started = trio.current_time()
        per_try = ex.route.policy.per_try_timeout
        self.deadline = math.inf if per_try is None else self.started + per_try
        self.span = _attempt_span(ex, conn.endpoint)
        event = _request_event(ex, self.deadline, self.span)
        try:
            await _send(conn, _serialize(conn, event) + conn.h11.send(EOM))
        except (_Stale, ProxyError) as exc:
            self._failed(ex, exc)
            raise

    async def wait(self, ex: _Exchange) -> h11.Response | h11.InformationalResponse:
        """The response head, within the per-try deadline; may be cancelled and called again."""
        assert self.conn is not None and self.state is not None
        try:
            with trio.CancelScope(deadline=self.deadline):
                head = await _await_head(ex, self.conn, relay=False)
                _head_arrived(ex, self.state, self.started)
                self.reported = True
                return head
            raise UpstreamTimeout(
                f"no response within the per-try timeout of {ex.route.policy.per_try_timeout:g}s",
                retry_kind="per-try-timeout",
            )
        except (_Stale, ProxyError) as exc:
            self._failed(ex, exc)
            raise

    def _failed(self, ex: _Exchange, exc: _Stale | ProxyError) -> None:
        self.failure = "stale-connection" if isinstance(exc, _Stale) else exc.kind
        if self.state is not None and not self.reported:
            self.state.failed(trio.current_time())
            self.reported = True
        _outlier_failed(ex, self.candidate.endpoint, exc)

    async def drop(self) -> None:
        """This attempt lost or failed: close its connection, never pool it."""
        if self.span is not None:
            self.span.set_response(None, self.failure or "cancelled")
            self.span.end()
        if self.state is not None and not self.reported:
            self.state.abandoned()
            self.reported = True
        if self.conn is not None:
            await hpool.close(self.conn)


async def _hedged(
    ex: _Exchange,
    candidate: Candidate,
    conn: UpstreamConnection,
    router: Router,
    pool: UpstreamPool,
    delay: float,
    tried: list[hpool.Endpoint],
    failed: list[hpool.Endpoint],
) -> bool | Tunnel:
    """The attempt on `conn`, plus a copy to another instance every `delay` without a head.

    A head within `delay` costs one cancel scope, no tasks. Otherwise the
    attempt keeps waiting in a race with its hedges: the first head the retry
    policy would not retry wins and is committed; the others are cancelled at
    once and their connections closed. Each hedge spends from the service's
    retry budget. When every attempt fails, the first attempt's failure is
    raised, so the retry loop treats it as usual.
    """
    first = _Try(candidate, conn)
    head: h11.Response | h11.InformationalResponse | None = None
    try:
        await first.send(ex, pool)
        with trio.move_on_after(delay):
            head = await first.wait(ex)
    except BaseException:
        await first.drop()
        raise
    won = first
    if head is None:
        async with trio.open_nursery() as nursery:
            race = _Race(ex, router, pool, nursery, [candidate.endpoint], failed)
            nursery.start_soon(_racer, race, first, True)
            nursery.start_soon(_hedger, race, delay, tried)
        if race.winner is None:
            error, race.error = race.error, None
            assert error is not None
            try:
                raise error
            finally:
                del error  # no cycle: the traceback holds this frame, not the reverse
        won, head = race.winner
    ex.rec.instance = won.candidate.instance_id
    assert won.conn is not None
    outcome: bool | Tunnel | None = None
    try:
        outcome = await _committed(ex, won.conn, head)
        return outcome
    finally:
        if won.span is not None:
            _end_span(won.span, ex, outcome, won.failure)
        if not isinstance(outcome, Tunnel) and not (outcome is not None and pool.checkin(won.conn)):
            await hpool.close(won.conn)


@attrs.define(slots=True, eq=False)
class _Race:
    """A slow attempt and its hedges, in flight together: the first usable head wins."""

    ex: _Exchange
    router: Router
    pool: UpstreamPool
    nursery: trio.Nursery
    # Endpoints this race has sent to (the balancer picks hedges elsewhere).
    busy: list[hpool.Endpoint]
    failed: list[hpool.Endpoint]
    in_flight: int = 1
    winner: tuple[_Try, h11.Response | h11.InformationalResponse] | None = None
    # Raised when no attempt wins: the first attempt's failure, else a hedge's.
    error: _Stale | ProxyError | None = None

    def offer(self, attempt: _Try, head: h11.Response | h11.InformationalResponse) -> bool:
        """A head arrived: True if it wins (everything else in the race is cancelled)."""
        if self.winner is not None:
            return False
        retry = self.ex.route.policy.retry
        retryable = isinstance(head, h11.Response) and retry.retryable_status(head.status_code)
        if retryable and self.in_flight > 1:
            # Envoy's rule: a response the policy would retry is dropped while
            # another attempt may still answer.
            self.in_flight -= 1
            return False
        self.winner = (attempt, head)
        self.nursery.cancel_scope.cancel()
        return True

    def lost(self, exc: _Stale | ProxyError, endpoint: hpool.Endpoint, first: bool) -> None:
        self.in_flight -= 1
        if first or self.error is None:
            self.error = exc
        if not first:
            self.failed.append(endpoint)
        if self.in_flight == 0:
            self.nursery.cancel_scope.cancel()  # nothing left to wait for


async def _hedger(race: _Race, delay: float, tried: list[hpool.Endpoint]) -> None:
    """Every `delay` without a winner, send a copy to an instance not yet asked."""
    ex = race.ex
    hedge = ex.route.policy.hedge
    assert hedge is not None
    for i in range(hedge.max_hedges):
        if i:
            await trio.sleep(delay)  # the first hedge's delay already passed
        candidate = race.router.pick(ex.route, [*tried, *race.failed, *race.busy])
        if candidate is None:
            return  # no other instance: Envoy would hedge to the same one; we do not
        budget = ex.route.budget
        if budget is not None and not budget.try_spend(trio.current_time()):
            return
        race.busy.append(candidate.endpoint)
        race.in_flight += 1
        ex.rec.hedges += 1
        attempt = _Try(candidate, race.pool.checkout(candidate.endpoint))
        race.nursery.start_soon(_racer, race, attempt, False)


async def _racer(race: _Race, attempt: _Try, first: bool) -> None:
    """One attempt of a race, up to its response head; a loser's connection is closed."""
    won = False
    try:
        if attempt.state is None:
            await attempt.send(race.ex, race.pool)
        head = await attempt.wait(race.ex)
        won = race.offer(attempt, head)
    except (_Stale, ProxyError) as exc:
        race.lost(exc, attempt.candidate.endpoint, first)
    finally:
        if not won:
            await attempt.drop()


async def _connect(
    endpoint: hpool.Endpoint, ex: _Exchange, tried: list[hpool.Endpoint]
) -> UpstreamConnection | None:
    """A new connection, or None when it was refused (the caller picks again)."""
    where = f"{endpoint[0]}:{endpoint[1]}"
    policy = ex.policy
    timeout = ex.route.policy.connect_timeout or policy.connect_timeout
    try:
        with trio.fail_after(timeout):
            return await hpool.connect(endpoint, policy.max_response_head)
    except trio.TooSlowError:
        raise UpstreamConnect(f"connect to {where} timed out") from None
    except OSError as exc:
        if hs.refused(exc):
            tried.append(endpoint)
            return None
        raise UpstreamConnect(f"{where}: {exc.strerror or exc}") from exc


async def _attempt(ex: _Exchange, conn: UpstreamConnection, pool: UpstreamPool) -> bool | Tunnel:
    """One attempt on `conn`, committed if its head arrives. Closes `conn` unless pooled."""
    state = pool.state(conn.endpoint)
    state.started()
    started = trio.current_time()
    outcome: bool | Tunnel | None = None
    reported = False
    span = _attempt_span(ex, conn.endpoint)
    failure: str | None = None
    try:
        event = _request_event(ex, ex.try_deadline, span)
        if ex.body is None:
            await _send(conn, _serialize(conn, event) + conn.h11.send(EOM))
            head = await _await_head(ex, conn)
            _head_arrived(ex, state, started)
            reported = True
            outcome = await _committed(ex, conn, head)
        else:
            outcome = await _with_body(ex, conn, event, state, started)
            reported = True
        return outcome
    except (_Stale, ProxyError) as exc:
        if not reported:
            state.failed(trio.current_time())
            reported = True
        _outlier_failed(ex, conn.endpoint, exc)
        failure = "stale-connection" if isinstance(exc, _Stale) else exc.kind
        raise
    except _Retry as exc:
        failure = f"retried-{exc.status}"
        raise
    finally:
        if span is not None:
            _end_span(span, ex, outcome, failure)
        if not reported:
            state.abandoned()
        if not isinstance(outcome, Tunnel) and not (outcome is not None and pool.checkin(conn)):
            await hpool.close(conn)


def _headers(
    ex: _Exchange, try_deadline: float, span: Span | None = None
) -> list[tuple[bytes, bytes]]:
    """The route's headers, plus the budget left (`x-trimesh-deadline-ms`) if there is one,
    plus this attempt's trace context."""
    end = min(ex.deadline, try_deadline)
    headers = ex.route.headers
    if end != math.inf:
        left = pdeadline.format(end - trio.current_time())
        headers = [*headers, (pdeadline.HEADER, left)]
    context = span.context if span is not None else None
    if context is None and ex.route.span is not None:
        context = ex.route.span.context  # the first attempt is the request's own span
    if context is not None:
        headers = [*headers, *inject(context)]
    return headers


def _request_event(ex: _Exchange, try_deadline: float, span: Span | None) -> h11.Request:
    """The request head one attempt sends (its deadline and trace headers are its own)."""
    return h11.Request(
        method=ex.request.method,
        target=ex.route.target,
        headers=_headers(ex, try_deadline, span),
        _parsed=True,
    )


def _head_arrived(ex: _Exchange, state: EndpointState, started: float) -> None:
    """A bodyless attempt's head came: the endpoint's latency, and the service's for hedging."""
    now = trio.current_time()
    state.succeeded(now - started, now)
    if ex.route.latency is not None:
        ex.route.latency.observe(now - started)


def _attempt_span(ex: _Exchange, endpoint: hpool.Endpoint) -> Span | None:
    """A child client span for each attempt after the first (retries, hedges).

    A request answered by its first attempt is one span (the request's, a client
    span): half the spans to record and export for the common case.
    """
    ex.attempts += 1
    tracer, parent = ex.route.tracer, ex.route.span
    if tracer is None or parent is None or ex.attempts == 1:
        return None
    span = tracer.start(ex.rec.method, "client", parent.context)
    path = ex.rec.path.partition("?")[0]
    span.set_request(ex.rec.method, path, endpoint[0], endpoint[1], ex.route.service)
    return span


def _end_span(
    span: Span, ex: _Exchange, outcome: bool | Tunnel | None, failure: str | None
) -> None:
    """An attempt ended: committed (the response's status), failed, or cancelled."""
    if outcome is not None:
        span.set_response(ex.rec.status, None)
    else:
        span.set_response(None, failure or "cancelled")
    span.end()


async def _with_body(
    ex: _Exchange,
    conn: UpstreamConnection,
    event: h11.Request,
    state: EndpointState,
    started: float,
) -> bool | Tunnel:
    """Body pump ‖ head wait and relay; the pump's failure wins over the relay's."""
    ex.pump_error = None
    ex.body_sent = False  # a replay sends the body again before the head deadline starts
    assert ex.body is not None
    ex.body.rewind()  # every attempt sends from the first event; retries checked replayability
    await _send(conn, _serialize(conn, event))
    outcome: bool | Tunnel = False
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, ex, conn, nursery.cancel_scope)
        try:
            head = await _await_head(ex, conn)
            now = trio.current_time()
            state.succeeded(now - started, now)
            outcome = await _committed(ex, conn, head)
        except (_Stale, ProxyError, DownstreamGone) as exc:
            failure = exc  # raised below: a nursery would wrap it in a group
        # An early response ends the exchange; an unfinished body forbids reuse.
        nursery.cancel_scope.cancel()
    if ex.pump_error is not None:
        raise ex.pump_error
    if failure is not None:
        raise failure
    assert ex.body is not None
    if outcome is True and not ex.body.done:
        return False
    return outcome


async def _pump(ex: _Exchange, conn: UpstreamConnection, scope: trio.CancelScope) -> None:
    """Move request body events (replayed first, then live) to the upstream."""
    body = ex.body
    assert body is not None
    try:
        while True:
            event = await body.next()
            with trio.move_on_after(ex.policy.body_idle_timeout) as stuck:
                try:
                    await conn.stream.send_all(conn.h11.send(event))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.h11.send_failed()
                    return  # the head wait sees the upstream's answer, its reset or EOF
            if stuck.cancelled_caught:
                conn.h11.send_failed()
                raise UpstreamTimeout("upstream stopped reading the request body")
            if isinstance(event, h11.EndOfMessage):
                ex.body_sent = True
                _start_timeout(ex)
                if ex.head_wait is not None:
                    ex.head_wait.deadline = trio.current_time() + ex.policy.response_timeout
                return
    except (ProxyError, DownstreamGone) as exc:
        ex.pump_error = exc
        scope.cancel()


def _serialize(conn: UpstreamConnection, event: h11.Request) -> bytes:
    """The request head; what h11 refuses to write is the client's request's fault."""
    try:
        return conn.h11.send(event)
    except h11.LocalProtocolError as exc:
        raise BadRequest(f"cannot forward this request: {exc}") from exc


async def _client_eom(down: Downstream) -> None:
    event = await down.next_event()
    if not isinstance(event, h11.EndOfMessage):
        raise BadRequest(f"unexpected client event {event!r}")


async def _send(conn: UpstreamConnection, data: bytes) -> None:
    """Write to the upstream; a reused connection that fails here is `_Stale`."""
    conn.requests += 1
    try:
        await conn.stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        conn.h11.send_failed()
        if conn.reused:
            raise _Stale() from exc
        raise UpstreamProtocol("upstream closed the connection while we sent the request") from exc


async def _await_head(
    ex: _Exchange, conn: UpstreamConnection, *, relay: bool = True
) -> h11.Response | h11.InformationalResponse:
    """The final response head; 1xx are relayed on the way (dropped if not `relay`).

    Nothing final is written.
    """
    while True:
        event = await _head_event(ex, conn)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise UpstreamProtocol(f"unexpected response event {event!r}")
        if event.status_code == 101:
            return event  # a switch: `_committed` handles it
        if relay and ex.down.h11.their_http_version == b"1.1":
            informational, _, _ = response_event(event, ex.policy, close=False)
            await ex.down.send(ex.down.h11.send(informational))


async def _head_event(ex: _Exchange, conn: UpstreamConnection) -> h11.Event:
    """The next head event within `response_timeout` of the request being sent."""
    with trio.CancelScope() as scope:
        scope.deadline = (
            trio.current_time() + ex.policy.response_timeout if ex.body_sent else math.inf
        )
        ex.head_wait = scope
        try:
            return await _first_event(conn)
        finally:
            ex.head_wait = None
    raise UpstreamTimeout(
        f"no response within {ex.policy.response_timeout:g}s", retry_kind="per-try-timeout"
    )


async def _first_event(conn: UpstreamConnection) -> h11.Event:
    """Parse or read the next event; `_Stale` if a reused connection ends before a byte."""
    fed = len(conn.h11.trailing_data[0])
    while True:
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if conn.h11.trailing_data == (b"", True):
                raise _closed_early(conn) from exc  # EOF where a response should start
            raise _malformed(exc, conn) from exc
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.ConnectionClosed):
                raise _closed_early(conn)
            # h11 bounds only heads still incomplete; one that arrived whole is measured here.
            if fed - len(conn.h11.trailing_data[0]) > conn.max_head:
                raise UpstreamProtocol(f"response head too large (over {conn.max_head} bytes)")
            return event  # type: ignore[return-value]
        try:
            data = await conn.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _closed_early(conn, reset=True) from exc
        fed += len(data)
        conn.h11.receive_data(data)


def _closed_early(conn: UpstreamConnection, *, reset: bool = False) -> Exception:
    if conn.reused and not conn.h11.trailing_data[0]:
        return _Stale()
    what = "reset" if reset else "closed"
    return UpstreamProtocol(f"upstream {what} the connection before responding", retry_kind="reset")


def _malformed(exc: h11.RemoteProtocolError, conn: UpstreamConnection) -> UpstreamProtocol:
    if exc.error_status_hint == 431:
        return UpstreamProtocol(f"response head too large (over {conn.max_head} bytes)")
    return UpstreamProtocol(f"malformed response: {exc}")


async def _committed(
    ex: _Exchange, conn: UpstreamConnection, head: h11.Response | h11.InformationalResponse
) -> bool | Tunnel:
    guards = ex.route.guards
    if guards is not None and isinstance(head, h11.Response):
        # Outlier detection counts the breaker's failure statuses per instance.
        if guards.breaker.is_failure_status(head.status_code):
            guards.outlier.failed(conn.endpoint, trio.current_time(), len(ex.route.candidates))
        else:
            guards.outlier.succeeded(conn.endpoint, trio.current_time())
    if isinstance(head, h11.Response) and _may_retry(ex, None, head.status_code):
        raise _Retry(head.status_code)
    ex.committed = True
    for scope in ex.disarm:
        scope.deadline = math.inf  # the policy deadlines end where the response begins
    if isinstance(head, h11.InformationalResponse):
        return await _switch(ex, conn, head)
    ex.rec.upstream = f"{conn.endpoint[0]}:{conn.endpoint[1]}"
    return await commit(
        ex.down, conn, head, ex.policy, ex.rec, lambda: ex.body_sent, _sticky(ex, conn.endpoint)
    )


def _sticky(ex: _Exchange, endpoint: hpool.Endpoint) -> list[tuple[bytes, bytes]]:
    """Session stickiness: name the endpoint in a cookie unless the request's already did."""
    name = ex.route.sticky_cookie
    if name is None or ex.route.sticky == endpoint:
        return []
    value = cookie_value(endpoint).encode()
    return [(b"set-cookie", b"%s=%s; Path=/; HttpOnly" % (name, value))]


async def _switch(
    ex: _Exchange, conn: UpstreamConnection, event: h11.InformationalResponse
) -> Tunnel:
    """The upstream accepted a WebSocket upgrade: validate, answer 101, hand over a tunnel."""
    request_headers = ex.route.headers
    if not ex.route.websocket or not valid_websocket_switch(request_headers, list(event.headers)):
        raise UpstreamProtocol("invalid 101 Switching Protocols for websocket")
    switch = switch_event(event, ex.policy)
    ex.rec.status = 101
    ex.rec.upstream = f"{conn.endpoint[0]}:{conn.endpoint[1]}"
    await ex.down.send(ex.down.h11.send(switch))
    prefix, _ = conn.h11.trailing_data
    return Tunnel(conn.stream, bytes(prefix))
