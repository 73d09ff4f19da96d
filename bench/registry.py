"""The registry figure: time from a provider registering until a consumer's cache holds it.

For each backend, `runs` repetitions of:

1. A provider registry object registers ``bench-svc-<i>`` once and deregisters
   it, so the service is known but has no instance (a provider that was
   deployed before). Service Center needs this: a consumer's find of a
   micro-service that does not exist subscribes it to nothing, so its watch
   would never see the first instance. The other backends do the same steps
   so that every backend measures the same thing.
2. A fresh consumer `Discovery` (no registration of its own; its registry
   object registered ``bench-consumer`` once, as a sidecar would) watches the
   service, feeding its `InstanceCache`.
3. Once the watch delivered its first snapshot, and after a random settle of
   50-150 ms (so the local backend's 100 ms poll is hit at a random phase, as
   it is in real life), the provider registers an instance.
4. The sample is the trio-clock time from calling `register` to the moment
   the consumer's cache holds the instance (checked inside `on_change`).

Backends: ``local`` (two `LocalRegistry` objects on one temporary SQLite
file), ``etcd`` (a real etcd started by `bench.etcd`; skipped when the binary
is absent), ``servicecomb`` (the in-process Service Center double of
``tests/sc_double.py``, not a real Service Center). Each keeps its defaults
(local: 100 ms poll).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import attrs
import trio

from bench.etcd import MISSING, describe, find_etcd, start_etcd
from bench.procs import HOST, BenchError, Processes
from trimesh.discovery.base import (
    Instance,
    OnChange,
    Registration,
    Registry,
    RegistryError,
    ServiceKey,
)
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.etcd import EtcdRegistry
from trimesh.discovery.local import LocalRegistry
from trimesh.discovery.servicecomb import ServiceCombRegistry
from trimesh.discovery.session import Discovery

RUNS = 100  # default repetitions per backend (--registry-runs)
APP = "bench"
DEADLINE = 10.0  # per wait (watch up, instance seen); a miss counts as a timeout
SETTLE = (0.05, 0.15)
BASE_PORT = 20000

LABELS = {
    "local": "LocalRegistry x2 on one temporary SQLite file (100 ms poll)",
    "etcd": "EtcdRegistry x2 on a real {etcd}, loopback",
    "servicecomb": "ServiceCombRegistry x2 on the Service Center DOUBLE (tests/sc_double.py, "
    "in-process), not a real Service Center",
}


@attrs.frozen
class BackendResult:
    """One backend's samples (ms), or why it was skipped."""

    name: str
    label: str
    samples_ms: tuple[float, ...] = ()
    register_ms: tuple[float, ...] = ()  # how long the provider's `register` call took
    timeouts: int = 0
    skipped: str | None = None

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the samples (below 100 runs, p99 is the maximum)."""
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan

    def as_dict(self) -> dict[str, object]:
        if self.skipped:
            return {"label": self.label, "skipped": self.skipped}
        return {
            "label": self.label,
            "runs": len(self.samples_ms) + self.timeouts,
            "timeouts": self.timeouts,
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(max(self.samples_ms, default=math.nan), 3),
            "register_call_p50_ms": round(statistics.median(self.register_ms), 3)
            if self.register_ms
            else None,
            "samples_ms": [round(s, 3) for s in self.samples_ms],
            "register_call_ms": [round(s, 3) for s in self.register_ms],
        }


def measure(procs: Processes, workdir: Path, runs: int, seed: int = 1) -> list[BackendResult]:
    """Measure every backend in turn; each gets its own `trio.run`."""
    rng = random.Random(seed)
    results = [_local(workdir, runs, rng), _etcd(procs, workdir, runs, rng)]
    return [*results, _servicecomb(runs, rng)]


def table(results: Sequence[BackendResult]) -> str:
    """The per-backend table; "register" is the provider's `register` call alone (p50)."""
    lines = [
        f"  {'backend':<13}{'runs':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'register':>10}  what"
    ]
    for r in results:
        if r.skipped:
            lines.append(f"  {r.name:<13}{'SKIPPED':>43}  {r.skipped}")
            continue
        runs = f"{len(r.samples_ms)}" + (f"+{r.timeouts}t" if r.timeouts else "")
        call = statistics.median(r.register_ms) if r.register_ms else math.nan
        lines.append(
            f"  {r.name:<13}{runs:>6}{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}"
            f"{max(r.samples_ms, default=math.nan):>9.1f}{call:>10.1f}  {r.label}"
        )
    return "\n".join(lines)


# -- the backends ----------------------------------------------------------------

Opener = Callable[[AsyncExitStack], Awaitable[tuple[Registry, Registry]]]


