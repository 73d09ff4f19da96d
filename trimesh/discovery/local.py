"""The embedded `local` registry: one SQLite file shared by every sidecar on a machine.

Every write bumps a single-row `revision` counter in the same transaction, so a
watcher only polls that counter (cheap) and re-reads instances when it moved or
when the earliest lease it is showing has run out. Leases use wall-clock time
because several processes share the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import attrs
import trio

from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    OnChange,
    Registration,
    RegistryUnavailable,
    ServiceKey,
    Status,
)

__all__ = ["LocalRegistry", "default_path"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Long enough to ride out another sidecar's write, short enough that a wedged
# file surfaces as RegistryUnavailable and the caller's backoff takes over.
BUSY_TIMEOUT = 5.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS instances (
        instance_id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        service TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        version TEXT NOT NULL,
        environment TEXT NOT NULL,
        metadata TEXT NOT NULL,
        status TEXT NOT NULL,
        lease_ttl REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (app, service, host, port)
    )""",
    "CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER)",
    "INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0)",
)
_BUMP = "UPDATE revision SET value = value + 1 WHERE id = 0"


def default_path() -> Path:
    """Where the shared registry lives: ``$XDG_STATE_HOME/trimesh/registry.db``.

    Falls back to ``~/.local/state`` when the variable is unset, empty or
    relative (the XDG spec says to ignore relative values). The directory is
    created by `LocalRegistry` on first use, not here.
    """
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "trimesh" / "registry.db"


@attrs.frozen
class _Snapshot:
    """What a watcher last showed, and when it must look again regardless."""

    revision: int
    instances: tuple[Instance, ...]
    next_expiry: float

    def same_content(self, other: _Snapshot) -> bool:
        # Instance.__eq__ ignores tags and lease_age; a watcher must see tag
        # changes but not the lease ticking.
        return _content(self.instances) == _content(other.instances)


def _content(instances: Sequence[Instance]) -> list[tuple[object, ...]]:
    return [(i, tuple(i.tags.items())) for i in instances]


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front: a deferred transaction that
    # upgrades from read to write can fail with SQLITE_BUSY despite busy_timeout.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")


