"""The embedded `local` registry: one SQLite file shared by every sidecar on a machine.

Every write bumps a single-row `revision` counter in the same transaction.
One poller per `LocalRegistry` serves all its watches: each tick reads that
counter (one tiny query), and only when it moved, or when the earliest lease
a watch shows has run out, re-reads the affected services in one query and
hands each watch its new snapshot if the content changed. Leases use
wall-clock time because several processes share the file.

Every database call runs in a worker thread the caller's cancel scope can
abandon (see `_local_db`), so a file locked by another process never holds a
caller past its deadline. The SQL itself is in `_local_rows`.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from trimesh.discovery import _local_rows as rows
from trimesh.discovery._local_db import Database
from trimesh.discovery.base import (
    Instance,
    OnChange,
    Registration,
    RegistryUnavailable,
    ServiceKey,
    Status,
)

__all__ = ["LocalRegistry", "default_path"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Worker threads one registry may occupy; an abandoned call holds its thread
# until it notices (within `_local_db.BUSY_STEP`), so this also bounds how
# many a wedged file can pin.
MAX_THREADS = 8


def default_path() -> Path:
    """Where the shared registry lives: ``$XDG_STATE_HOME/trimesh/registry.db``.

    Falls back to ``~/.local/state`` when the variable is unset, empty or
    relative (the XDG spec says to ignore relative values). The directory is
    created by `LocalRegistry` on first use, not here.
    """
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "trimesh" / "registry.db"


class _Watch:
    """One `watch` call: what it last showed, from which read, at which revision."""

    def __init__(self, key: ServiceKey, on_change: OnChange) -> None:
        self.key = key
        self.on_change = on_change
        self.shown: tuple[Instance, ...] | None = None
        self.read = -1  # sequence number of the read `shown` came from
        self.revision = -1
        self.next_expiry = math.inf
        self.failure: BaseException | None = None
        self.nudged = trio.Event()

    def show(
        self, read: int, revision: int, instances: tuple[Instance, ...], next_expiry: float
    ) -> None:
        """Record a read; call `on_change` only if the content differs (see `Instance`)."""
        self.read, self.revision, self.next_expiry = read, revision, next_expiry
        if instances != self.shown:
            self.shown = instances
            self.on_change(instances)

    def nudge(self) -> None:
        self.nudged.set()
        self.nudged = trio.Event()


class LocalRegistry:
    """A `Registry` backed by a SQLite file that several processes share.

    Error handling: `sqlite3.Error` and `OSError` become `RegistryUnavailable`;
    a heartbeat or status change for an unknown or expired instance raises
    `LeaseExpired`. Using the registry after `aclose` raises
    `trio.ClosedResourceError`. A call whose caller is cancelled returns at
    once; its thread rolls back unless the write already committed, so a
    cancelled call may or may not have taken effect (all are idempotent).
    Resource handling: owns a pool of connections used only from worker
    threads; `aclose` closes them (one still in use is closed by its thread
    when its call ends). Starts no tasks: the poller runs inside one of the
    `watch` calls, and passes to another when that one ends.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.1,
    ) -> None:
        self._db = Database(Path(path))
        self._decode = rows.RowDecoder(self._db.path)
        self._reads = itertools.count()
        self._clock = clock
        self._poll_interval = poll_interval
        self._limiter = trio.CapacityLimiter(MAX_THREADS)
        self._watches: list[_Watch] = []
        self._poller: _Watch | None = None

    def __repr__(self) -> str:
        n = self._db.open_connections
        state = "closed" if self._db.closed else "open" if n else "idle"
        return (
            f"<LocalRegistry {str(self._db.path)!r} {state} connections={n}"
            f" in_use={self._db.in_use} watches={len(self._watches)}>"
        )

    async def register(self, me: Registration) -> str:
        """Register `me` (idempotent per app/service/host/port) and return its instance id."""
        return await self._call(rows.register, me, self._clock())

    async def heartbeat(self, instance_id: str) -> None:
        """Renew the lease; raises `LeaseExpired` if it already ran out or never existed."""
        await self._call(rows.heartbeat, instance_id, self._clock())

    async def set_status(self, instance_id: str, status: Status) -> None:
        """Mark the instance UP or DOWN; raises `LeaseExpired` like `heartbeat`."""
        if status not in ("UP", "DOWN"):
            raise ValueError(f"status must be 'UP' or 'DOWN', not {status!r}")
        await self._call(rows.set_status, instance_id, status, self._clock())

    async def deregister(self, instance_id: str) -> None:
        """Remove the instance; a missing one is not an error."""
        await self._call(rows.deregister, instance_id)

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        """Every live (unexpired) instance of `key`, UP and DOWN, ordered by address.

        A malformed row (e.g. metadata that is not a JSON object) is skipped
        and logged once at WARNING.
        """
        _, _, found = await self._read([key])
        return found[key][0]

    async def services(self, app: str) -> Sequence[str]:
        """The names of `app`'s services that have at least one live instance, sorted."""
        return await self._call(rows.services, app, self._clock())

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        """Call `on_change` with the current instances, then on every change of them.

        Runs until cancelled, or until a read raises `RegistryUnavailable`
        (every watch of this registry then raises it).
        """
        watch = _Watch(key, on_change)
        read, revision, found = await self._read([key])
        watch.show(read, revision, *found[key])
        self._watches.append(watch)
        try:
            while True:
                if watch.failure is not None:
                    raise _copy(watch.failure)
                if self._poller is None:
                    self._poller = watch
                    await self._poll_forever(watch)
                await watch.nudged.wait()
        finally:
            self._watches.remove(watch)
            if self._poller is watch:
                self._poller = None
                for other in self._watches:
                    other.nudge()  # the first of them to run takes over polling

    async def aclose(self) -> None:
        """Refuse further calls and close the connections; safe to call twice."""
        await trio.to_thread.run_sync(self._db.close, abandon_on_cancel=True)

    async def __aenter__(self) -> LocalRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _poll_forever(self, mine: _Watch) -> None:
        """The one poller: re-read what changed, then feed every watch."""
        while True:
            await trio.sleep(self._poll_interval)
            now = self._clock()
            shown: dict[ServiceKey, int] = {}
            due: set[ServiceKey] = set()
            for w in self._watches:
                shown[w.key] = min(w.revision, shown.get(w.key, w.revision))
                if now >= w.next_expiry:
                    due.add(w.key)
            read = next(self._reads)
            try:
                revision, found = await self._call(rows.poll, self._decode, shown, due, now)
            except (RegistryUnavailable, trio.ClosedResourceError) as exc:
                for w in self._watches:
                    w.failure = exc
                    w.nudge()
                raise
            self._dispatch(mine, read, revision, found)

    def _dispatch(self, mine: _Watch, read: int, revision: int, found: rows.Found) -> None:
        for w in list(self._watches):
            # A watch whose first read began after this poll did knows better.
            if w.key not in found or read < w.read or w.failure is not None:
                continue
            try:
                w.show(read, revision, *found[w.key])
            except Exception as exc:  # that watcher's callback: fail its own watch
                if w is mine:
                    raise
                w.failure = exc
                w.nudge()

    async def _read(self, keys: Sequence[ServiceKey]) -> tuple[int, int, rows.Found]:
        read = next(self._reads)
        found = await self._call(rows.read_instances, self._decode, keys, self._clock())
        return (read, *found)

    async def _call(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """Run `fn(conn, *args)` in a worker thread that cancellation abandons."""
        if self._db.closed:
            raise trio.ClosedResourceError("LocalRegistry was closed")
        abandoned = threading.Event()
        try:
            return await trio.to_thread.run_sync(
                functools.partial(self._db.run, abandoned, fn, *args),
                abandon_on_cancel=True,
                limiter=self._limiter,
            )
        finally:
            # Normal return or not, the thread is done with us: let it stop
            # retrying a locked file as soon as it notices.
            abandoned.set()


def _copy(failure: BaseException) -> BaseException:
    """A fresh exception for one watch, so tasks never raise one object together."""
    if isinstance(failure, trio.ClosedResourceError):
        copy: BaseException = trio.ClosedResourceError(str(failure))
    elif isinstance(failure, RegistryUnavailable):
        copy = RegistryUnavailable(str(failure))
    else:
        return failure  # a callback's own exception reaches only its own watch
    copy.__cause__ = failure
    return copy
