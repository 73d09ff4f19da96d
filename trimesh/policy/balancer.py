"""Instance selection: pure, synchronous, per service."""

from __future__ import annotations

from collections.abc import Sequence

from trimesh.discovery.base import Instance


class RoundRobin:
    """Cycles through the instances of each service independently."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, service: str, instances: Sequence[Instance]) -> Instance:
        """Pick one of `instances` (non-empty)."""
        i = self._next.get(service, 0)
        self._next[service] = i + 1
        return instances[i % len(instances)]
