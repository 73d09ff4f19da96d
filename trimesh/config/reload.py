"""Live reload: rebuild the config on SIGHUP, a file change or a config-centre change, then swap.

Layers, lowest first: file < environment < CLI flags < config centre (see
docs/reload.md for why the centre is on top). A reload re-reads every layer
and validates the whole result; an invalid result is rejected as a whole
(one warning per problem, with its key path) and the running config stays.
A valid one is compared with the running config section by section: changed
`RELOADABLE` sections go to `apply` in one new `Config` whose other sections
keep their running values (the listeners and the registry are not rebuilt);
every other changed section is logged as needing a restart, once per change.

Triggers arriving close together (an editor's several writes, a burst of
centre keys) are merged: a reload starts once no trigger came for
`debounce` seconds, or at the latest `max_settle` after the first one.
Nothing here blocks the event loop: the file is stat'ed, read and parsed in
worker threads that a cancellation abandons.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from trimesh.config.centre import ConfigCentre, Entries, decode_layer
from trimesh.config.load import ConfigError, Raw, build, from_env, merge, read_yaml
from trimesh.config.model import Config

log = logging.getLogger("trimesh.config.reload")

# Top-level sections a running sidecar can take over without a restart.
RELOADABLE = frozenset({"routes", "policies", "inbound", "egress", "log_level"})
POLL_INTERVAL = 1.0
DEBOUNCE = 0.1
# A burst that never pauses still reloads this long after it began.
MAX_SETTLE = 1.0

RawSource = Callable[[], Raw]
Fingerprint = tuple[int, int, int, int, int]


def local_layers(
    path: Path | None, cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> RawSource:
    """file < environment < CLI, merged as `load` does, re-read on every call (blocking I/O).

    The environment is captured now: a process's own environment does not
    change under it, and a reload must not pick up what a library set later.
    """
    env_now = dict(os.environ if env is None else env)
    cli_now = dict(cli or {})

    def read() -> Raw:
        raw = read_yaml(path) if path else {}
        return merge(merge(raw, from_env(env_now)), cli_now)

    return read


def fingerprint(path: Path) -> Fingerprint | None:
    """What changes when the file is rewritten in place or replaced by a rename; None if absent.

    The inode catches write-then-rename (and a Kubernetes ConfigMap's symlink
    swap, as stat follows links) even when size and mtime happen to match.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.frozen
class Reconciled:
    """What a valid reload means for the running sidecar."""

    # The config to apply (running config + changed reloadable sections); None: nothing to do.
    config: Config | None
    changed: tuple[str, ...]
    # Sections that differ from the running ones and changed since the previous load.
    restart: tuple[str, ...]


def reconcile(running: Config, loaded: Config, previous: Config) -> Reconciled:
    """Split what `loaded` changes into what to apply now and what waits for a restart."""
    names = [field.name for field in attrs.fields(Config)]
    differs = [name for name in names if getattr(loaded, name) != getattr(running, name)]
    changed = tuple(name for name in differs if name in RELOADABLE)
    restart = tuple(
        name
        for name in differs
        if name not in RELOADABLE and getattr(loaded, name) != getattr(previous, name)
    )
    config = attrs.evolve(running, **{n: getattr(loaded, n) for n in changed}) if changed else None
    return Reconciled(config, changed, restart)


