"""The thread side of the `local` registry: a pool of SQLite connections to one file.

Everything here runs in worker threads. Each call checks a connection out of
the pool, so no lock is ever held across a database call and a call the trio
side abandoned (its caller's deadline passed) cannot hold up the next one.
SQLite's own busy wait is kept short (`BUSY_STEP`); between waits a call
checks whether it was abandoned and, if so, rolls back and returns its
connection instead of finishing a write nobody waits for. A call that was not
abandoned keeps retrying for `BUSY_TIMEOUT` at most, so every thread returns.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from trimesh.discovery.base import RegistryUnavailable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Long enough to ride out another sidecar's write, short enough that a wedged
# file surfaces as RegistryUnavailable and the caller's backoff takes over.
BUSY_TIMEOUT = 5.0
# How long SQLite itself waits on a lock before we look at `abandoned` again.
BUSY_STEP = 0.05
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

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


class Abandoned(Exception):
    """The trio side stopped waiting for this call; nobody sees this exception."""


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: committed on success, rolled back on any exception."""
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


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED))
    )


def _retry_busy(
    conn: sqlite3.Connection, abandoned: threading.Event, deadline: float, fn: Callable[[], T]
) -> T:
    """Run `fn` (one whole transaction) again while the database is locked."""
    while True:
        if abandoned.is_set():
            raise Abandoned
        try:
            return fn()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise


def _create_private(path: Path) -> None:
    """Create the file (0600) and its folder (0700) if missing; existing modes are kept."""
    # mkdir applies `mode` to the last folder only; missing ancestors get the
    # usual umask, like `mkdir -p`.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _prepare(conn: sqlite3.Connection) -> None:
    """Make a fresh or existing file usable; safe when several processes race to do it."""
    # WAL is a property of the file: switch only if nobody did yet, because
    # switching needs an exclusive lock that a racing opener may hold.
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal":
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch the journal to WAL (it is {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    (tables,) = conn.execute(
        "SELECT count(*) FROM sqlite_master"
        " WHERE type = 'table' AND name IN ('instances', 'revision')"
    ).fetchone()
    if tables < 2:
        with write(conn):
            for statement in _SCHEMA:
                conn.execute(statement)


class Database:
    """Connections to one SQLite file, each used by one thread at a time.

    Error handling: `run` turns `sqlite3.Error` and `OSError` into
    `RegistryUnavailable` and drops that connection; after `close` it raises
    `trio.ClosedResourceError`.
    Resource handling: idle connections wait in the pool; `close` closes them,
    and a connection still in use by an (abandoned) thread is closed by that
    thread when its call ends.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # held only around pool bookkeeping
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def in_use(self) -> int:
        """Connections a thread holds now (an abandoned call's included)."""
        return self._open - len(self._idle)

    def close(self) -> None:
        """Refuse new calls and close the idle connections."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    def run(
        self,
        abandoned: threading.Event,
        fn: Callable[[sqlite3.Connection, *Ts], T],
        *args: *Ts,
    ) -> T:
        """Run `fn(conn, *args)` on a pooled connection, retrying while the file is locked."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        try:
            conn = self._checkout(abandoned, deadline)
        except (sqlite3.Error, OSError) as exc:
            raise RegistryUnavailable(f"local registry {self.path}: {exc}") from exc
        try:
            result = _retry_busy(conn, abandoned, deadline, lambda: fn(conn, *args))
        except (sqlite3.Error, OSError) as exc:
            self._checkin(conn, broken=True)
            raise RegistryUnavailable(f"local registry {self.path}: {exc}") from exc
        except BaseException:
            self._checkin(conn)
            raise
        self._checkin(conn)
        return result

    def _checkout(self, abandoned: threading.Event, deadline: float) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise trio.ClosedResourceError("LocalRegistry was closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            _create_private(self.path)
            conn = sqlite3.connect(
                self.path, timeout=BUSY_STEP, isolation_level=None, check_same_thread=False
            )
        except BaseException:
            with self._lock:
                self._open -= 1
            raise
        try:
            conn.row_factory = sqlite3.Row
            _retry_busy(conn, abandoned, deadline, lambda: _prepare(conn))
        except BaseException:
            self._checkin(conn, broken=True)
            raise
        return conn

    def _checkin(self, conn: sqlite3.Connection, *, broken: bool = False) -> None:
        if conn.in_transaction:
            conn.rollback()
        with self._lock:
            keep = not (broken or self._closed)
            if keep:
                self._idle.append(conn)
            else:
                self._open -= 1
        if not keep:
            conn.close()
