"""The config centre: configuration keys under ``<registry.prefix>/config/`` in etcd, watched.

A key names a config key path below ``config/``, one path segment per level,
and its value is YAML (or JSON) for that place::

    /trimesh/config/policies                    → the whole `policies` section
    /trimesh/config/policies/services/orders    → policies.services.orders
    /trimesh/config/routes/orders               → routes.orders (a list of rules)
    /trimesh/config/log_level                   → "debug"

Keys merge into one raw layer, shorter keys first, so a deeper key overrides
what a section key says about the same place. Only reloadable sections may
come from here; `decode_layer` (pure, run in a worker thread) turns the keys
into that layer and names every bad key. `ConfigCentre.run` keeps
`entries()` current with a range read and a watch stream, as the etcd
registry does, and calls `on_change` when what the keys hold changed.

Deadlines: the range read and each stream open are bounded by `call_timeout`;
a stream silent for twice `watch_interval` is reopened from the last revision.
Error handling: when etcd cannot be reached (at start too), the failure is
logged once per outage and the read retried with jittered exponential
backoff; the keys last read stay in force meanwhile.
Resource handling: at most one etcd connection at a time, closed on exit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import attrs
import trio
import yaml

from trimesh.config.load import merge
from trimesh.config.model import Address, RegistryConfig
from trimesh.discovery._etcd_api import EtcdError, EtcdGateway, JsonObject, b64, prefix_end, unb64
from trimesh.discovery._failover import call_deadline
from trimesh.discovery.base import RegistryUnavailable
from trimesh.discovery.etcd import (
    MAX_IDLE_BREAKS,
    WATCH_INTERVAL,
    StreamOutcome,
    _entries,
    _int,
    _key_of,
    _revision,
    follow_stream,
)

log = logging.getLogger("trimesh.config.centre")

Raw = dict[str, Any]
Entries = tuple[tuple[bytes, bytes], ...]
BACKOFF = (0.5, 30.0)


@attrs.frozen
class CentreLayer:
    """The raw config the centre's keys add, the problems found, and where each path came from."""

    raw: Raw
    problems: tuple[str, ...] = ()
    # Dotted config path ("policies.services.orders") → the etcd key that set it.
    origins: Mapping[str, str] = attrs.field(factory=dict)

    def annotate(self, problem: str) -> str:
        """`problem` ("path.to.key: what") with the centre key it came from, if it did."""
        found = [
            path
            for path in self.origins
            if problem.startswith(path) and problem[len(path) : len(path) + 1] in (".", ":", "[")
        ]
        if not found:
            return problem
        return f"{problem} (config centre key {self.origins[max(found, key=len)]})"


