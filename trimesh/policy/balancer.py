"""Instance selection: pure, synchronous, per service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class RoundRobin:
    """Cycles through the candidates of each service independently."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, service: str, candidates: Sequence[T]) -> T:
        """Pick one of `candidates` (non-empty)."""
        i = self._next.get(service, 0)
        self._next[service] = i + 1
        return candidates[i % len(candidates)]
