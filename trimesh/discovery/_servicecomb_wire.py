"""Service Center's wire shapes: error codes, instance documents, endpoints. Sans-IO.

Split from `servicecomb.py` so the request logic there stays readable; every
function here is a plain transformation with table tests. An instance of the
wrong shape is skipped with a warning (it is one bad row, not a broken
registry); an answer of the wrong shape raises `RegistryUnavailable`.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger("trimesh.discovery.servicecomb")

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


def field(answer: Mapping[str, Any], name: str) -> str:
    """A non-empty string field of a Service Center answer (an id, a token).

    Error handling: missing or not a string raises `RegistryUnavailable`.
    """
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise RegistryUnavailable(f"Service Center answer has no {name}: {answer!r:.200}")
    return value


class _Malformed(ValueError):
    """An instance document of the wrong shape."""


def instances_from(data: object, key: ServiceKey, env: str) -> tuple[Instance, ...]:
    """The routable instances in a find answer's ``instances`` (absent when there are none)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise RegistryUnavailable(f"Service Center instances are not a list: {data!r:.200}")
    parsed = (instance_from_json(d, key, env) for d in data)
    return tuple(i for i in parsed if i is not None)


def instance_from_json(data: object, key: ServiceKey, env: str) -> Instance | None:
    """A provider instance from Service Center JSON; None when it has no rest endpoint.

    A malformed instance is None too, with a warning.
    """
    try:
        return _instance(data, key, env)
    except _Malformed as exc:
        log.warning("Service Center: ignoring a malformed instance of %s: %s", key, exc)
        return None


def _instance(data: object, key: ServiceKey, env: str) -> Instance | None:
    if not isinstance(data, dict):
        raise _Malformed(f"not an object: {data!r:.200}")
    service_id, instance_id = data.get("serviceId"), data.get("instanceId")
    endpoints, tags = data.get("endpoints") or [], data.get("properties") or {}
    if not isinstance(endpoints, list) or not isinstance(tags, dict):
        raise _Malformed(f"endpoints must be a list and properties an object: {data!r:.200}")
    addresses = (parse_endpoint(ep) for ep in endpoints if isinstance(ep, str))
    address = next((a for a in addresses if a is not None), None)
    if not service_id or not instance_id or address is None:
        return None
    if not isinstance(service_id, str) or not isinstance(instance_id, str):
        raise _Malformed(f"ids must be strings: {service_id!r}, {instance_id!r}")
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
        tags=tags,
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
        key = event.get("key")
        if not isinstance(key, dict):
            log.warning("Service Center: ignoring a watch event without a key: %.200r", event)
            return True
        if key.get("appId") != self.key.app or self.key.name not in (
            key.get("serviceName"),
            key.get("alias"),
        ):
            return True
        if event.get("action") == "EXPIRE":
            return False
        data = event.get("instance")
        if not isinstance(data, dict):
            # We cannot tell which instance changed: find the whole list again.
            log.warning("Service Center: watch event without an instance: %.200r", event)
            return False
        instance_id = f"{data.get('serviceId')}/{data.get('instanceId')}"
        instance = instance_from_json(data, self.key, env)
        if event.get("action") in ("CREATE", "UPDATE") and instance is not None:
            self.current[instance_id] = instance
        else:
            self.current.pop(instance_id, None)
        return True
