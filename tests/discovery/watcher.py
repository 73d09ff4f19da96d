"""A recording `on_change` callback shared by the registry backend tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from trimesh.discovery.base import Instance


class Watcher:
    """Records every snapshot a watch delivers; `wait_for` blocks until one matches."""

    def __init__(self) -> None:
        self.snapshots: list[list[Instance]] = []
        self._changed = trio.Event()

    def __call__(self, snapshot: Sequence[Instance]) -> None:
        self.snapshots.append(list(snapshot))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[Instance]], object]) -> list[Instance]:
        while not (self.snapshots and predicate(self.snapshots[-1])):
            await self._changed.wait()
        return self.snapshots[-1]
