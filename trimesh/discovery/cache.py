"""The per-service instance cache the request path reads (no registry I/O per request)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from trimesh.discovery.base import Instance


class InstanceCache:
    """Instances per service name, replaced whole on every change (never mutated)."""

    def __init__(self) -> None:
        self._services: dict[str, tuple[Instance, ...]] = {}
        self._up: dict[str, tuple[Instance, ...]] = {}

    def __repr__(self) -> str:
        counts = {name: len(v) for name, v in self._services.items()}
        return f"<InstanceCache {counts}>"

    def lookup(self, service: str) -> tuple[Instance, ...] | None:
        """The UP instances of `service`; None if the service is unknown."""
        return self._up.get(service) if service in self._services else None

    def all(self, service: str) -> tuple[Instance, ...]:
        return self._services.get(service, ())

    def update(self, service: str, instances: Iterable[Instance]) -> None:
        snapshot = tuple(instances)
        self._services[service] = snapshot
        self._up[service] = tuple(i for i in snapshot if i.status == "UP")

    def forget(self, service: str) -> None:
        self._services.pop(service, None)
        self._up.pop(service, None)

    def snapshot(self) -> Mapping[str, Sequence[Instance]]:
        return dict(self._services)
