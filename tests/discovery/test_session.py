"""Tests of the registry session (`trimesh.discovery.session.Discovery`).

Timing tests use an in-memory registry on trio's clock with
`MockClock(autojump_threshold=0)`: heartbeats and backoff over minutes of
virtual time take milliseconds. `LocalRegistry` runs its SQLite calls in
worker threads, during which autojump would leap the clock to the next
deadline (the hang guard included), so tests on the real backend use the
real clock, short intervals, and wait on cache updates, never on sleeps.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trimesh.config import load
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    Registration,
    RegistryUnavailable,
    ServiceKey,
    Status,
)
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.factory import build_registry, registration_for
from trimesh.discovery.local import LocalRegistry
from trimesh.discovery.session import MISS_TTL, Backoff, Discovery

ME = Registration("me", "127.0.0.1", 30103, heartbeat_interval=10.0, lease_ttl=30.0)
ORDERS = ServiceKey("orders")
ORDERS_1 = Instance("orders", "orders-1", "10.0.0.1", 8080)
ORDERS_2 = Instance("orders", "orders-2", "10.0.0.2", 8080)


class FakeRegistry:
    """An in-memory `Registry` on trio time with switchable outages (no threads).

    Records every call as (operation, trio time it started), failed and hung ones included.
    """

    def __init__(self) -> None:
        self.rows: dict[str, Instance] = {}
        self.expires: dict[str, float] = {}
        self.ttls: dict[str, float] = {}
        self.calls: list[tuple[str, float]] = []
        self.watch_starts: Counter[str] = Counter()
        self.down = False
        self.latency = 0.0
        self.watch_error: Exception | None = None
        self._ids = 0
        self._changed = trio.Event()

    def set_down(self, down: bool) -> None:
        self.down = down
        self._notify()

    def add(self, instance: Instance) -> None:
        """Put an instance in directly (another sidecar), outage or not."""
        self.rows[instance.instance_id] = instance
        self.expires[instance.instance_id] = math.inf
        self._notify()

    def expire(self, instance_id: str) -> None:
        self.expires[instance_id] = -math.inf

    def remove(self, instance_id: str) -> None:
        del self.rows[instance_id]
        self._notify()

    def snapshot(self, key: ServiceKey) -> tuple[Instance, ...]:
        """The live instances of `key`, by id."""
        now = trio.current_time()
        found = (
            i
            for i in self.rows.values()
            if (i.app, i.service) == (key.app, key.name) and self.expires[i.instance_id] > now
        )
        return tuple(sorted(found, key=lambda i: i.instance_id))

    def ops(self, since: float = -math.inf) -> list[tuple[str, float]]:
        return [(op, t - since) for op, t in self.calls if t >= since]

    async def register(self, me: Registration) -> str:
        await self._enter("register")
        self._ids += 1
        instance_id = f"{me.service}-{self._ids}"
        self.rows = {k: i for k, i in self.rows.items() if i.address != (me.host, me.port)}
        self.rows[instance_id] = Instance(
            me.service, instance_id, me.host, me.port, app=me.app, version=me.version
        )
        self.ttls[instance_id] = me.lease_ttl
        self.expires[instance_id] = trio.current_time() + me.lease_ttl
        self._notify()
        return instance_id

    async def heartbeat(self, instance_id: str) -> None:
        await self._enter("heartbeat")
        self._live(instance_id)
        self.expires[instance_id] = trio.current_time() + self.ttls[instance_id]

    async def set_status(self, instance_id: str, status: Status) -> None:
        await self._enter(f"set_status {status}")
        self._live(instance_id)
        self.rows[instance_id] = attrs.evolve(self.rows[instance_id], status=status)
        self._notify()

    async def deregister(self, instance_id: str) -> None:
        await self._enter("deregister")
        if self.rows.pop(instance_id, None) is not None:
            self._notify()

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        await self._enter("instances")
        return self.snapshot(key)

    async def watch(self, key: ServiceKey, on_change: Callable[[Sequence[Instance]], None]) -> None:
        self.watch_starts[key.name] += 1
        await self._enter(f"watch {key.name}")
        if self.watch_error is not None:
            raise self.watch_error
        shown: tuple[Instance, ...] | None = None
        while True:
            fresh = self.snapshot(key)
            if fresh != shown:
                on_change(fresh)
                shown = fresh
            await self._changed.wait()
            if self.down:
                raise RegistryUnavailable("watch stream broken")

    async def aclose(self) -> None:
        return None

    async def _enter(self, op: str) -> None:
        self.calls.append((op, trio.current_time()))
        await trio.sleep(self.latency)
        if self.down:
            raise RegistryUnavailable(f"{op}: fake registry is down")

    def _live(self, instance_id: str) -> None:
        if self.expires.get(instance_id, -math.inf) <= trio.current_time():
            raise LeaseExpired(f"{instance_id} is gone")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class CountingLocal(LocalRegistry):
    """A `LocalRegistry` that lets a test wait for its n-th registration."""

    def __init__(self, path: Path, *, poll_interval: float) -> None:
        super().__init__(path, poll_interval=poll_interval)
        self.registered_ids: list[str] = []
        self._changed = trio.Event()

    async def register(self, me: Registration) -> str:
        instance_id = await super().register(me)
        self.registered_ids.append(instance_id)
        self._changed.set()
        self._changed = trio.Event()
        return instance_id

    async def registration(self, n: int) -> str:
        while len(self.registered_ids) < n:
            await self._changed.wait()
        return self.registered_ids[n - 1]


class ObservedCache(InstanceCache):
    """An `InstanceCache` a test can wait on: `wait_for` returns once `predicate` holds."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def update(self, service: str, instances: Iterable[Instance]) -> None:
        super().update(service, instances)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[InstanceCache], object]) -> None:
        while not predicate(self):
            await self._changed.wait()


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