class ConfigWatcher:
    """Reloads the config when asked to (`trigger`), on SIGHUP, or when its sources change.

    `source` re-reads the local layers (see `local_layers`); `apply` receives
    each new config and swaps it in synchronously. `path` is polled every
    `poll_interval` seconds; `centre` adds its keys as the top layer.
    Counters for the admin API: `reloads` (valid loads), `applied`,
    `rejected`, `last_error`, `last_reload_at` (Unix time).
    """

    def __init__(
        self,
        source: RawSource,
        current: Config,
        apply: Callable[[Config], None],
        *,
        path: Path | None = None,
        centre: ConfigCentre | None = None,
        signals: bool = False,
        poll_interval: float = POLL_INTERVAL,
        debounce: float = DEBOUNCE,
        max_settle: float = MAX_SETTLE,
    ) -> None:
        self.current = current
        self._source = source
        self._apply = apply
        self._path = path
        self.centre = centre
        self._signals = signals
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._max_settle = max(max_settle, debounce)
        self._loaded = current  # the last valid load, for "changed since" and pending restarts
        self._reasons: list[str] = []
        self._wake = trio.Event()
        self._seen: Fingerprint | None = None
        self.reloads = 0
        self.applied = 0
        self.rejected = 0
        self.last_error: str | None = None
        self.last_reload_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<ConfigWatcher path={self._path} reloads={self.reloads} applied={self.applied}"
            f" rejected={self.rejected} pending={self.pending}>"
        )

    @property
    def pending(self) -> bool:
        """Whether a trigger is waiting for its reload."""
        return bool(self._reasons)

    def trigger(self, reason: str = "requested") -> None:
        """Ask for a reload (merged with others that arrive within the debounce window)."""
        if reason not in self._reasons:
            self._reasons.append(reason)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """JSON-able state for the admin API."""
        loaded, running = self._loaded, self.current
        return {
            "reloads": self.reloads,
            "applied": self.applied,
            "rejected": self.rejected,
            "last_error": self.last_error,
            "last_reload_at": self.last_reload_at,
            "pending_restart": [
                field.name
                for field in attrs.fields(Config)
                if getattr(loaded, field.name) != getattr(running, field.name)
            ],
            "centre": None if self.centre is None else self.centre.status(),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; `started` once the sources were read and checked once.

        That first reload closes the gap between the startup load and the
        first poll, and applies the centre's keys before traffic starts. The
        centre's first read waits at most `registry.call_timeout`.
        """
        async with trio.open_nursery() as nursery:
            if self._signals:
                await nursery.start(self._sighup)
            if self._path is not None:
                self._seen = await trio.to_thread.run_sync(
                    fingerprint, self._path, abandon_on_cancel=True
                )
                nursery.start_soon(self._poll_file, self._path)
            if self.centre is not None:
                await nursery.start(self.centre.run, self.trigger)
            # What the centre's first read triggered is part of this first reload.
            self._reasons.clear()
            self._wake = trio.Event()
            await self._reload("start")
            nursery.start_soon(self._reload_loop)
            task_status.started()

    async def _sighup(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as received:
            task_status.started()
            async for _ in received:
                self.trigger("SIGHUP")

    async def _poll_file(self, path: Path) -> None:
        missing = False
        while True:
            await trio.sleep(self._poll_interval)
            seen = await trio.to_thread.run_sync(fingerprint, path, abandon_on_cancel=True)
            if seen is None:
                # Mid-replacement, or deleted: either way the running config stays.
                if not missing:
                    log.warning("config file %s is gone; keeping the running config", path)
                missing = True
                continue
            missing = False
            if seen != self._seen:
                self._seen = seen
                self.trigger("file changed")

    async def _reload_loop(self) -> None:
        while True:
            await self._wake.wait()
            await self._settle()
            reasons = ", ".join(self._reasons)
            self._reasons.clear()
            await self._reload(reasons)

    async def _settle(self) -> None:
        """Return once no trigger came for `debounce` seconds, or `max_settle` after the first."""
        latest = trio.current_time() + self._max_settle
        while True:
            self._wake = trio.Event()
            with trio.move_on_at(min(trio.current_time() + self._debounce, latest)) as quiet:
                await self._wake.wait()
            if quiet.cancelled_caught or trio.current_time() >= latest:
                return

    async def _reload(self, why: str) -> None:
        entries = self.centre.entries() if self.centre is not None else None
        try:
            loaded = await trio.to_thread.run_sync(self._build, entries, abandon_on_cancel=True)
        except ConfigError as exc:
            self.rejected += 1
            self.last_error = "; ".join(exc.problems)
            for problem in exc.problems:
                log.warning("config reload rejected: %s", problem)
            return
        self.reloads += 1
        self.last_error = None
        self.last_reload_at = time.time()
        result = reconcile(self.current, loaded, self._loaded)
        self._loaded = loaded
        for name in result.restart:
            log.warning("%s changed: needs a restart to take effect", name)
        if result.config is None:
            log.debug("config reload (%s): no reloadable change", why)
            return
        try:
            self._apply(result.config)
        except Exception:
            log.exception("config reload (%s): applying the new config failed", why)
            return
        self.current = result.config
        self.applied += 1
        log.info("config reloaded (%s): %s", why, ", ".join(result.changed))

    def _build(self, entries: Entries | None) -> Config:
        """Read the layers and validate them (runs in a worker thread). Raises `ConfigError`."""
        raw = self._source()
        if self.centre is None or entries is None:
            return build(raw)
        layer = decode_layer(entries, self.centre.key_prefix, RELOADABLE)
        if layer.problems:
            raise ConfigError(list(layer.problems))
        try:
            return build(merge(raw, layer.raw))
        except ConfigError as exc:
            raise ConfigError([layer.annotate(problem) for problem in exc.problems]) from None