def decode_layer(
    entries: Iterable[tuple[bytes, bytes]], prefix: bytes, allowed: Collection[str]
) -> CentreLayer:
    """Merge the keys under `prefix` into one raw layer; bad keys become problems.

    A key whose value is empty (or only whitespace) counts as absent.
    """
    problems: list[str] = []
    raw: Raw = {}
    origins: dict[str, str] = {}
    decoded = []
    for key, value in entries:
        name = key.decode("utf-8", "replace")
        try:
            path = [unquote(part) for part in key.removeprefix(prefix).decode().split("/")]
        except UnicodeDecodeError:
            path = []
        if not key.startswith(prefix) or not path or not all(path):
            problems.append(f"{name}: expected a UTF-8 key {prefix.decode()}<section>[/<key>...]")
        elif path[0] not in allowed:
            problems.append(
                f"{name}: {path[0]!r} cannot come from the config centre"
                f" (only {', '.join(sorted(allowed))}; anything else needs a restart)"
            )
        elif value.strip():
            decoded.append((path, name, value))
    for path, name, value in sorted(decoded, key=lambda item: (len(item[0]), item[0])):
        try:
            parsed = yaml.safe_load(value.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(f"{name}: not valid YAML: {_one_line(exc)}")
            continue
        if _put(raw, path, parsed, name, problems):
            origins[".".join(path)] = name
    return CentreLayer(raw, tuple(problems), origins)


def _put(raw: Raw, path: Sequence[str], value: Any, name: str, problems: list[str]) -> bool:
    node = raw
    for depth, part in enumerate(path[:-1]):
        inner = node.setdefault(part, {})
        if not isinstance(inner, dict):
            above = ".".join(path[: depth + 1])
            problems.append(f"{name}: {above} is set to a {type(inner).__name__} by a shorter key")
            return False
        node = inner
    old = node.get(path[-1])
    if isinstance(old, dict) and isinstance(value, dict):
        value = merge(old, value)
    node[path[-1]] = value
    return True


def _one_line(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    return " ".join(str(exc).split())


@attrs.define
class CentreView:
    """Sans-IO: the values of the centre's keys and the last revision seen."""

    values: dict[bytes, bytes] = attrs.field(factory=dict)
    revision: int = 0

    def reset(self, answer: JsonObject) -> bool:
        """Replace everything with a range answer; return whether any value changed."""
        old, self.values = self.values, {}
        self.revision = _revision(answer)
        for kv in _entries(answer, "kvs"):
            self._put(kv)
        return old != self.values

    def apply(self, result: JsonObject) -> bool:
        """Apply one watch response; return whether any value changed."""
        before = dict(self.values)
        events = _entries(result, "events")
        for event in events:
            kv = event.get("kv")
            if event.get("type", "PUT") == "DELETE":
                if (key := _key_of(kv)) is not None:
                    self.values.pop(key, None)
            else:
                self._put(kv)
            if isinstance(kv, dict):
                self.revision = max(self.revision, _int(kv.get("mod_revision")))
        if not events and not result.get("created"):
            self.revision = max(self.revision, _revision(result))  # progress notification
        return before != self.values

    def _put(self, kv: object) -> None:
        key = _key_of(kv)
        if key is None:
            return
        assert isinstance(kv, dict)  # _key_of checked it
        try:
            self.values[key] = unb64(str(kv.get("value", "")))
        except ValueError:
            log.warning("config centre: ignoring %r: its value is not base64", key)


class ConfigCentre:
    """Watches ``<prefix>/config/`` in etcd; `entries()` is what the keys hold now.

    Reuses the registry's `EtcdGateway` (failover, auth). `reachable` is None
    until the first read, then whether the last read or stream worked;
    `last_error` says why not.
    """

    def __init__(
        self,
        endpoints: Sequence[Address],
        *,
        prefix: str = "/trimesh",
        username: str | None = None,
        password: str | None = None,
        call_timeout: float = 5.0,
        watch_interval: float = WATCH_INTERVAL,
        backoff: tuple[float, float] = BACKOFF,
    ) -> None:
        self._api = EtcdGateway(endpoints, username, password)
        self.key_prefix = f"{prefix.rstrip('/')}/config/".encode()
        self._call_timeout = call_timeout
        self._quiet_after = 2 * watch_interval
        self._backoff = backoff
        self._view = CentreView()
        self.reachable: bool | None = None
        self.last_error: str | None = None

    @classmethod
    def for_registry(cls, registry: RegistryConfig, **kwargs: Any) -> ConfigCentre:
        """The centre of an etcd registry: its endpoints, credentials, prefix and call deadline."""
        if registry.type != "etcd":
            raise ValueError(f"the config centre needs the etcd registry, not {registry.type}")
        return cls(
            registry.endpoints,
            prefix=registry.prefix,
            username=registry.username,
            password=registry.password,
            call_timeout=registry.call_timeout,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"<ConfigCentre {self.key_prefix.decode()!r} keys={len(self._view.values)}"
            f" revision={self._view.revision} reachable={self.reachable}>"
        )

    def entries(self) -> Entries:
        """A snapshot of (key, value) for every key, for `decode_layer`."""
        return tuple(sorted(self._view.values.items()))

    def status(self) -> dict[str, Any]:
        """JSON-able state for the admin API."""
        return {
            "prefix": self.key_prefix.decode(),
            "keys": sorted(k.decode("utf-8", "replace") for k in self._view.values),
            "revision": self._view.revision,
            "reachable": self.reachable,
            "last_error": self.last_error,
        }

    async def run(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read, then follow the keys until cancelled; `started` after the first read attempt.

        Error handling: an unreachable etcd is logged and retried with backoff,
        never raised, so the sidecar keeps its file config meanwhile.
        """
        delay, started = self._backoff[0], False
        while True:
            try:
                await self._read(on_change)
                delay = self._backoff[0]
                if not started:
                    started = True
                    task_status.started()
                await self._follow(on_change)
                continue  # compacted: read afresh at once
            except RegistryUnavailable as exc:
                self._down(exc)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    async def _read(self, on_change: Callable[[], None]) -> None:
        key = self.key_prefix
        with call_deadline(self._call_timeout, "config centre: read"):
            answer = await self._api.call(
                "/v3/kv/range", {"key": b64(key), "range_end": b64(prefix_end(key))}
            )
        if self.reachable is False:
            log.info("config centre %s reachable again", key.decode())
        self.reachable, self.last_error = True, None
        if self._view.reset(answer):
            on_change()

    def _down(self, exc: RegistryUnavailable) -> None:
        if self.reachable is not False:
            log.warning(
                "config centre %s unreachable: %s; keeping the config in force and retrying",
                self.key_prefix.decode(),
                exc,
            )
        else:
            log.debug("config centre still unreachable: %s", exc)
        self.reachable, self.last_error = False, str(exc)

    async def _follow(self, on_change: Callable[[], None]) -> None:
        """Follow watch streams; return if etcd compacted past us, raise if it is out of reach."""
        auth_retried, idle_breaks = False, 0
        while True:
            seen = self._view.revision
            outcome = await self._stream(on_change)
            if outcome == "compacted":
                log.info("config centre watch fell behind compaction; reading again")
                return
            if outcome == "unauthenticated":
                if auth_retried:
                    raise EtcdError(16, "etcd refused the config centre's token twice")
                self._api.forget_token()
            elif outcome == "broken":
                # A stream that keeps breaking with no progress: back off instead of spinning.
                idle_breaks = 0 if self._view.revision > seen else idle_breaks + 1
                if idle_breaks >= MAX_IDLE_BREAKS:
                    raise RegistryUnavailable("config centre watch keeps breaking")
            else:  # quiet: the stream worked and merely had nothing to say
                idle_breaks = 0
            auth_retried = outcome == "unauthenticated"

    async def _stream(self, on_change: Callable[[], None]) -> StreamOutcome:
        return await follow_stream(
            self._api,
            self.key_prefix,
            self._view,
            on_change,
            call_timeout=self._call_timeout,
            quiet_after=self._quiet_after,
            what="config centre watch",
        )
