"""The rows of the `local` registry: what each call reads and writes (worker-thread side).

Each function is one whole transaction on a connection `_local_db.Database`
lends it, so running it again after SQLITE_BUSY is safe. Every write that
changes what a watcher shows bumps the `revision` counter in the same
transaction.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

from trimesh.discovery._local_db import write
from trimesh.discovery.base import Instance, LeaseExpired, Registration, ServiceKey, Status

log = logging.getLogger("trimesh.discovery.local")

# Row values per query: two parameters a key, well under SQLite's 999 limit.
_KEYS_PER_QUERY = 200
_BUMP = "UPDATE revision SET value = value + 1 WHERE id = 0"

# Per service key: its live instances and the earliest lease expiry among them.
Found = Mapping[ServiceKey, tuple[tuple[Instance, ...], float]]


class RowDecoder:
    """Turns rows into instances, skipping malformed ones with one WARNING each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Shared by worker threads; set operations are atomic under the GIL.
        self._warned: set[tuple[object, ...]] = set()

    def __call__(self, row: sqlite3.Row, now: float) -> Instance | None:
        """The instance a row describes, or None (logged once) when the row is malformed."""
        problem = _row_problem(row)
        if problem is None:
            try:
                return _instance(row, now)
            except (TypeError, ValueError) as exc:
                problem = str(exc)
        # Logged once per row content: the poller reads the same row again.
        seen = (row["instance_id"], row["host"], row["port"], row["status"], row["metadata"])
        if seen not in self._warned:
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned.add(seen)
            log.warning(
                "local registry %s: skipping instance %r of %s/%s: %s",
                self.path,
                row["instance_id"],
                row["app"],
                row["service"],
                problem,
            )
        return None


def _row_problem(row: sqlite3.Row) -> str | None:
    try:
        tags = json.loads(row["metadata"])
    except (TypeError, ValueError):
        return "its metadata is not JSON"
    if not isinstance(tags, dict):
        return f"its metadata is JSON {type(tags).__name__}, not an object"
    if row["status"] not in ("UP", "DOWN"):
        return f"its status {row['status']!r} is neither UP nor DOWN"
    port = row["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return f"its port {port!r} is not a port number"
    if not isinstance(row["host"], str) or not row["host"]:
        return "it has no host"
    if not all(isinstance(row[c], int | float) for c in ("heartbeat_at", "expires_at")):
        return "its lease times are not numbers"
    return None


def _instance(row: sqlite3.Row, now: float) -> Instance:
    return Instance(
        service=row["service"],
        instance_id=str(row["instance_id"]),
        host=row["host"],
        port=row["port"],
        app=row["app"],
        version=str(row["version"]),
        environment=str(row["environment"]),
        status=row["status"],
        tags=json.loads(row["metadata"]),
        # Clamp: another process's clock may run slightly ahead of ours.
        lease_age=max(0.0, now - float(row["heartbeat_at"])),
    )


def read_instances(
    conn: sqlite3.Connection, decode: RowDecoder, keys: Collection[ServiceKey], now: float
) -> tuple[int, Found]:
    """The revision, and for each key its live instances and earliest lease expiry.

    One read transaction, so the revision matches the rows; at most one query
    per `_KEYS_PER_QUERY` keys.
    """
    found: dict[ServiceKey, list[Instance]] = {key: [] for key in keys}
    expiry: dict[ServiceKey, float] = dict.fromkeys(keys, math.inf)
    ordered = list(found)
    conn.execute("BEGIN")
    try:
        (revision,) = conn.execute("SELECT value FROM revision WHERE id = 0").fetchone()
        for start in range(0, len(ordered), _KEYS_PER_QUERY):
            chunk = ordered[start : start + _KEYS_PER_QUERY]
            values = ", ".join("(?, ?)" for _ in chunk)
            params = [p for key in chunk for p in (key.app, key.name)]
            rows = conn.execute(
                "SELECT * FROM instances WHERE expires_at > ?"
                f" AND (app, service) IN (VALUES {values})"
                " ORDER BY app, service, host, port, instance_id",
                (now, *params),
            ).fetchall()
            for row in rows:
                key = ServiceKey(row["service"], row["app"])
                instance = decode(row, now)
                if instance is not None:
                    found[key].append(instance)
                    expiry[key] = min(expiry[key], float(row["expires_at"]))
    finally:
        conn.rollback()
    return int(revision), {key: (tuple(found[key]), expiry[key]) for key in ordered}


def poll(
    conn: sqlite3.Connection,
    decode: RowDecoder,
    shown: Mapping[ServiceKey, int],
    due: Collection[ServiceKey],
    now: float,
) -> tuple[int, Found]:
    """Re-read the keys shown at an older revision, or whose earliest lease ran out.

    When nothing changed (the common, idle case) this is one single-row read.
    """
    (revision,) = conn.execute("SELECT value FROM revision WHERE id = 0").fetchone()
    stale = [key for key, seen in shown.items() if seen != revision or key in due]
    if not stale:
        return int(revision), {}
    return read_instances(conn, decode, stale, now)


def register(conn: sqlite3.Connection, me: Registration, now: float) -> str:
    """Insert or refresh the row of `me`'s endpoint; returns its instance id."""
    fields = (
        me.version,
        me.environment,
        json.dumps(dict(me.metadata), sort_keys=True),
        me.lease_ttl,
        now,
        now + me.lease_ttl,
    )
    endpoint = (me.app, me.service, me.host, me.port)
    with write(conn):
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


def heartbeat(conn: sqlite3.Connection, instance_id: str, now: float) -> None:
    """Renew a live lease; `LeaseExpired` when it ran out or never existed."""
    # No revision bump: renewing never changes what a watcher shows, and a
    # watcher re-reads anyway when the lease it knows about runs out.
    renewed = conn.execute(
        "UPDATE instances SET heartbeat_at = ?, expires_at = ? + lease_ttl"
        " WHERE instance_id = ? AND expires_at > ?",
        (now, now, instance_id, now),
    ).rowcount
    if not renewed:
        raise LeaseExpired(f"instance {instance_id} is not registered or its lease expired")


def set_status(conn: sqlite3.Connection, instance_id: str, status: Status, now: float) -> None:
    """Set a live instance's status; `LeaseExpired` like `heartbeat`."""
    with write(conn):
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


def deregister(conn: sqlite3.Connection, instance_id: str) -> None:
    """Delete the row; a missing one is not an error."""
    with write(conn):
        deleted = conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
        if deleted.rowcount:
            conn.execute(_BUMP)


def services(conn: sqlite3.Connection, app: str, now: float) -> list[str]:
    """Names of `app`'s services with a live (unexpired, UP or DOWN) instance."""
    rows = conn.execute(
        "SELECT DISTINCT service FROM instances WHERE app = ? AND expires_at > ? ORDER BY service",
        (app, now),
    ).fetchall()
    return [str(row["service"]) for row in rows]
