"""Service Center's wire shapes: error codes, instance documents, endpoints. Sans-IO.

Split from `servicecomb.py` so the request logic there stays readable; every
function here is a plain transformation with table tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from trimesh.discovery.base import (
    Instance,
    OnChange,
    Registration,
    RegistryError,
    RegistryUnavailable,
    ServiceKey,
    Status,
)
from trimesh.http.client import Response

INVALID_PARAMS = "400001"
SERVICE_EXISTS = "400010"
SERVICE_MISSING = "400012"
INSTANCE_MISSING = "400017"
VERSION_MISSING = "400026"
_GONE = (SERVICE_MISSING, INSTANCE_MISSING)


class ServiceCenterError(RegistryError):
    """Service Center refused a request (4xx); `code` is its ``errorCode``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status}, errorCode {code}: {message}")
        self.status = status
        self.code = code


def error_of(resp: Response) -> ServiceCenterError:
    """The error a non-2xx Service Center response carries."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return ServiceCenterError(resp.status, "", resp.body[:200].decode("utf-8", "replace"))
    detail = data.get("detail") or ""
    message = str(data.get("errorMessage", "")) + (f" ({detail})" if detail else "")
    return ServiceCenterError(resp.status, str(data.get("errorCode", "")), message)


def parse_endpoint(endpoint: str) -> tuple[str, int] | None:
    """``rest://host:port?sslEnabled=false`` → (host, port); None for other schemes."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "rest" or not parts.hostname or port is None:
        return None
    return parts.hostname, port


def instance_from_json(data: Mapping[str, Any], key: ServiceKey, env: str) -> Instance | None:
    """A provider instance from Service Center JSON; None when it has no rest endpoint."""
    service_id, instance_id = data.get("serviceId"), data.get("instanceId")
    addresses = (parse_endpoint(str(ep)) for ep in data.get("endpoints") or ())
    address = next((a for a in addresses if a is not None), None)
    if not service_id or not instance_id or address is None:
        return None
    # STARTING, TESTING and OUTOFSERVICE are not routable either.
    status: Status = "UP" if data.get("status", "UP") == "UP" else "DOWN"
    return Instance(
        service=key.name,
        instance_id=f"{service_id}/{instance_id}",
        host=address[0],
        port=address[1],
        app=key.app,
        version=str(data.get("version", "")),
        environment=env,
        status=status,
        tags=data.get("properties") or {},
    )


def instance_body(me: Registration, hostname: str, instance_id: str | None) -> dict[str, Any]:
    """The ``{"instance": ...}`` body registering `me`; `instance_id` renews a known one."""
    interval = max(1, math.ceil(me.heartbeat_interval))
    times = max(1, math.ceil(me.lease_ttl / interval) - 1)
    body: dict[str, Any] = {
        "hostName": hostname[:64] or me.host,
        "endpoints": [f"{me.endpoint}?sslEnabled=false"],
        "status": "UP",
        "properties": dict(me.metadata),
        "healthCheck": {"mode": "push", "interval": interval, "times": times},
    }
    if instance_id:
        body["instanceId"] = instance_id
    return {"instance": body}


def split_id(instance_id: str) -> tuple[str, str]:
    """``"<serviceId>/<instanceId>"`` → the two ids; ValueError when malformed."""
    service_id, sep, instance = instance_id.partition("/")
    if not (service_id and sep and instance):
        raise ValueError(f"not a servicecomb instance id: {instance_id!r}")
    return service_id, instance


def _content(instances: Sequence[Instance]) -> list[tuple[object, ...]]:
    # Instance equality ignores tags; a watcher must still see metadata changes.
    return sorted(
        (i.instance_id, i.host, i.port, i.status, i.version, sorted(i.tags.items()))
        for i in instances
    )


class _Watch:
    """One watched key: its instance map, and the last snapshot handed to `on_change`."""

    def __init__(self, key: ServiceKey, on_change: OnChange) -> None:
        self.key = key
        self.on_change = on_change
        self.current: dict[str, Instance] = {}
        self._published: list[tuple[object, ...]] | None = None

    def reset(self, instances: Sequence[Instance]) -> None:
        self.current = {i.instance_id: i for i in instances}
        self.publish()

    def publish(self) -> None:
        content = _content(list(self.current.values()))
        if content != self._published:
            self._published = content
            self.on_change(list(self.current.values()))

    def apply(self, message: str | bytes, env: str) -> bool:
        """Apply one watcher event; False means "find again" (EXPIRE).

        Error handling: a message that is not a JSON event is Service Center
        refusing the watch (e.g. our consumer id is unknown): `RegistryUnavailable`.
        """
        try:
            event = json.loads(message)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise RegistryUnavailable(f"Service Center ended the watch: {message[:200]!r}")
        key = event.get("key") or {}
        if key.get("appId") != self.key.app or self.key.name not in (
            key.get("serviceName"),
            key.get("alias"),
        ):
            return True
        if event.get("action") == "EXPIRE":
            return False
        data = event.get("instance") or {}
        instance_id = f"{data.get('serviceId')}/{data.get('instanceId')}"
        instance = instance_from_json(data, self.key, env)
        if event.get("action") in ("CREATE", "UPDATE") and instance is not None:
            self.current[instance_id] = instance
        else:
            self.current.pop(instance_id, None)
        return True
