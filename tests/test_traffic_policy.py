"""Traffic management through real sidecars and apps: route rules, balancers, retries,
budgets, per-try timeouts and deadlines propagated across sidecars.

Every test drives real loopback sockets; time-based ones run on the autojump clock.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

import httpx
import trio
import trio.testing

from tests.rawserver import RawConn, RawUpstream
from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from trimesh.observe.accesslog import AccessLog
from trimesh.policy import deadline as pdeadline
from trimesh.sidecar import Bound, Sidecar


def named(name: str, status: int = 200) -> Any:
    """An app answering `status` with its own name as the body."""

    async def respond(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return status, [(b"x-instance", name.encode())], name.encode()

    return respond


async def app(nursery: trio.Nursery, name: str, status: int = 200) -> Upstream:
    up = Upstream(named(name, status))
    await nursery.start(up.serve)
    return up


def instance(up: Upstream | RawUpstream, version: str = "1.0", **tags: str) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{up.port}", "version": version, "tags": tags}


async def consumer(
    nursery: trio.Nursery,
    instances: list[dict[str, Any]],
    access_log: AccessLog | None = None,
    **extra: Any,
) -> tuple[Sidecar, Bound]:
    raw = sidecar_config(
        service={"name": "web", "version": "3.0"},
        registry={"services": {"orders": instances}},
        **extra,
    )
    return await start_sidecar(nursery, raw, access_log)


def client(bound: Bound, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(proxy=f"http://127.0.0.1:{bound.outbound[1]}", timeout=10, **kw)


async def bodies(http: httpx.AsyncClient, n: int, **kw: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        reply = await http.get("http://orders/api", **kw)
        seen[reply.text] += 1
    return seen


# --- route rules ---------------------------------------------------------------------


async def test_header_canary_sends_vip_to_v2_and_the_rest_to_v1(nursery: trio.Nursery) -> None:
    v1, v2 = await app(nursery, "v1"), await app(nursery, "v2")
    rules = {
        "orders": [
            {
                "precedence": 2,
                "match": {"headers": {"x-user": {"exact": "vip"}}},
                "route": [{"tags": {"version": "2.0"}, "weight": 100}],
            },
            {"precedence": 1, "route": [{"tags": {"version": "1.0"}, "weight": 100}]},
        ]
    }
    _, bound = await consumer(nursery, [instance(v1, "1.0"), instance(v2, "2.0")], routes=rules)
    async with client(bound) as http:
        assert await bodies(http, 20, headers={"x-user": "vip"}) == {"v2": 20}
        assert await bodies(http, 20, headers={"x-user": "someone"}) == {"v1": 20}
        assert await bodies(http, 20) == {"v1": 20}


async def test_weighted_canary_is_exact_over_whole_cycles(nursery: trio.Nursery) -> None:
    v1, v2 = await app(nursery, "v1"), await app(nursery, "v2")
    rules = {
        "orders": [
            {
                "precedence": 1,
                "route": [
                    {"tags": {"version": "1.0"}, "weight": 90},
                    {"tags": {"version": "2.0"}, "weight": 10},
                ],
            }
        ]
    }
    _, bound = await consumer(nursery, [instance(v1, "1.0"), instance(v2, "2.0")], routes=rules)
    async with client(bound) as http:
        assert await bodies(http, 300) == {"v1": 270, "v2": 30}


async def test_weights_under_100_send_the_rest_to_the_latest_version(
    nursery: trio.Nursery,
) -> None:
    v1, v2 = await app(nursery, "v1"), await app(nursery, "v2")
    rules = {"orders": [{"precedence": 1, "route": [{"tags": {"version": "1.0"}, "weight": 50}]}]}
    _, bound = await consumer(nursery, [instance(v1, "1.0"), instance(v2, "2.0")], routes=rules)
    async with client(bound) as http:
        assert await bodies(http, 100) == {"v1": 50, "v2": 50}


async def test_default_version_latest_sends_only_to_the_highest(nursery: trio.Nursery) -> None:
    old, new = await app(nursery, "1.9.0"), await app(nursery, "1.10.0")
    _, bound = await consumer(
        nursery,
        [instance(old, "1.9.0"), instance(new, "1.10.0")],
        policies={"services": {"orders": {"default_version": "latest"}}},
    )
    async with client(bound) as http:
        assert await bodies(http, 10) == {"1.10.0": 10}


async def test_admin_shows_the_route_rules_in_force(nursery: trio.Nursery) -> None:
    v1 = await app(nursery, "v1")
    rules = {"orders": [{"precedence": 1, "route": [{"tags": {"version": "1.0"}, "weight": 100}]}]}
    _, bound = await consumer(nursery, [instance(v1)], routes=rules)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound.admin[1]}") as admin:
        found = await admin.get("/v1/mesher/routeRule/orders")
        missing = await admin.get("/v1/mesher/routeRule/payments")
    assert found.status_code == 200
    assert found.json()[0]["route"] == [{"tags": {"version": "1.0"}, "weight": 100}]
    assert missing.status_code == 404


# --- load balancing ------------------------------------------------------------------


async def test_session_sticky_keeps_a_client_on_one_instance(nursery: trio.Nursery) -> None:
    apps = [await app(nursery, f"i{i}") for i in range(3)]
    _, bound = await consumer(
        nursery,
        [instance(a) for a in apps],
        policies={"services": {"orders": {"load_balancer": {"strategy": "session_sticky"}}}},
    )
    async with client(bound) as http:
        first = await http.get("http://orders/api")
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("trimesh-sticky=") and "HttpOnly" in cookie
        name, _, value = cookie.split(";")[0].partition("=")
        again = await bodies(http, 10, headers={"cookie": f"{name}={value}"})
    assert again == {first.text: 10}
    spread = set()
    async with client(bound) as fresh:  # no cookie: round robin over all three
        for _ in range(6):
            fresh.cookies.clear()
            spread.add((await fresh.get("http://orders/api")).text)
    assert spread == {"i0", "i1", "i2"}


# --- retries -------------------------------------------------------------------------


async def test_gateway_errors_are_retried_on_another_instance(nursery: trio.Nursery) -> None:
    bad, good = await app(nursery, "bad", 503), await app(nursery, "good")
    _, bound = await consumer(
        nursery,
        [instance(bad), instance(good)],
        policies={
            "default": {"retry": {"retry_on": ["gateway-error"], "backoff": {"base": "1ms"}}}
        },
    )
    async with client(bound) as http:
        assert await bodies(http, 10) == {"good": 10}
    # Each retry is a pick too, so round robin starts every request at the bad one,
    # until outlier detection ejects it after 5 consecutive 503s.
    assert len(bad.seen) == 5


async def test_post_is_not_retried_by_default(nursery: trio.Nursery) -> None:
    bad, good = await app(nursery, "bad", 503), await app(nursery, "good")
    _, bound = await consumer(
        nursery,
        [instance(bad), instance(good)],
        policies={"default": {"retry": {"retry_on": ["gateway-error"]}}},
    )
    async with client(bound) as http:
        statuses = Counter(
            [(await http.post("http://orders/api", content=b"x")).status_code for _ in range(10)]
        )
    assert statuses == {503: 5, 200: 5}
    assert len(bad.seen) + len(good.seen) == 10  # never sent twice


async def test_a_reset_before_the_response_is_retried(nursery: trio.Nursery) -> None:
    async def hang_up(conn: RawConn) -> None:
        await conn.next_request()  # read it, answer nothing, close

    dead = RawUpstream(hang_up)
    await nursery.start(dead.serve)
    good = await app(nursery, "good")
    _, bound = await consumer(nursery, [instance(dead), instance(good)])
    async with client(bound) as http:
        assert await bodies(http, 6) == {"good": 6}


async def test_the_budget_stops_a_retry_storm(nursery: trio.Nursery) -> None:
    """A hard-failing provider gets the requests plus at most the budget's retries."""
    a, b = await app(nursery, "a", 503), await app(nursery, "b", 503)
    retry = {
        "attempts": 3,
        "retry_on": ["gateway-error"],
        "backoff": {"kind": "constant", "base": "1ms"},
        "budget": {"ratio": 0.0, "min_per_second": 1},
    }
    _, bound = await consumer(
        nursery, [instance(a), instance(b)], policies={"default": {"retry": retry}}
    )
    async with client(bound) as http:
        statuses = Counter([(await http.get("http://orders/api")).status_code for _ in range(40)])
    assert statuses == {503: 40}
    # 10 s window x 1 retry/s = 10 retries allowed, of the 120 the policy alone would make.
    assert len(a.seen) + len(b.seen) == 40 + 10


