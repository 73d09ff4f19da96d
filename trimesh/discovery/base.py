"""The registry protocol every backend implements, and its value types.

A backend owns no tasks of its own: the sidecar's root nursery drives
`register` → `heartbeat` loop → `deregister`, and runs one `watch` per
consumed service. Backends translate their transport errors into
`RegistryUnavailable` (retry later) or `LeaseExpired` (register again) at
their boundary, always ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

import attrs

Status = Literal["UP", "DOWN"]


def _frozen_str_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    # A sorted private copy: nobody can mutate the caller's dict through us.
    return dict(sorted((str(k), str(v)) for k, v in (value or {}).items()))


@attrs.frozen
class ServiceKey:
    """Which service to look up: (app, name). `app` scopes names like Mesher's appId."""

    name: str
    app: str = "default"

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"


@attrs.frozen
class Instance:
    """One reachable instance of a service, as the registry reports it.

    Two instances are equal when everything a consumer acts on is equal:
    identity (app, service, instance id), address, status, version,
    environment and tags (route rules match on tags, so a tag change is a
    change). `lease_age` is left out: it ticks on every read without the
    instance changing, so comparing snapshots with ``==`` tells a watcher
    whether to publish. The hash covers every compared field but tags.
    """

    service: str
    instance_id: str
    host: str
    port: int
    app: str = "default"
    version: str = ""
    environment: str = ""
    status: Status = "UP"
    # Compared, but not hashed: a dict is unhashable, and leaving a compared
    # field out of the hash keeps equal instances hashing equal.
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map, hash=False)
    # Seconds since the instance last renewed its lease, when the backend knows.
    lease_age: float | None = attrs.field(default=None, eq=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rest://{host}:{self.port}"


@attrs.frozen
class Registration:
    """What this sidecar registers for its own app."""

    service: str
    host: str
    port: int
    app: str = "default"
    version: str = "0.0.1"
    environment: str = ""
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)
    # Lease length the backend asks for; heartbeats come every `heartbeat_interval`.
    heartbeat_interval: float = 10.0
    lease_ttl: float = 30.0

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.service, self.app)

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rest://{host}:{self.port}"


class RegistryError(Exception):
    """Base of every registry failure."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered with a server error; retry later."""


class LeaseExpired(RegistryError):
    """Our registration is gone on the registry side; register again."""


OnChange = Callable[[Sequence[Instance]], None]


class Registry(Protocol):
    """A service registry backend.

    Error handling: transport failures raise `RegistryUnavailable`; a heartbeat
    for a registration the registry no longer knows raises `LeaseExpired`.
    Resource handling: a backend may hold connections between calls; `aclose`
    releases them. No method starts background tasks.
    """

    async def register(self, me: Registration) -> str:
        """Register (idempotently) and return the instance id."""

    async def heartbeat(self, instance_id: str) -> None:
        """Renew the lease of `instance_id`."""

    async def set_status(self, instance_id: str, status: Status) -> None:
        """Mark our instance UP or DOWN (local app health)."""

    async def deregister(self, instance_id: str) -> None:
        """Remove our instance; missing instances are not an error."""

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        """Every known instance of `key`, UP and DOWN."""

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        """Call `on_change(snapshot)` with the full instance list on every change.

        Calls it once with the current list first. Runs until cancelled or
        until the registry becomes unreachable (`RegistryUnavailable`); the
        caller restarts it with backoff.
        """

    async def aclose(self) -> None:
        """Release any held connections."""
