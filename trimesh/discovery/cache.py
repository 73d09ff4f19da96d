"""The per-service instance cache the request path reads (no registry I/O per request)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from trimesh.discovery.base import Instance
from trimesh.discovery.trust import BASELINE, InstanceFilter

log = logging.getLogger("trimesh.discovery.cache")


class InstanceCache:
    """Instances per service name, replaced whole on every change (never mutated).

    `lookup` (the request path) returns only UP instances the trust filter
    accepts; `all` and `snapshot` (the admin view) return everything the
    registry reported. Each rejected instance is logged once at WARNING when
    it first appears rejected.
    """

    def __init__(self, instance_filter: InstanceFilter = BASELINE) -> None:
        self._filter = instance_filter
        self._services: dict[str, tuple[Instance, ...]] = {}
        self._up: dict[str, tuple[Instance, ...]] = {}
        # service → {(instance id, host, port): reason} currently refused.
        self._rejected: dict[str, dict[tuple[str, str, int], str]] = {}

    def __repr__(self) -> str:
        counts = {name: len(v) for name, v in self._services.items()}
        refused = sum(len(r) for r in self._rejected.values())
        return f"<InstanceCache {counts} rejected={refused}>"

    @property
    def instance_filter(self) -> InstanceFilter:
        return self._filter

    def set_filter(self, instance_filter: InstanceFilter) -> None:
        """Use `instance_filter` from now on, re-filtering every cached service."""
        self._filter = instance_filter
        for service, snapshot in self._services.items():
            self._refilter(service, snapshot)

    def lookup(self, service: str) -> tuple[Instance, ...] | None:
        """The usable UP instances of `service`; None if the service is unknown."""
        return self._up.get(service) if service in self._services else None

    def all(self, service: str) -> tuple[Instance, ...]:
        """Every instance the registry reported for `service`, usable or not."""
        return self._services.get(service, ())

    def rejected(self, service: str) -> Mapping[str, str]:
        """Instance id → why the filter refuses it, for the admin view."""
        return {key[0]: reason for key, reason in self._rejected.get(service, {}).items()}

    def update(self, service: str, instances: Iterable[Instance]) -> None:
        snapshot = tuple(instances)
        self._services[service] = snapshot
        self._refilter(service, snapshot)

    def forget(self, service: str) -> None:
        self._services.pop(service, None)
        self._up.pop(service, None)
        self._rejected.pop(service, None)

    def snapshot(self) -> Mapping[str, Sequence[Instance]]:
        return dict(self._services)

    def _refilter(self, service: str, snapshot: tuple[Instance, ...]) -> None:
        before = self._rejected.get(service, {})
        rejected: dict[tuple[str, str, int], str] = {}
        up: list[Instance] = []
        for instance in snapshot:
            reason = self._filter.rejection(instance)
            if reason is None:
                if instance.status == "UP":
                    up.append(instance)
                continue
            key = (instance.instance_id, instance.host, instance.port)
            rejected[key] = reason
            if before.get(key) != reason:
                log.warning(
                    "registry: not using instance %s of %s at %s: %s",
                    instance.instance_id,
                    service,
                    instance.endpoint,
                    reason,
                )
        self._up[service] = tuple(up)
        self._rejected[service] = rejected