def _local(workdir: Path, runs: int, rng: random.Random) -> BackendResult:
    async def open_pair(stack: AsyncExitStack) -> tuple[Registry, Registry]:
        path = workdir / "bench-registry.db"
        provider = await stack.enter_async_context(LocalRegistry(path))
        return provider, await stack.enter_async_context(LocalRegistry(path))

    return _run("local", open_pair, runs, rng)


def _etcd(procs: Processes, workdir: Path, runs: int, rng: random.Random) -> BackendResult:
    binary = find_etcd()
    if binary is None:
        return BackendResult("etcd", LABELS["etcd"].format(etcd="etcd"), skipped=MISSING)
    label = LABELS["etcd"].format(etcd=describe(binary))
    proc, endpoint = start_etcd(procs, binary, workdir)

    async def open_pair(stack: AsyncExitStack) -> tuple[Registry, Registry]:
        provider, consumer = (EtcdRegistry([endpoint], prefix="/bench") for _ in range(2))
        stack.push_async_callback(provider.aclose)
        stack.push_async_callback(consumer.aclose)
        return provider, consumer

    try:
        return attrs.evolve(_run("etcd", open_pair, runs, rng), label=label)
    finally:
        procs.stop(proc)


def _servicecomb(runs: int, rng: random.Random) -> BackendResult:
    try:
        from tests.sc_double import ServiceCenterDouble
    except ImportError as exc:  # bench run from outside the repository root
        reason = f"the Service Center double (tests/sc_double.py) is not importable: {exc}"
        return BackendResult("servicecomb", LABELS["servicecomb"], skipped=reason)

    async def open_pair(stack: AsyncExitStack) -> tuple[Registry, Registry]:
        double = ServiceCenterDouble()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # stops the double before the nursery exits
        port = await nursery.start(double.serve)
        provider = await stack.enter_async_context(ServiceCombRegistry([(HOST, port)]))
        return provider, await stack.enter_async_context(ServiceCombRegistry([(HOST, port)]))

    return _run("servicecomb", open_pair, runs, rng)


# -- the measurement -------------------------------------------------------------


def _run(name: str, open_pair: Opener, runs: int, rng: random.Random) -> BackendResult:
    """Measure one backend in its own `trio.run`; a registry failure is a `BenchError`."""
    try:
        return trio.run(_backend, name, open_pair, runs, rng)
    except* RegistryError as group:
        raise BenchError(f"registry scenario, {name} backend: {group.exceptions[0]}") from group


async def _backend(name: str, open_pair: Opener, runs: int, rng: random.Random) -> BackendResult:
    samples: list[float] = []
    register: list[float] = []
    timeouts = 0
    async with AsyncExitStack() as stack:
        provider, consumer = await open_pair(stack)
        await consumer.register(Registration("bench-consumer", HOST, BASE_PORT - 1, app=APP))
        for index in range(runs):
            sample = await _one(provider, consumer, index, rng.uniform(*SETTLE))
            if sample is None:
                timeouts += 1
            else:
                samples.append(sample[0] * 1000)
                register.append(sample[1] * 1000)
    return BackendResult(name, LABELS[name], tuple(samples), tuple(register), timeouts)


async def _one(
    provider: Registry, consumer: Registry, index: int, settle: float
) -> tuple[float, float] | None:
    """One repetition: (register → in cache, register call) in seconds; None on a timeout."""
    me = Registration(f"bench-svc-{index}", HOST, BASE_PORT + index % 40000, app=APP)
    await provider.deregister(await provider.register(me))
    cache = InstanceCache()
    probe = _Probe(consumer, cache, me)
    discovery = Discovery(cast(Registry, probe), cache, None, app=APP)
    instance_id = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run)
            discovery.ensure_watched(me.service)
            with trio.move_on_after(DEADLINE):
                await probe.watching.wait()
                await trio.sleep(settle)
                start = trio.current_time()
                instance_id = await provider.register(me)
                returned = trio.current_time()
                await probe.arrived.wait()
            nursery.cancel_scope.cancel()
    finally:
        if instance_id is not None:
            await provider.deregister(instance_id)
    if not probe.arrived.is_set():
        return None
    return probe.arrived_at - start, returned - start


class _Probe:
    """The consumer's registry, noting when its watch is up and when `cache` holds `me`."""

    def __init__(self, registry: Registry, cache: InstanceCache, me: Registration) -> None:
        self._registry = registry
        self._cache = cache
        self._me = me
        self.watching = trio.Event()
        self.arrived = trio.Event()
        self.arrived_at = math.nan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        def observed(snapshot: Sequence[Instance]) -> None:
            on_change(snapshot)  # Discovery updates the cache here
            self.watching.set()
            cached = self._cache.lookup(self._me.service) or ()
            if not self.arrived.is_set() and any(i.port == self._me.port for i in cached):
                self.arrived_at = trio.current_time()
                self.arrived.set()

        await self._registry.watch(key, observed)