class LocalRegistry:
    """A `Registry` backed by a SQLite file that several processes share.

    Error handling: `sqlite3.Error` and `OSError` become `RegistryUnavailable`;
    a heartbeat or status change for an unknown or expired instance raises
    `LeaseExpired`. Using the registry after `aclose` raises
    `trio.ClosedResourceError`.
    Resource handling: owns one connection (opened lazily, guarded by a lock,
    used only from worker threads); `aclose` closes it. Starts no tasks.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.1,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._conn else "idle"
        return f"<LocalRegistry {str(self._path)!r} {state}>"

    async def register(self, me: Registration) -> str:
        """Register `me` (idempotent per app/service/host/port) and return its instance id."""
        return await self._call(self._register, me)

    async def heartbeat(self, instance_id: str) -> None:
        """Renew the lease; raises `LeaseExpired` if it already ran out or never existed."""
        await self._call(self._heartbeat, instance_id)

    async def set_status(self, instance_id: str, status: Status) -> None:
        """Mark the instance UP or DOWN; raises `LeaseExpired` like `heartbeat`."""
        if status not in ("UP", "DOWN"):
            raise ValueError(f"status must be 'UP' or 'DOWN', not {status!r}")
        await self._call(self._set_status, instance_id, status)

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance; a missing one is not an error."""
        await self._call(self._deregister, instance_id)

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        """Every live (unexpired) instance of `key`, UP and DOWN, ordered by address."""
        snapshot = await self._call(self._read, key)
        return snapshot.instances

    async def services(self, app: str) -> Sequence[str]:
        """The names of `app`'s services that have at least one live instance, sorted."""
        return await self._call(self._services, app)

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        """Call `on_change` with the current instances, then on every change of them.

        Polls the revision counter every `poll_interval`; runs until cancelled
        or until a read raises `RegistryUnavailable`.
        """
        shown = await self._call(self._read, key)
        on_change(shown.instances)
        while True:
            await trio.sleep(self._poll_interval)
            fresh = await self._call(self._read_if_stale, key, shown)
            if fresh is None:
                continue
            if not fresh.same_content(shown):
                on_change(fresh.instances)
            shown = fresh

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
        self._closed = True
        await trio.to_thread.run_sync(self._close)

    async def __aenter__(self) -> LocalRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- worker-thread side: everything below runs under self._lock ---

    async def _call(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        # Not abandon_on_cancel: a cancelled caller waits (at most BUSY_TIMEOUT)
        # so the lock and connection are never left mid-transaction.
        return await trio.to_thread.run_sync(self._locked, fn, *args)

    def _locked(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        with self._lock:
            # Checked under the lock so a call racing `aclose` cannot reopen.
            if self._closed:
                raise trio.ClosedResourceError("LocalRegistry was closed")
            try:
                return fn(self._connection(), *args)
            except (sqlite3.Error, OSError) as exc:
                # Drop the connection so the caller's retry starts from a fresh one.
                self._close_locked()
                raise RegistryUnavailable(f"local registry {self._path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            with _write(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _register(self, conn: sqlite3.Connection, me: Registration) -> str:
        now = self._clock()
        fields = (
            me.version,
            me.environment,
            json.dumps(dict(me.metadata), sort_keys=True),
            me.lease_ttl,
            now,
            now + me.lease_ttl,
        )
        endpoint = (me.app, me.service, me.host, me.port)
        with _write(conn):
            # Lazy purge: expired rows are already invisible, so no revision bump.
            conn.execute("DELETE FROM instances WHERE expires_at <= ?", (now,))
            row = conn.execute(
                "SELECT instance_id FROM instances"
                " WHERE app = ? AND service = ? AND host = ? AND port = ?",
                endpoint,
            ).fetchone()
            if row is None:
                instance_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO instances (instance_id, app, service, host, port, version,"
                    " environment, metadata, lease_ttl, heartbeat_at, expires_at, status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'UP')",
                    (instance_id, *endpoint, *fields),
                )
            else:
                instance_id = row["instance_id"]
                conn.execute(
                    "UPDATE instances SET version = ?, environment = ?, metadata = ?,"
                    " lease_ttl = ?, heartbeat_at = ?, expires_at = ?, status = 'UP'"
                    " WHERE instance_id = ?",
                    (*fields, instance_id),
                )
            conn.execute(_BUMP)
        return str(instance_id)

    def _heartbeat(self, conn: sqlite3.Connection, instance_id: str) -> None:
        # No revision bump: renewing never changes what a watcher shows, and a
        # watcher re-reads anyway when the lease it knows about runs out.
        now = self._clock()
        renewed = conn.execute(
            "UPDATE instances SET heartbeat_at = ?, expires_at = ? + lease_ttl"
            " WHERE instance_id = ? AND expires_at > ?",
            (now, now, instance_id, now),
        ).rowcount
        if not renewed:
            raise LeaseExpired(f"instance {instance_id} is not registered or its lease expired")

    def _set_status(self, conn: sqlite3.Connection, instance_id: str, status: Status) -> None:
        now = self._clock()
        with _write(conn):
            row = conn.execute(
                "SELECT status FROM instances WHERE instance_id = ? AND expires_at > ?",
                (instance_id, now),
            ).fetchone()
            if row is None:
                raise LeaseExpired(f"instance {instance_id} is not registered or its lease expired")
            if row["status"] != status:
                conn.execute(
                    "UPDATE instances SET status = ? WHERE instance_id = ?", (status, instance_id)
                )
                conn.execute(_BUMP)

    def _deregister(self, conn: sqlite3.Connection, instance_id: str) -> None:
        with _write(conn):
            deleted = conn.execute(
                "DELETE FROM instances WHERE instance_id = ?", (instance_id,)
            ).rowcount
            if deleted:
                conn.execute(_BUMP)

    def _services(self, conn: sqlite3.Connection, app: str) -> list[str]:
        # Live means unexpired, UP or DOWN: the same rows `instances` shows.
        rows = conn.execute(
            "SELECT DISTINCT service FROM instances WHERE app = ? AND expires_at > ?"
            " ORDER BY service",
            (app, self._clock()),
        ).fetchall()
        return [str(row["service"]) for row in rows]

    def _read_if_stale(
        self, conn: sqlite3.Connection, key: ServiceKey, shown: _Snapshot
    ) -> _Snapshot | None:
        (revision,) = conn.execute("SELECT value FROM revision WHERE id = 0").fetchone()
        if revision == shown.revision and self._clock() < shown.next_expiry:
            return None
        return self._read(conn, key)

    def _read(self, conn: sqlite3.Connection, key: ServiceKey) -> _Snapshot:
        now = self._clock()
        # One read transaction, so the revision matches the rows we return.
        conn.execute("BEGIN")
        try:
            (revision,) = conn.execute("SELECT value FROM revision WHERE id = 0").fetchone()
            rows = conn.execute(
                "SELECT * FROM instances WHERE app = ? AND service = ? AND expires_at > ?"
                " ORDER BY host, port, instance_id",
                (key.app, key.name, now),
            ).fetchall()
        finally:
            conn.rollback()
        return _Snapshot(
            revision=revision,
            instances=tuple(_instance(row, now) for row in rows),
            next_expiry=min((row["expires_at"] for row in rows), default=math.inf),
        )


def _instance(row: sqlite3.Row, now: float) -> Instance:
    return Instance(
        service=row["service"],
        instance_id=row["instance_id"],
        host=row["host"],
        port=row["port"],
        app=row["app"],
        version=row["version"],
        environment=row["environment"],
        status=row["status"],
        tags=json.loads(row["metadata"]),
        # Clamp: another process's clock may run slightly ahead of ours.
        lease_age=max(0.0, now - row["heartbeat_at"]),
    )