async def test_per_try_timeout_then_success_on_the_next_instance(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hung = trio.Event()

    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        hung.set()
        await trio.sleep(60)
        return 200, [], b"slow"

    stuck = Upstream(slow)
    await nursery.start(stuck.serve)
    good = await app(nursery, "good")
    policy = {"per_try_timeout": "1s", "retry": {"retry_on": ["per-try-timeout"]}}
    _, bound = await consumer(
        nursery, [instance(stuck), instance(good)], policies={"default": policy}
    )
    async with client(bound) as http:
        start = trio.current_time()
        reply = await http.get("http://orders/api")
        elapsed = trio.current_time() - start
    assert reply.text == "good"
    assert hung.is_set()
    assert 1 <= elapsed < 2  # one per-try timeout, then the other instance at once


async def test_whole_request_timeout_is_504(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(60)
        return 200, [], b"slow"

    stuck = Upstream(slow)
    await nursery.start(stuck.serve)
    _, bound = await consumer(
        nursery, [instance(stuck)], policies={"services": {"orders": {"timeout": "2s"}}}
    )
    async with client(bound) as http:
        start = trio.current_time()
        reply = await http.get("http://orders/api")
    assert reply.status_code == 504
    assert reply.headers["x-trimesh-error"] == "upstream-timeout"
    assert 2 <= trio.current_time() - start < 3


# --- deadline propagation --------------------------------------------------------------


async def test_deadline_propagates_and_cancels_the_second_app(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """client → sidecar A (timeout 3s) → sidecar B inbound → app B, which is slow."""
    got = trio.Event()
    budget: list[bytes | None] = []

    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        budget.append(seen.header(pdeadline.HEADER))
        got.set()
        await trio.sleep(60)
        return 200, [], b"late"

    app_b = Upstream(slow)
    await nursery.start(app_b.serve)
    provider = sidecar_config(service={"name": "orders"}, app={"ports": {"rest": app_b.port}})
    _, b = await start_sidecar(nursery, provider)
    _, a = await consumer(
        nursery,
        [{"address": f"127.0.0.1:{b.inbound[1]}"}],
        policies={"default": {"timeout": "3s", "retry": {"attempts": 0}}},
    )
    async with client(a) as http:
        start = trio.current_time()
        reply = await http.get("http://orders/api")
        elapsed = trio.current_time() - start
    assert reply.status_code == 504
    assert 3 <= elapsed < 4
    assert got.is_set()
    assert budget[0] is not None and 2000 < int(budget[0]) <= 3000
    with trio.fail_after(1):
        await app_b.disconnected.wait()  # B's sidecar gave up on the app at the deadline


async def test_a_spent_budget_is_answered_504_without_calling_the_app(
    nursery: trio.Nursery,
) -> None:
    app_b = await app(nursery, "b")
    _, b = await start_sidecar(
        nursery, sidecar_config(service={"name": "orders"}, app={"ports": {"rest": app_b.port}})
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{b.inbound[1]}") as http:
        spent = await http.get("/api", headers={"x-trimesh-deadline-ms": "0"})
        fine = await http.get("/api", headers={"x-trimesh-deadline-ms": "5000"})
    assert spent.status_code == 504 and spent.headers["x-trimesh-error"] == "upstream-timeout"
    assert fine.status_code == 200
    assert len(app_b.seen) == 1
    forwarded = app_b.seen[0].header(pdeadline.HEADER)
    assert forwarded is not None and 0 < int(forwarded) <= 5000


# --- hedging ---------------------------------------------------------------------------


def after(seconds: float, name: str, status: int = 200) -> Any:
    """An app answering `status` with its name after `seconds`."""

    async def respond(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(seconds)
        return status, [], name.encode()

    return respond


async def slow_app(nursery: trio.Nursery, seconds: float, name: str, status: int = 200) -> Upstream:
    up = Upstream(after(seconds, name, status))
    await nursery.start(up.serve)
    return up


async def test_a_hedge_wins_against_a_slow_instance_and_the_loser_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    slow = await slow_app(nursery, 60, "slow")
    fast = await app(nursery, "fast")
    sink = io.StringIO()
    log = AccessLog(sink)
    _, bound = await consumer(
        nursery,
        [instance(slow), instance(fast)],
        log,
        policies={"services": {"orders": {"hedge": {"delay": "100ms"}}}},
    )
    async with client(bound) as http:
        for _ in range(2):  # round robin: one of the two starts on the slow instance
            start = trio.current_time()
            reply = await http.get("http://orders/api")
            assert reply.text == "fast"
            assert trio.current_time() - start < 0.2
    # Each hedge's pick moves round robin on, so both requests started on the slow one.
    assert len(slow.seen) == 2 and len(fast.seen) == 2
    with trio.fail_after(1):
        await slow.wait_disconnects(2)  # each losing attempt's connection was closed
    log.flush()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(e["hedges"], e["upstream"]) for e in lines] == [(1, f"127.0.0.1:{fast.port}")] * 2


async def test_a_first_attempt_that_fails_before_the_delay_is_retried_as_usual(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def hang_up(conn: RawConn) -> None:
        await conn.next_request()

    dead = RawUpstream(hang_up)
    await nursery.start(dead.serve)
    good = await app(nursery, "good")
    _, bound = await consumer(
        nursery, [instance(dead), instance(good)], policies={"default": {"hedge": "1s"}}
    )
    async with client(bound) as http:
        start = trio.current_time()
        assert await bodies(http, 4) == {"good": 4}
    assert trio.current_time() - start < 0.5  # retried on the reset, not hedged after 1 s
    assert len(good.seen) == 4


async def test_p95_hedging_starts_once_latency_is_known(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    stall = {"seconds": 0.0}

    async def sometimes_slow(
        seen: Seen, up: Upstream
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(stall["seconds"])
        return 200, [], b"moody"

    moody = Upstream(sometimes_slow)
    await nursery.start(moody.serve)
    steady = await app(nursery, "steady")
    _, bound = await consumer(
        nursery,
        [instance(moody), instance(steady)],
        policies={"default": {"hedge": "p95", "timeout": "5s"}},
    )
    async with client(bound) as http:
        assert await bodies(http, 40) == {"moody": 20, "steady": 20}  # p95 learnt: ~0
        stall["seconds"] = 60
        start = trio.current_time()
        assert await bodies(http, 4) == {"steady": 4}
    # Each request on the moody instance was hedged after the 5 ms floor.
    assert trio.current_time() - start < 0.1


async def test_hedges_spend_the_retry_budget(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    apps = [await slow_app(nursery, 60, name) for name in "abc"]
    policy = {
        "timeout": "1s",
        "retry": {"attempts": 0, "budget": {"ratio": 0.0, "min_per_second": 0.2}},
        "hedge": {"delay": "100ms", "max_hedges": 2},
    }
    _, bound = await consumer(nursery, [instance(up) for up in apps], policies={"default": policy})
    async with client(bound) as http:
        statuses = Counter([(await http.get("http://orders/api")).status_code for _ in range(5)])
    assert statuses == {504: 5}
    # 10 s window x 0.2/s = 2 hedges, of the 10 the policy alone would send.
    assert sum(len(up.seen) for up in apps) == 5 + 2


async def test_a_post_is_never_hedged(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    slow = await slow_app(nursery, 2, "slow")
    fast = await app(nursery, "fast")
    _, bound = await consumer(
        nursery,
        [instance(slow), instance(fast)],
        policies={"default": {"hedge": "100ms"}, "services": {"orders": {"timeout": "10s"}}},
    )
    async with client(bound) as http:
        replies = [await http.post("http://orders/api") for _ in range(2)]
    assert sorted(r.text for r in replies) == ["fast", "slow"]
    assert len(slow.seen) == 1 and len(fast.seen) == 1


async def test_a_retryable_answer_is_dropped_while_a_hedge_may_still_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Primary answers 503 at 200 ms; the hedge (sent at 100 ms) answers 200 at 300 ms."""
    failing = await slow_app(nursery, 0.2, "failing", 503)
    good = await slow_app(nursery, 0.2, "good")
    policy = {"hedge": "100ms", "retry": {"retry_on": ["gateway-error"]}}
    _, bound = await consumer(
        nursery,
        [instance(failing), instance(good)],
        policies={"default": policy},
    )
    async with client(bound) as http:
        start = trio.current_time()
        first = await http.get("http://orders/api")
        elapsed = trio.current_time() - start
    assert first.status_code == 200 and first.text == "good"
    assert len(failing.seen) == 1 and len(good.seen) == 1  # no retry after the 503
    assert 0.3 <= elapsed < 0.35


async def three_sidecars(
    nursery: trio.Nursery,
    app_c: Upstream,
    pass_on: tuple[bytes, ...],
    *,
    before_b: tuple[str, ...] = (),
    a: dict[str, Any] | None = None,
    **every: Any,
) -> tuple[Bound, Upstream]:
    """client → A → B → app B → B → C → `app_c`; returns A's listeners and app B.

    App B calls `http://c/hop` through its own sidecar, passing on the `pass_on`
    headers it received (what an instrumented app does). A's registry lists
    `before_b` ahead of B; `a` adds sections to A's config, `every` to all three.
    """
    _, c = await start_sidecar(
        nursery,
        sidecar_config(service={"name": "c"}, app={"ports": {"rest": app_c.port}}, **every),
    )
    b_out: list[Bound] = []

    async def relay(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = {n.decode(): v.decode() for n in pass_on if (v := seen.header(n)) is not None}
        proxy = f"http://127.0.0.1:{b_out[0].outbound[1]}"
        async with httpx.AsyncClient(proxy=proxy, timeout=100) as http:
            reply = await http.get("http://c/hop", headers=headers)
        return reply.status_code, [], reply.content

    app_b = Upstream(relay)
    await nursery.start(app_b.serve)
    _, b = await start_sidecar(
        nursery,
        sidecar_config(
            service={"name": "b"},
            app={"ports": {"rest": app_b.port}},
            registry={"services": {"c": [f"127.0.0.1:{c.inbound[1]}"]}},
            **every,
        ),
    )
    b_out.append(b)
    _, first = await start_sidecar(
        nursery,
        sidecar_config(
            service={"name": "a"},
            registry={"services": {"b": [*before_b, f"127.0.0.1:{b.inbound[1]}"]}},
            **every,
            **(a or {}),
        ),
    )
    return first, app_b


async def test_a_deadline_holds_across_three_sidecars(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """client → A (timeout 3s) → B → app B → B → C → app C (slow): all stop at A's deadline."""
    got = trio.Event()

    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        got.set()
        await trio.sleep(60)
        return 200, [], b"late"

    app_c = Upstream(slow)
    await nursery.start(app_c.serve)
    policy = {"default": {"timeout": "3s", "retry": {"attempts": 0}}}
    a, app_b = await three_sidecars(nursery, app_c, (pdeadline.HEADER,), a={"policies": policy})
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{a.outbound[1]}", timeout=100) as http:
        start = trio.current_time()
        reply = await http.get("http://b/start")
        elapsed = trio.current_time() - start
    assert reply.status_code == 504 and 3 <= elapsed < 3.5
    assert got.is_set()
    # app B saw at most 3 s left; app C at most what app B had (never the default 30 s).
    budgets = [int(up.seen[0].header(pdeadline.HEADER) or b"-1") for up in (app_b, app_c)]
    assert len(app_b.seen) == len(app_c.seen) == 1 and 0 < budgets[1] <= budgets[0] <= 3000
    with trio.fail_after(1):
        await app_c.disconnected.wait()  # C's sidecar gave up on its app at the deadline
