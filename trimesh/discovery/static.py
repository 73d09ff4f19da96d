"""The `static` registry: instances listed in the config file, never changing."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import trio

from trimesh.config.model import StaticInstance
from trimesh.discovery.base import Instance, OnChange, Registration, ServiceKey, Status


class StaticRegistry:
    """Serves the configured instances; registration is accepted and kept nowhere."""

    def __init__(self, services: Mapping[str, Sequence[StaticInstance]], app: str = "default"):
        self._instances = {
            name: tuple(
                Instance(
                    service=name,
                    instance_id=f"static-{i}",
                    host=item.host,
                    port=item.port,
                    app=app,
                    version=item.version,
                    tags=item.tags,
                )
                for i, item in enumerate(items)
            )
            for name, items in services.items()
        }

    def __repr__(self) -> str:
        return f"<StaticRegistry services={sorted(self._instances)}>"

    async def register(self, me: Registration) -> str:
        return f"static-{uuid.uuid4().hex}"

    async def heartbeat(self, instance_id: str) -> None:
        return None

    async def set_status(self, instance_id: str, status: Status) -> None:
        return None

    async def deregister(self, instance_id: str) -> None:
        return None

    def snapshot(self, name: str) -> tuple[Instance, ...]:
        return self._instances.get(name, ())

    def known(self, key: ServiceKey) -> bool:
        return key.name in self._instances

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        return self._instances.get(key.name, ())

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        on_change(self._instances.get(key.name, ()))
        await trio.sleep_forever()

    async def aclose(self) -> None:
        return None