async def start(nursery: trio.Nursery, discovery: Discovery) -> float:
    """Start `discovery`, let its first registry calls settle; return the start time."""
    await nursery.start(discovery.run)
    t0 = trio.current_time()
    await trio.testing.wait_all_tasks_blocked()
    return t0


def within_backoff(delays: list[float], initial: float = 0.2, cap: float = 10.0) -> None:
    for k, delay in enumerate(delays):
        base = min(cap, initial * 2**k)
        assert base / 2 <= delay <= base, (k, delay, delays)


# --- Backoff ---------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff()
    within_backoff([backoff.delay() for _ in range(12)])
    backoff.reset()
    assert 0.1 <= backoff.delay() <= 0.2


# --- our registration ------------------------------------------------------------


async def test_registers_at_once_then_heartbeats_every_interval(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        await trio.sleep(35)
        assert fake.ops(t0) == [
            ("register", 0),
            ("heartbeat", 10),
            ("heartbeat", 20),
            ("heartbeat", 30),
        ]
        assert discovery.registered
        assert [i.instance_id for i in fake.snapshot(ServiceKey("me"))] == [discovery.instance_id]
        nursery.cancel_scope.cancel()


async def test_start_never_waits_for_the_registry(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeRegistry()
    fake.latency = math.inf  # every call hangs
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        before = trio.current_time()
        await nursery.start(discovery.run)
        assert trio.current_time() == before
        discovery.ensure_watched("orders")
        assert not discovery.registered
        nursery.cancel_scope.cancel()


async def test_lease_expired_registers_again_at_once(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        first = discovery.instance_id
        assert first is not None
        fake.expire(first)
        await trio.sleep(15)
        assert fake.ops(t0) == [("register", 0), ("heartbeat", 10), ("register", 10)]
        assert discovery.registered
        assert discovery.instance_id not in (None, first)
        nursery.cancel_scope.cancel()


async def test_a_hung_heartbeat_times_out_is_reported_and_registration_recovers(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default", call_timeout=5.0)
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        first = discovery.instance_id
        fake.latency = math.inf  # accepts every call, answers none
        await trio.sleep_until(t0 + 14.9)
        assert discovery.last_error is None  # the heartbeat at 10 s is still in its deadline
        await trio.sleep_until(t0 + 15.1)
        assert discovery.last_error == "keep registered: heartbeat: no answer within 5 s"
        state = discovery.state()["registration"]
        assert (state["registered"], state["lease_current"]) == (True, True)

        # A whole lease without a successful heartbeat: the registry may have
        # dropped us, so we stop heartbeating and register instead.
        await trio.sleep_until(t0 + 45)
        state = discovery.state()["registration"]
        assert (state["registered"], state["lease_current"]) == (False, False)
        assert "no answer within" in state["last_error"]
        after_lapse = [op for op, t in fake.ops(t0) if t > 31]
        assert after_lapse and set(after_lapse) == {"register"}

        fake.latency = 0.0  # the registry heals
        await trio.sleep(11)  # at most one capped backoff
        assert discovery.registered and discovery.lease_current
        assert discovery.instance_id not in (None, first)
        assert discovery.state()["registration"]["last_error"] is None
        assert [i.instance_id for i in fake.snapshot(ServiceKey("me"))] == [discovery.instance_id]
        nursery.cancel_scope.cancel()


async def test_heartbeat_deadline_is_at_most_a_third_of_the_lease(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    me = attrs.evolve(ME, heartbeat_interval=10.0, lease_ttl=12.0)
    discovery = Discovery(fake, InstanceCache(), me, app="default", call_timeout=5.0)
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        fake.latency = math.inf
        await trio.sleep_until(t0 + 13.9)
        assert discovery.last_error is None
        await trio.sleep_until(t0 + 14.1)  # heartbeat at 10 s + 12 / 3
        assert discovery.last_error == "keep registered: heartbeat: no answer within 4 s"
        nursery.cancel_scope.cancel()


async def test_failing_heartbeats_past_the_lease_register_again(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    # The registry fails every call without ever saying LeaseExpired.
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        fake.set_down(True)
        await trio.sleep_until(t0 + 29.9)
        assert discovery.registered
        await trio.sleep_until(t0 + 45)
        assert not discovery.registered
        ops = fake.ops(t0)
        assert {op for op, t in ops if 0 < t < 30} == {"heartbeat"}
        assert {op for op, t in ops if t >= 30} == {"register"}
        nursery.cancel_scope.cancel()


async def test_every_other_registry_call_has_the_call_deadline(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default", call_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        fake.latency = math.inf
        before = trio.current_time()
        with pytest.raises(RegistryUnavailable, match=r"^no answer within 2 s$"):
            await discovery.resolve("orders")
        await discovery.set_status("DOWN")
        assert discovery.last_error == "set status DOWN: no answer within 2 s"
        discovery.ensure_watched("orders")
        await trio.sleep(2.5)
        error = discovery.state()["services"]["orders"]["watch_error"]
        assert error == "no first answer within 2 s"
        await discovery.deregister()
        assert discovery.last_error == "deregister: no answer within 2 s"
        assert trio.current_time() - before == pytest.approx(2 + 2 + 2.5 + 2)
        assert fake.watch_starts["orders"] >= 2  # restarted after a backoff
        nursery.cancel_scope.cancel()


async def test_outage_backs_off_keeps_serving_then_recovers_and_rewatches(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.add(ORDERS_1)
    cache = InstanceCache()
    discovery = Discovery(fake, cache, ME, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        discovery.ensure_watched("orders")
        await trio.sleep(1)
        assert cache.lookup("orders") == (ORDERS_1,)
        first = discovery.instance_id

        fake.set_down(True)
        outage = trio.current_time()
        await trio.sleep(120)
        # The cache keeps serving the last snapshot all through the outage.
        assert cache.lookup("orders") == (ORDERS_1,)
        assert discovery.last_error is not None and "down" in discovery.last_error
        assert discovery.state()["services"]["orders"]["watch_error"]
        # Heartbeats (from the first failure) and watch restarts back off, capped at 10 s.
        beats = [t for op, t in fake.ops(outage) if op == "heartbeat"]
        within_backoff([b - a for a, b in itertools.pairwise(beats)])
        watches = [t for op, t in fake.ops(outage) if op == "watch orders"]
        within_backoff([watches[0], *(b - a for a, b in itertools.pairwise(watches))])

        fake.add(ORDERS_2)  # changed while we could not see it
        fake.set_down(False)
        await trio.sleep(11)
        # The lease ran out during the outage: registered again, and watching again.
        assert discovery.registered
        assert discovery.instance_id not in (None, first)
        assert discovery.last_error is None
        assert cache.lookup("orders") == (ORDERS_1, ORDERS_2)
        assert discovery.state()["services"]["orders"]["watch_error"] is None
        nursery.cancel_scope.cancel()


@pytest.mark.allow_unhandled_errors
async def test_unexpected_watch_error_is_logged_and_retried(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake.watch_error = ValueError("a bug in a backend")
    discovery = Discovery(fake, InstanceCache(), None, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        with caplog.at_level(logging.ERROR, "trimesh.discovery"):
            discovery.ensure_watched("orders")
            await trio.sleep(5)
        assert fake.watch_starts["orders"] > 1
        assert "failed unexpectedly" in caplog.text
        assert "ValueError: a bug in a backend" in caplog.text
        nursery.cancel_scope.cancel()


async def test_a_closed_registry_ends_the_watcher_quietly(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.watch_error = trio.ClosedResourceError("closed by its owner")
    discovery = Discovery(fake, InstanceCache(), None, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        discovery.ensure_watched("orders")
        await trio.sleep(60)
        assert fake.watch_starts["orders"] == 1
        nursery.cancel_scope.cancel()


async def test_set_status_now_and_again_after_reregistration_and_outage(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    me_key = ServiceKey("me")
    async with trio.open_nursery() as nursery:
        t0 = await start(nursery, discovery)
        await discovery.set_status("DOWN")
        assert [i.status for i in fake.snapshot(me_key)] == ["DOWN"]

        assert discovery.instance_id is not None
        fake.expire(discovery.instance_id)
        await trio.sleep(11)  # next heartbeat: LeaseExpired → register (UP) → DOWN again
        assert [i.status for i in fake.snapshot(me_key)] == ["DOWN"]
        assert fake.ops(t0)[-3:] == [
            ("heartbeat", 10),
            ("register", 10),
            ("set_status DOWN", 10),
        ]

        fake.set_down(True)
        await discovery.set_status("UP")  # fails quietly; remembered
        assert [i.status for i in fake.snapshot(me_key)] == ["DOWN"]
        fake.set_down(False)
        await trio.sleep(11)  # applied with the next heartbeat
        assert [i.status for i in fake.snapshot(me_key)] == ["UP"]
        assert discovery.state()["registration"]["status"] == "UP"
        nursery.cancel_scope.cancel()


async def test_deregister_removes_us_and_stops_heartbeats(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        await trio.sleep(12)
        with trio.move_on_after(2):
            await discovery.deregister()
        assert not discovery.registered
        assert fake.snapshot(ServiceKey("me")) == ()
        calls = len(fake.calls)
        await trio.sleep(60)
        assert len(fake.calls) == calls
        nursery.cancel_scope.cancel()
    assert len(fake.calls) == calls  # run's exit does not deregister twice


async def test_deregister_during_outage_does_not_raise(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        fake.set_down(True)
        await discovery.deregister()
        assert not discovery.registered
        assert discovery.last_error is not None and "deregister" in discovery.last_error
        nursery.cancel_scope.cancel()


async def test_cancelled_run_deregisters_under_a_bounded_shield(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), ME, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert fake.snapshot(ServiceKey("me")) == ()
    assert not discovery.registered


async def test_register_self_after_run_started(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    discovery = Discovery(fake, InstanceCache(), None, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        assert discovery.state()["registration"] is None
        discovery.register_self(ME)
        await trio.sleep(1)
        assert discovery.registered
        with pytest.raises(RuntimeError, match="already registering"):
            discovery.register_self(ME)
        nursery.cancel_scope.cancel()


# --- consumed services -------------------------------------------------------------


async def test_ensure_watched_starts_exactly_one_watcher_per_service(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.add(ORDERS_1)
    cache = InstanceCache()
    discovery = Discovery(fake, cache, None, app="default")
    discovery.ensure_watched("orders")  # before run: started by run
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        for _ in range(3):
            discovery.ensure_watched("orders")
            discovery.ensure_watched("users")
        await trio.testing.wait_all_tasks_blocked()
        assert fake.watch_starts == {"orders": 1, "users": 1}
        assert cache.lookup("orders") == (ORDERS_1,)
        # An empty list keeps a never-seen name unknown (502 service-not-found)...
        assert cache.lookup("users") is None
        # ...while a known service that loses its instances has none (503 no-instance).
        fake.remove("orders-1")
        await trio.testing.wait_all_tasks_blocked()
        assert cache.lookup("orders") == ()
        nursery.cancel_scope.cancel()


async def test_resolve_fills_the_cache_once_and_watches(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.add(ORDERS_1)
    fake.latency = 0.5
    cache = InstanceCache()
    discovery = Discovery(fake, cache, None, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        async with trio.open_nursery() as requests:
            for _ in range(5):
                requests.start_soon(discovery.resolve, "orders")
        assert cache.lookup("orders") == (ORDERS_1,)
        assert [op for op, _ in fake.calls].count("instances") == 1
        await trio.sleep(1)
        assert fake.watch_starts == {"orders": 1}
        await discovery.resolve("orders")  # cached: no registry call
        assert [op for op, _ in fake.calls].count("instances") == 1
        nursery.cancel_scope.cancel()


async def test_resolve_unknown_name_stays_unknown_and_is_not_asked_per_request(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    cache = InstanceCache()
    discovery = Discovery(fake, cache, None, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        for _ in range(3):
            await discovery.resolve("ghost")
        assert cache.lookup("ghost") is None
        assert [op for op, _ in fake.calls] == ["instances"]
        await trio.sleep(MISS_TTL)
        await discovery.resolve("ghost")
        assert [op for op, _ in fake.calls] == ["instances", "instances"]
        assert not fake.watch_starts
        nursery.cancel_scope.cancel()


async def test_resolve_raises_when_unavailable_and_survives_a_cancelled_peer(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.add(ORDERS_1)
    cache = InstanceCache()
    discovery = Discovery(fake, cache, None, app="default")
    fake.set_down(True)
    with pytest.raises(RegistryUnavailable):
        await discovery.resolve("orders")
    assert cache.lookup("orders") is None

    fake.set_down(False)
    fake.latency = 3  # slower than the impatient caller, within the call timeout

    async def impatient() -> None:
        with trio.move_on_after(1):
            await discovery.resolve("orders")

    async with trio.open_nursery() as requests:
        requests.start_soon(impatient)
        await trio.testing.wait_all_tasks_blocked()
        await discovery.resolve("orders")  # waits on the impatient fetch, then fetches itself
    assert cache.lookup("orders") == (ORDERS_1,)


async def test_state_shows_registration_and_cached_instances(
    fake: FakeRegistry, autojump_clock: trio.testing.MockClock
) -> None:
    fake.add(attrs.evolve(ORDERS_1, version="1.2.0", lease_age=1.25))
    cache = InstanceCache()
    discovery = Discovery(fake, cache, ME, app="default")
    async with trio.open_nursery() as nursery:
        await start(nursery, discovery)
        await discovery.resolve("orders")
        await trio.sleep(3)
        state = discovery.state()
        assert state["registration"] == {
            "service": "me",
            "app": "default",
            "version": "0.0.1",
            "instance_id": discovery.instance_id,
            "endpoint": "rest://127.0.0.1:30103",
            "registered": True,
            "lease_current": True,
            "status": "UP",
            "last_heartbeat_age": 3.0,
            "last_error": None,
        }
        assert state["services"] == {
            "orders": {
                "watched": True,
                "watch_error": None,
                "instances": [
                    {
                        "service": "orders",
                        "app": "default",
                        "instance_id": "orders-1",
                        "endpoint": "rest://10.0.0.1:8080",
                        "version": "1.2.0",
                        "status": "UP",
                        "lease_age": 1.25,
                    }
                ],
            }
        }
        nursery.cancel_scope.cancel()


# --- on the real local backend (real clock) -----------------------------------------


async def test_local_registry_session_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    me = Registration("orders", "127.0.0.1", 18080, heartbeat_interval=0.05, lease_ttl=5.0)
    provider_registry = CountingLocal(path, poll_interval=0.01)
    async with (
        provider_registry,
        LocalRegistry(path, poll_interval=0.01) as consumer_registry,
        LocalRegistry(path) as operator,
    ):
        provider = Discovery(provider_registry, InstanceCache(), me, app="default")
        cache = ObservedCache()
        consumer = Discovery(consumer_registry, cache, None, app="default")
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(provider.run)
                await nursery.start(consumer.run)
                consumer.ensure_watched("orders")

                def ids(c: InstanceCache) -> list[str]:
                    return [i.instance_id for i in c.lookup("orders") or ()]

                first = await provider_registry.registration(1)
                assert provider.instance_id == first
                await cache.wait_for(lambda c: ids(c) == [first])

                # The registry loses us: the next heartbeat gets LeaseExpired and registers again.
                await operator.deregister(first)
                second = await provider_registry.registration(2)
                assert provider.instance_id == second != first
                await cache.wait_for(lambda c: ids(c) == [second])

                # A fresh consumer resolves on first use.
                other = Discovery(consumer_registry, InstanceCache(), None, app="default")
                await other.resolve("orders")
                assert [i.instance_id for i in other.cache.lookup("orders") or ()] == ids(cache)
                await other.resolve("ghost")
                assert other.cache.lookup("ghost") is None

                with trio.move_on_after(5):
                    await provider.deregister()
                assert not provider.registered
                await cache.wait_for(lambda c: c.lookup("orders") == ())
                assert await operator.instances(ORDERS) == ()
                nursery.cancel_scope.cancel()


# --- factory ----------------------------------------------------------------------


def test_build_registry_for_every_type(tmp_path: Path) -> None:
    from trimesh.discovery.etcd import EtcdRegistry
    from trimesh.discovery.servicecomb import ServiceCombRegistry
    from trimesh.discovery.static import StaticRegistry

    def build(**registry: object) -> object:
        # A network registry needs an address other machines can reach.
        raw = {"registry": registry, "listen": {"advertise": "127.0.0.1"}}
        return build_registry(load(None, raw, env={}).registry, app="shop")

    static = build(type="static", services={"orders": ["10.0.0.1:80"]})
    assert isinstance(static, StaticRegistry)
    assert [i.app for i in static.snapshot("orders")] == ["shop"]
    local = build(type="local", path=str(tmp_path / "r.db"))
    assert isinstance(local, LocalRegistry) and str(tmp_path / "r.db") in repr(local)
    assert isinstance(build(type="etcd", endpoints="127.0.0.1:2379"), EtcdRegistry)
    sc = build(type="servicecomb", endpoints="127.0.0.1:30100", project="p1")
    assert isinstance(sc, ServiceCombRegistry)


def test_registration_for_uses_the_bound_inbound_port_or_advertise() -> None:
    raw = {
        "service": {"name": "orders", "app": "shop", "version": "1.2.0", "metadata": {"a": "b"}},
        "registry": {"heartbeat_interval": "5s", "ttl": "20s"},
    }
    me = registration_for(load(None, raw, env={}), ("127.0.0.1", 40123))
    assert me == Registration(
        "orders",
        "127.0.0.1",
        40123,
        app="shop",
        version="1.2.0",
        metadata={"a": "b"},
        heartbeat_interval=5.0,
        lease_ttl=20.0,
    )
    advertised = load(None, {**raw, "listen": {"advertise": "10.1.2.3"}}, env={})
    assert registration_for(advertised, ("0.0.0.0", 40123)).host == "10.1.2.3"
    wildcard = registration_for(load(None, raw, env={}), ("0.0.0.0", 40123))
    assert wildcard.host not in ("", "0.0.0.0")
