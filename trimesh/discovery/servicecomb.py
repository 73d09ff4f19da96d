"""The `servicecomb` registry: Apache ServiceComb Service Center's v4 REST API.

This is the registry ServiceComb Mesher itself uses. `register` creates-or-gets
the micro-service (app/name/version/env) and registers one instance with a
``push`` health check; `instances` finds providers with ``rev=`` caching (304
means unchanged); `watch` follows the consumer's websocket; `services` lists
the micro-services and keeps the names that have instances.

Service Center behaviour this relies on (apache/servicecomb-service-center,
error codes from go-chassis/cari ``discovery/error.go``):

* errors are ``{"errorCode": "400017", "errorMessage": ..., "detail": ...}``
  with HTTP status ``errorCode // 1000``;
* creating a service that already exists answers 200 with the existing id;
* a lease lasts ``interval * (times + 1)`` seconds and the server raises
  interval to at least 5 s and times to at least 3;
* registering with a known ``instanceId`` renews it instead of duplicating it,
  which makes `register` idempotent;
* the watcher websocket sends no snapshot, only events for providers the
  consumer has *found* (a find records the dependency); ``EXPIRE`` carries no
  instance and means "find again"; an unknown consumer gets one plain-text
  message instead of JSON.

Until this registry has registered (so has no consumer service id), `watch`
polls `instances` every `POLL_INTERVAL` seconds instead, and switches to the
websocket as soon as `register` succeeds.

Deadlines: the caller bounds each call it makes; `watch` bounds what it does
on its own (each find, the websocket's connect and handshake) by
`call_timeout`. A websocket quiet for `RESYNC_INTERVAL` is pinged, and one
that does not answer the ping within `call_timeout` is given up
(`RegistryUnavailable`; the caller reconnects), so a connection that went
dead without a FIN is noticed.

Instance ids are ``"<serviceId>/<instanceId>"``, for ours and for providers'.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from trimesh.discovery._failover import EndpointOrder, call_deadline, first_answer
from trimesh.discovery._servicecomb_wire import (
    _GONE,
    SERVICE_EXISTS,
    SERVICE_MISSING,
    VERSION_MISSING,
    ServiceCenterError,
    _Watch,
    error_of,
    field,
    instance_body,
    instances_from,
    split_id,
)
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    OnChange,
    Registration,
    RegistryError,
    RegistryUnavailable,
    ServiceKey,
    Status,
)
from trimesh.http.client import HTTPClientError, Response, request

__all__ = ["POLL_INTERVAL", "ServiceCenterError", "ServiceCombRegistry"]

# Watch falls back to polling (rev-cached, so mostly 304s) until we have registered.
POLL_INTERVAL = 5.0
# While watching, find again this often (a 304 when nothing changed). Service
# Center only pushes events for providers the consumer has found, so a
# service that did not exist at the first find is only ever seen this way;
# go-chassis keeps a periodic pull beside its watch for the same reason.
RESYNC_INTERVAL = 30.0


class ServiceCombRegistry:
    """A `Registry` on Service Center; `endpoints` are tried in turn when one fails or hangs.

    Error handling: connection failures, 5xx and answers of the wrong shape
    raise `RegistryUnavailable`; a heartbeat or status change for an instance
    Service Center no longer knows raises `LeaseExpired`; other refusals raise
    `ServiceCenterError`. Malformed instances are skipped with a warning.
    Resource handling: one connection per request; nothing is held between calls.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        project: str = "default",
        username: str | None = None,
        password: str | None = None,
        call_timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one Service Center endpoint is required")
        self._order = EndpointOrder(endpoints)
        self._call_timeout = call_timeout
        self._prefix = f"/v4/{quote(project, safe='')}/registry"
        self._credentials = None if username is None else (username, password or "")
        self._token: str | None = None
        self._hostname = socket.gethostname()
        # Our own micro-service: the consumer id that find and watch present.
        self._consumer_id: str | None = None
        self._environment = ""
        self._registered_event = trio.Event()
        # (serviceId, endpoint) → (instanceId, metadata) of what we registered.
        self._registered: dict[tuple[str, str], tuple[str, Mapping[str, str]]] = {}
        self._found: dict[ServiceKey, tuple[str, tuple[Instance, ...]]] = {}

    def __repr__(self) -> str:
        host, port = self._order.current
        return (
            f"<ServiceCombRegistry {host}:{port}{self._prefix} consumer={self._consumer_id}"
            f" cached={len(self._found)}>"
        )

    async def __aenter__(self) -> ServiceCombRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def register(self, me: Registration) -> str:
        service_id = await self._service_id(me)
        known = (service_id, me.endpoint)
        previous = self._registered.get(known)
        body = instance_body(me, self._hostname, previous[0] if previous else None)
        path = f"/microservices/{service_id}/instances"
        instance_id = field(self._ok(await self._call("POST", path, json_body=body)), "instanceId")
        if previous is not None and previous[1] != me.metadata:
            # Service Center renews a known instance id without reading the body.
            props = {"properties": dict(me.metadata)}
            resp = await self._call("PUT", f"{path}/{instance_id}/properties", json_body=props)
            if resp.status != 200:
                raise error_of(resp)
        self._registered[known] = (instance_id, me.metadata)
        self._consumer_id, self._environment = service_id, me.environment
        self._registered_event.set()
        return f"{service_id}/{instance_id}"

    async def heartbeat(self, instance_id: str) -> None:
        service_id, instance = split_id(instance_id)
        path = f"/microservices/{service_id}/instances/{instance}/heartbeat"
        self._check(await self._call("PUT", path), instance_id)

    async def set_status(self, instance_id: str, status: Status) -> None:
        service_id, instance = split_id(instance_id)
        path = f"/microservices/{service_id}/instances/{instance}/status?value={status}"
        self._check(await self._call("PUT", path), instance_id)

    async def deregister(self, instance_id: str) -> None:
        service_id, instance = split_id(instance_id)
        resp = await self._call("DELETE", f"/microservices/{service_id}/instances/{instance}")
        if resp.status != 200 and error_of(resp).code not in _GONE:
            raise error_of(resp)  # missing is fine: the caller wanted it gone
        self._registered = {k: v for k, v in self._registered.items() if v[0] != instance}

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        return list(await self._find(key))

    async def services(self, app: str) -> Sequence[str]:
        """The names of `app`'s services that have an instance `instances` would return, sorted.

        Service Center keeps a micro-service after its last instance is gone,
        so the list of micro-services (ours: in our environment) is only the
        candidates; each name is then found anonymously, which records no
        dependency for our consumer.
        """
        listed = self._ok(await self._call("GET", "/microservices")).get("services") or []
        if not isinstance(listed, list):
            raise RegistryUnavailable(f"Service Center services are not a list: {listed!r:.200}")
        names = sorted(
            {
                str(service["serviceName"])
                for service in listed
                if isinstance(service, dict)
                and isinstance(service.get("serviceName"), str)
                and service["serviceName"]
                and service.get("appId") == app
                and service.get("environment", "") == self._environment
            }
        )
        return [name for name in names if await self._has_instances(ServiceKey(name, app))]

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        watch = _Watch(key, on_change)
        while self._consumer_id is None:
            await self._find_into(watch)
            with trio.move_on_after(POLL_INTERVAL):
                await self._registered_event.wait()
        await self._watch_socket(watch, self._consumer_id)

    async def aclose(self) -> None:
        self._token = None

    # -- the pieces -------------------------------------------------------------

    async def _service_id(self, me: Registration) -> str:
        """Create-or-get our micro-service; Service Center answers an existing id on create."""
        query = urlencode(
            {
                "type": "microservice",
                "appId": me.app,
                "serviceName": me.service,
                "version": me.version,
                "env": me.environment,
            }
        )
        resp = await self._call("GET", f"/existence?{query}")
        if resp.status == 200:
            return field(self._ok(resp), "serviceId")
        if error_of(resp).code not in (SERVICE_MISSING, VERSION_MISSING):
            raise error_of(resp)
        service = {
            "appId": me.app,
            "serviceName": me.service,
            "version": me.version,
            "environment": me.environment,
            "status": "UP",
            "registerBy": "SIDECAR",
        }
        resp = await self._call("POST", "/microservices", json_body={"service": service})
        if resp.status != 200 and error_of(resp).code == SERVICE_EXISTS:
            resp = await self._call("GET", f"/existence?{query}")  # lost a race; read the winner
        return field(self._ok(resp), "serviceId")

    async def _find(self, key: ServiceKey) -> tuple[Instance, ...]:
        """Find `key`'s instances, answering from the cache when Service Center says 304."""
        cached = self._found.get(key)
        query = {"appId": key.app, "serviceName": key.name, "version": "0+"}
        query["env"] = self._environment
        if cached is not None:
            query["rev"] = cached[0]
        consumer = self._consumer_id
        headers = {"x-consumerid": consumer} if consumer else {}
        resp = await self._call("GET", f"/instances?{urlencode(query)}", headers=headers)
        if resp.status == 400 and error_of(resp).code == SERVICE_MISSING and consumer:
            # Either the provider or *we* are unknown (Service Center lost our
            # registration; the heartbeat loop will register again). Ask anonymously.
            resp = await self._call("GET", f"/instances?{urlencode(query)}")
        if resp.status == 304 and cached is not None:
            return cached[1]
        if resp.status == 400 and error_of(resp).code == SERVICE_MISSING:
            self._found.pop(key, None)
            return ()
        instances = instances_from(self._ok(resp).get("instances"), key, self._environment)
        rev = resp.headers.get("x-resource-revision", "")
        if rev:
            self._found[key] = (rev, instances)
        return instances

    async def _has_instances(self, key: ServiceKey) -> bool:
        query = {"appId": key.app, "serviceName": key.name, "version": "0+"}
        query["env"] = self._environment
        resp = await self._call("GET", f"/instances?{urlencode(query)}")
        if resp.status == 400 and error_of(resp).code == SERVICE_MISSING:
            return False  # deleted since it was listed
        return bool(instances_from(self._ok(resp).get("instances"), key, self._environment))

    async def _find_into(self, watch: _Watch) -> None:
        with call_deadline(self._call_timeout, "Service Center find"):
            watch.reset(await self._find(watch.key))

    async def _watch_socket(self, watch: _Watch, consumer_id: str) -> None:
        """Follow the consumer's watcher websocket; ends only by raising `RegistryUnavailable`.

        Resource handling: we own the TCP stream (trio-websocket leaves it open
        after an abnormal closure) and the nursery of the websocket's reader task.
        """
        resource = f"{self._prefix}/microservices/{consumer_id}/watcher"

        async def connect(endpoint: tuple[str, int]) -> tuple[trio.SocketStream, str]:
            host, port = endpoint
            return await trio.open_tcp_stream(host, port), f"{host}:{port}"

        with call_deadline(self._call_timeout, "Service Center watch: connect"):
            headers = [(k.encode(), v.encode()) for k, v in (await self._headers()).items()]
            stream, where = await first_answer(
                self._order, connect, retry_on=(OSError,), what="Service Center watch"
            )
        ws: WebSocketConnection | None = None
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with call_deadline(self._call_timeout, "Service Center watch: handshake"):
                        ws = await wrap_client_stream(
                            nursery, stream, where, resource, extra_headers=headers
                        )
                    await self._follow(ws, watch)
                except (HandshakeError, ConnectionClosed, RegistryError) as exc:
                    failure = exc  # raised below, outside the nursery: no ExceptionGroup
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        if ws is None:
            # This member took the connection but not the watch: the restart tries the next.
            self._order.skip()
        if isinstance(failure, ConnectionRejected) and failure.status_code == 401:
            self._token = None
        if isinstance(failure, RegistryUnavailable):
            raise failure
        raise RegistryUnavailable(f"watch on {where} ended: {failure!r}") from failure

    async def _follow(self, ws: WebSocketConnection, watch: _Watch) -> None:
        # Find only after subscribing, so no event falls between the two.
        await self._find_into(watch)
        while True:
            every = POLL_INTERVAL if not watch.current else RESYNC_INTERVAL
            with trio.move_on_after(every):
                message = await ws.get_message()
                if watch.apply(message, self._environment):
                    watch.publish()
                else:
                    await self._find_into(watch)
                continue
            # Quiet for a while: is anyone still there? Then find again, for
            # providers whose events we do not get (see RESYNC_INTERVAL).
            with call_deadline(self._call_timeout, "Service Center watch: ping"):
                await ws.ping()
            await self._find_into(watch)

    def _check(self, resp: Response, instance_id: str) -> None:
        if resp.status == 200:
            return
        error = error_of(resp)
        if error.code in _GONE:
            raise LeaseExpired(f"{instance_id}: {error}") from error
        raise error

    def _ok(self, resp: Response) -> dict[str, Any]:
        if resp.status != 200:
            raise error_of(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise RegistryUnavailable(f"malformed Service Center answer: {exc}") from exc
        if not isinstance(data, dict):
            raise RegistryUnavailable(f"unexpected Service Center answer: {data!r}")
        return data

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One registry request, re-authenticating once on 401; 5xx → `RegistryUnavailable`."""
        for attempt in range(2):
            hdrs = {**(await self._headers()), **(headers or {})}
            resp = await self._send(method, self._prefix + path, hdrs, json_body)
            if resp.status != 401 or self._credentials is None or attempt:
                break
            self._token = None
        if resp.status >= 500:
            raise RegistryUnavailable(f"{method} {path}: {error_of(resp)}")
        return resp

    async def _headers(self) -> dict[str, str]:
        headers = {"x-domain-name": "default"}
        if self._credentials is not None:
            headers["authorization"] = f"Bearer {await self._login()}"
        return headers

    async def _login(self) -> str:
        if self._token is None:
            assert self._credentials is not None
            name, password = self._credentials
            body = {"name": name, "password": password}
            resp = await self._send("POST", "/v4/token", {"x-domain-name": "default"}, body)
            if resp.status >= 500:
                raise RegistryUnavailable(f"POST /v4/token: {error_of(resp)}")
            self._token = field(self._ok(resp), "token")
        return self._token

    async def _send(
        self, method: str, target: str, headers: Mapping[str, str], json_body: Any
    ) -> Response:
        """Send to the endpoint that answered last, moving on to the next on connection errors."""

        async def attempt(endpoint: tuple[str, int]) -> Response:
            return await request(method, *endpoint, target, headers=headers, json_body=json_body)

        return await first_answer(
            self._order, attempt, retry_on=(HTTPClientError,), what="Service Center"
        )
