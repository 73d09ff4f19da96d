"""Rows another writer put in the shared file that do not describe an instance.

Any process that can write the file can put anything in a row. Such a row
is skipped with one WARNING (no traceback); the rest of the service still
resolves and watches keep running. Before: `json.loads` raised out of
`instances()` and ended every watch of the service.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.discovery.watcher import Watcher
from trimesh.discovery.base import Registration, ServiceKey
from trimesh.discovery.local import LocalRegistry

ORDERS = ServiceKey("orders")

BAD_ROWS = [
    # (instance id, host, port, status, metadata)
    ("not-json", "127.0.0.1", 9001, "UP", "{zone: a"),
    ("json-list", "127.0.0.1", 9002, "UP", '["zone", "a"]'),
    ("json-string", "127.0.0.1", 9003, "UP", '"zone=a"'),
    ("json-null", "127.0.0.1", 9004, "UP", "null"),
    ("empty", "127.0.0.1", 9005, "UP", ""),
    ("bad-status", "127.0.0.1", 9006, "MAYBE", "{}"),
    ("bad-port", "127.0.0.1", "http", "UP", "{}"),
    ("no-host", "", 9008, "UP", "{}"),
]


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry(tmp_path / "registry.db", poll_interval=0.01) as reg:
        yield reg


def insert_raw(path: Path, rows: list[tuple[object, ...]]) -> None:
    """What a buggy or hostile writer does: rows straight into the table."""
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO instances (instance_id, app, service, host, port, version, environment,"
            " metadata, status, lease_ttl, heartbeat_at, expires_at)"
            " VALUES (?, 'default', 'orders', ?, ?, '', '', ?, ?, 30, 0, 1e12)",
            [(i, host, port, meta, status) for i, host, port, status, meta in rows],
        )
        conn.execute("UPDATE revision SET value = value + 1")
    conn.close()


async def test_malformed_rows_are_skipped_with_one_warning_each(
    tmp_path: Path, registry: LocalRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    good = await registry.register(Registration("orders", "127.0.0.1", 8080))
    insert_raw(tmp_path / "registry.db", BAD_ROWS)
    caplog.set_level(logging.WARNING, logger="trimesh")
    for _ in range(3):  # read again: still skipped, not logged again
        assert [i.instance_id for i in await registry.instances(ORDERS)] == [good]
    warnings = [r for r in caplog.records if r.name.startswith("trimesh")]
    assert sorted(r.getMessage().split("'")[1] for r in warnings) == sorted(r[0] for r in BAD_ROWS)
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    assert "not JSON" in next(r.getMessage() for r in warnings if "'not-json'" in r.getMessage())
    assert "not an object" in next(
        r.getMessage() for r in warnings if "json-list" in r.getMessage()
    )


async def test_a_watch_skips_a_malformed_row_and_keeps_running(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    watcher = Watcher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.watch, ORDERS, watcher)
        with trio.fail_after(5):
            await watcher.wait_for(lambda s: s == [])
            insert_raw(tmp_path / "registry.db", BAD_ROWS[:2])
            await registry.register(Registration("orders", "127.0.0.1", 8080))
            [found] = await watcher.wait_for(lambda s: s)
            assert found.port == 8080
            await registry.register(Registration("orders", "127.0.0.1", 8081))
            await watcher.wait_for(lambda s: len(s) == 2)
        nursery.cancel_scope.cancel()
    assert all(i.port in (8080, 8081) for s in watcher.snapshots for i in s)
