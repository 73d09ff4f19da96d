"""The `local` registry honours its callers' deadlines while another process holds the file.

Each test holds SQLite's write lock from a separate connection (what another
sidecar mid-write, or a stuck one, looks like) and checks that a registry
call under a short cancel scope returns on time, that other calls are not
queued behind the stuck one, and that the abandoned call neither leaks its
connection nor applies its write after the caller gave up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from trimesh.discovery.base import Registration, ServiceKey
from trimesh.discovery.local import LocalRegistry

ORDERS = ServiceKey("orders")
ME = Registration("orders", "127.0.0.1", 8080)
DEADLINE = 0.2
# What "returns within about its deadline" means on a busy shared machine;
# before the fix these calls took BUSY_TIMEOUT (5 s) or more.
SLACK = 0.4


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry(tmp_path / "registry.db", poll_interval=0.01) as reg:
        await reg.instances(ORDERS)  # creates the file and its schema
        yield reg


@pytest.fixture
def write_lock(tmp_path: Path, registry: LocalRegistry) -> Iterator[sqlite3.Connection]:
    """Another process's connection, holding the write lock until the test releases it."""
    conn = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.close()


async def wait_for_threads(registry: LocalRegistry, in_use: int) -> None:
    """Poll (with a deadline) until `in_use` worker threads hold a connection."""
    # Worker threads signal nothing we could wait on: polling the repr is the seam.
    with trio.fail_after(3):
        while f"in_use={in_use}" not in repr(registry):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def timed(call: object) -> float:
    start = trio.current_time()
    with trio.move_on_after(DEADLINE):
        await call  # type: ignore[misc]
    return trio.current_time() - start


@pytest.mark.parametrize("operation", ["register", "heartbeat", "set_status", "deregister"])
async def test_a_write_returns_at_its_deadline_while_the_file_is_locked(
    tmp_path: Path, operation: str
) -> None:
    async with LocalRegistry(tmp_path / "registry.db") as reg:
        instance_id = await reg.register(ME)
        calls = {
            "register": lambda: reg.register(ME),
            "heartbeat": lambda: reg.heartbeat(instance_id),
            "set_status": lambda: reg.set_status(instance_id, "DOWN"),
            "deregister": lambda: reg.deregister(instance_id),
        }
        holder = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            elapsed = await timed(calls[operation]())
            assert elapsed < DEADLINE + SLACK
            await wait_for_threads(reg, 0)
        finally:
            holder.close()
        # Nothing was applied after the caller gave up, and the registry still works.
        [found] = await reg.instances(ORDERS)
        assert (found.instance_id, found.status) == (instance_id, "UP")
        await reg.heartbeat(instance_id)


async def test_a_stuck_write_does_not_hold_up_reads(
    registry: LocalRegistry, write_lock: sqlite3.Connection
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.register, ME)  # waits on the lock
        await wait_for_threads(registry, 1)
        # WAL lets readers through a writer's lock; nothing of ours may queue them.
        with trio.fail_after(DEADLINE + SLACK):
            assert await registry.instances(ORDERS) == ()
            assert await registry.services("default") == []
        nursery.cancel_scope.cancel()


async def test_abandoned_call_does_not_leak_its_connection(
    tmp_path: Path, registry: LocalRegistry, write_lock: sqlite3.Connection
) -> None:
    async with trio.open_nursery() as nursery:
        for port in range(8080, 8085):
            nursery.start_soon(timed, registry.register(Registration("orders", "127.0.0.1", port)))
    await wait_for_threads(registry, 0)
    await registry.aclose()
    assert "closed" in repr(registry)
    # Every connection is closed: the holder can switch the file out of WAL,
    # which SQLite refuses while another connection has it open.
    write_lock.execute("ROLLBACK")
    write_lock.execute("PRAGMA journal_mode = DELETE")
    assert write_lock.execute("PRAGMA journal_mode").fetchone() == ("delete",)


async def test_aclose_during_a_stuck_call_closes_its_connection_later(
    tmp_path: Path, write_lock: sqlite3.Connection
) -> None:
    reg = LocalRegistry(tmp_path / "registry.db")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reg.register, ME)
        await wait_for_threads(reg, 1)
        nursery.cancel_scope.cancel()
    with trio.fail_after(DEADLINE + SLACK):
        await reg.aclose()
    await wait_for_threads(reg, 0)
    with pytest.raises(trio.ClosedResourceError):
        await reg.instances(ORDERS)


async def test_a_cancelled_watch_returns_at_once(
    registry: LocalRegistry, write_lock: sqlite3.Connection
) -> None:
    elapsed = await timed(registry.watch(ORDERS, lambda snapshot: None))
    assert elapsed < DEADLINE + SLACK
