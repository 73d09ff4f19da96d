"""One poller per `LocalRegistry`, however many services it watches.

Before: each watch polled on its own (40 services → 400 reads a second).
Now one of the watches polls for all of them, an idle tick is one tiny query,
and the poller's job passes on when its watch ends or fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.discovery.watcher import Watcher
from trimesh.discovery import _local_rows
from trimesh.discovery.base import Registration, RegistryUnavailable, ServiceKey
from trimesh.discovery.local import LocalRegistry

NAMES = [f"svc-{i:02d}" for i in range(40)]
TICK = 0.01


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement any registry connection runs, in order."""
    seen: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(seen.append)  # list.append is thread-safe
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    return seen


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry(tmp_path / "registry.db", poll_interval=TICK) as reg:
        yield reg


async def watch_all(
    nursery: trio.Nursery, registry: LocalRegistry, names: list[str]
) -> dict[str, Watcher]:
    watchers = {name: Watcher() for name in names}
    for name in names:
        nursery.start_soon(registry.watch, ServiceKey(name), watchers[name])
    for watcher in watchers.values():
        await watcher.wait_for(lambda s: s == [])
    return watchers


async def test_40_idle_watches_cost_one_small_query_a_tick(
    tmp_path: Path, statements: list[str]
) -> None:
    # Real time: worker threads make a MockClock jump at random moments.
    tick, ticks = 0.01, 50
    registry = LocalRegistry(tmp_path / "registry.db", poll_interval=tick)
    async with registry, trio.open_nursery() as nursery:
        await watch_all(nursery, registry, NAMES)
        statements.clear()
        await trio.sleep(ticks * tick)  # measuring idle cost, not awaiting a condition
        nursery.cancel_scope.cancel()
    # At most one read of the revision counter per tick (each tick sleeps a
    # full interval first), and nothing else; 40 pollers made 40 per tick.
    assert 5 <= len(statements) <= ticks + 1, statements[:5]
    assert set(statements) == {"SELECT value FROM revision WHERE id = 0"}


async def test_a_change_is_read_once_and_reaches_only_its_watchers(
    tmp_path: Path, registry: LocalRegistry, statements: list[str]
) -> None:
    async with LocalRegistry(tmp_path / "registry.db") as other, trio.open_nursery() as nursery:
        watchers = await watch_all(nursery, registry, NAMES)
        twin = Watcher()  # a second watch of one service shares the reads
        nursery.start_soon(registry.watch, ServiceKey("svc-07"), twin)
        await twin.wait_for(lambda s: s == [])
        statements.clear()
        with trio.fail_after(5):
            await other.register(Registration("svc-07", "127.0.0.1", 9007))
            await watchers["svc-07"].wait_for(lambda s: len(s) == 1)
            await twin.wait_for(lambda s: len(s) == 1)
        nursery.cancel_scope.cancel()
    # The revision is global: one query re-reads every watched service, and
    # the content comparison keeps the 39 unchanged ones quiet.
    instance_reads = [s for s in statements if s.startswith("SELECT * FROM instances")]
    assert len(instance_reads) == 1
    assert all(len(w.snapshots) == 1 for name, w in watchers.items() if name != "svc-07")


async def test_polling_passes_on_when_the_polling_watch_ends(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    first, second = Watcher(), Watcher()
    async with LocalRegistry(tmp_path / "registry.db") as other, trio.open_nursery() as nursery:
        with trio.fail_after(5):
            # The first watch to run becomes the poller.
            first_scope = trio.CancelScope()
            nursery.start_soon(_in_scope, first_scope, registry.watch, ServiceKey("a"), first)
            await first.wait_for(lambda s: s == [])
            nursery.start_soon(registry.watch, ServiceKey("b"), second)
            await second.wait_for(lambda s: s == [])
            first_scope.cancel()
            await other.register(Registration("b", "127.0.0.1", 9000))
            await second.wait_for(lambda s: len(s) == 1)
        nursery.cancel_scope.cancel()
    assert "watches=0" in repr(registry)


async def test_a_failed_read_ends_every_watch_and_the_next_watch_polls_again(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_poll = _local_rows.poll
    broken = True

    def poll(conn: sqlite3.Connection, *args: Any) -> Any:
        if broken:
            raise sqlite3.OperationalError("disk I/O error")
        return real_poll(conn, *args)

    monkeypatch.setattr(_local_rows, "poll", poll)
    failures: list[BaseException] = []

    async def watch(name: str) -> None:
        with pytest.raises(RegistryUnavailable) as info:
            await registry.watch(ServiceKey(name), lambda s: None)
        failures.append(info.value)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(watch, name)
    assert len(failures) == 3 and len({id(f) for f in failures}) == 3
    broken = False
    watcher = Watcher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.watch, ServiceKey("a"), watcher)
        with trio.fail_after(5):
            await watcher.wait_for(lambda s: s == [])
            await registry.register(Registration("a", "127.0.0.1", 9000))
            await watcher.wait_for(lambda s: len(s) == 1)
        nursery.cancel_scope.cancel()


async def test_a_raising_callback_ends_only_its_own_watch(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    class Boom(Exception):
        pass

    def explode(snapshot: object) -> None:
        if snapshot:
            raise Boom

    poller = Watcher()
    doomed_done = trio.Event()

    async def doomed() -> None:
        with pytest.raises(Boom):
            await registry.watch(ServiceKey("a"), explode)
        doomed_done.set()

    async with LocalRegistry(tmp_path / "registry.db") as other, trio.open_nursery() as nursery:
        with trio.fail_after(5):
            nursery.start_soon(registry.watch, ServiceKey("b"), poller)
            await poller.wait_for(lambda s: s == [])
            nursery.start_soon(doomed)  # not the poller: it started second
            await other.register(Registration("a", "127.0.0.1", 9000))
            await doomed_done.wait()
            assert "watches=1" in repr(registry)
            await other.register(Registration("b", "127.0.0.1", 9000))
            await poller.wait_for(lambda s: len(s) == 1)
        nursery.cancel_scope.cancel()


async def _in_scope(scope: trio.CancelScope, fn: Callable[..., Any], *args: Any) -> None:
    with scope:
        await fn(*args)
