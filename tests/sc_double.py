"""A Service Center double: the v4 REST subset trimesh uses, plus the watcher websocket.

A real trio + h11 server on 127.0.0.1 port 0 (`await nursery.start(double.serve)`
returns the port); the websocket shares the port, as on the real server, and is
handed to trio-websocket. Answers follow apache/servicecomb-service-center
(``server/resource/disco``, ``server/service/validator``, ``datasource/etcd/ms.go``)
with codes from go-chassis/cari ``discovery/error.go``: errors are
``{"errorCode": "<code>", ...}`` with status code//1000; creating an existing
service answers its id; a known ``instanceId`` is renewed, not duplicated;
endpoints may be absent but not blank; push leases get interval >= 5, times >= 3
and last interval*(times+1); find answers 400012 for an unknown consumer or
provider, records the consumer's dependency (only found providers' events reach
its watcher) and answers 304 when ``rev`` is current.

Leases run on `clock` and lapse in `sweep()`, which runs before every request;
`expire_now` ends one at once. Not modelled: schemas, tags, rules, aliases, domains.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio
import trio_websocket

MAX_BODY = 1024 * 1024
NAME = re.compile(r"^[a-zA-Z0-9]*$|^[a-zA-Z0-9][a-zA-Z0-9_\-.]*[a-zA-Z0-9]$")
VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
ENVS = {"", "development", "testing", "acceptance", "production"}
INSTANCE_STATUSES = {"UP", "DOWN", "STARTING", "TESTING", "OUTOFSERVICE"}
MESSAGES = {
    400001: "Invalid parameter(s)",
    400012: "Micro-service does not exist",
    400017: "Instance does not exist",
    401201: "Request unauthorized",
    401202: "User name or password is wrong",
    404000: "Not found",
    500011: "Registry service is unavailable",
}


class Fail(Exception):
    """Answer the current request with Service Center error `code`."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@attrs.define
class Service:
    service_id: str
    project: str
    app: str
    name: str
    version: str
    env: str

    @property
    def provider(self) -> tuple[str, str, str, str]:
        return (self.project, self.env, self.app, self.name)


@attrs.define
class Lease:
    body: dict[str, Any]
    ttl: float
    renewed: float


@attrs.define
class Seen:
    """One request the double answered, for tests to assert on."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


class Replay(trio.abc.Stream):
    """A stream that first yields bytes already read from it (the upgrade request)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream, self._prefix = stream, prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class ServiceCenterDouble:
    def __init__(
        self, *, clock: Callable[[], float] | None = None, accounts: Mapping[str, str] = {}
    ) -> None:
        self.clock = clock or trio.current_time
        self.accounts = dict(accounts)  # RBAC is on when there are accounts
        self.tokens: set[str] = set()
        self.services: dict[str, Service] = {}
        self.leases: dict[tuple[str, str], Lease] = {}
        self.dependencies: dict[str, set[tuple[str, str, str, str]]] = {}
        self.revisions: dict[tuple[str, str, str, str], int] = {}
        self.watchers: dict[str, set[trio.MemorySendChannel[str]]] = {}
        self.log: list[Seen] = []
        self.logged = trio.Event()  # set (and replaced) after each answer
        self.outage = False  # answer every request with 500011
        self.watches_opened = 0  # watcher websockets accepted
        self._ids = itertools.count(1)

    # -- test controls ------------------------------------------------------------

    def sweep(self) -> None:
        """End every lease whose heartbeats stopped `interval * (times + 1)` ago."""
        now = self.clock()
        for key, lease in list(self.leases.items()):
            if now - lease.renewed >= lease.ttl:
                self.expire_now(*key)

    def expire_now(self, service_id: str, instance_id: str) -> None:
        """End one lease now; watchers see DELETE, as with a lapsed etcd lease."""
        lease = self.leases.pop((service_id, instance_id))
        self._publish("DELETE", self.services[service_id], lease.body)

    def publish_expire(self, service_id: str) -> None:
        """Tell the provider's consumers their cache is stale (Service Center's EXPIRE)."""
        self._publish("EXPIRE", self.services[service_id], None)

    def drop_service(self, service_id: str) -> None:
        """Forget a micro-service and its instances, as after a Service Center data loss."""
        for key in [k for k in self.leases if k[0] == service_id]:
            self.expire_now(*key)
        del self.services[service_id]

    def instances_of(self, name: str) -> list[dict[str, Any]]:
        ids = {s.service_id for s in self.services.values() if s.name == name}
        return [lease.body for (sid, _), lease in self.leases.items() if sid in ids]

    # -- server -------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            task_status.started(listeners[0].socket.getsockname()[1])

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        raw: bytearray | None = bytearray()  # the first request, in case it is an upgrade
        try:
            while conn.their_state is not h11.CLOSED:
                read = await self._read_request(conn, stream, raw)
                if read is None:
                    return
                req, body = read
                if raw is not None and _is_upgrade(req):
                    await self._websocket(Replay(stream, bytes(raw)))
                    return
                raw = None
                status, headers, payload = self._answer(req, body)
                data = conn.send(h11.Response(status_code=status, headers=headers))
                data += conn.send(h11.Data(data=payload)) if payload else b""
                await stream.send_all(data + conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass  # the peer went away or spoke nonsense; drop the connection
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream, raw: bytearray | None
    ) -> tuple[h11.Request, bytes] | None:
        req: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if raw is not None:
                    raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                req = event
                if _is_upgrade(req):
                    return req, b""
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage) and req is not None:
                return req, bytes(body)
            else:
                return None

    def _answer(self, req: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(req.target.decode("latin-1"))
        seen = Seen(
            req.method.decode(),
            unquote(url.path),
            dict(parse_qsl(url.query, keep_blank_values=True)),
            {k.decode().lower(): v.decode("latin-1") for k, v in req.headers},
        )
        self.log.append(seen)
        headers: list[tuple[str, str]] = []
        try:
            self.sweep()
            if self.outage:
                raise Fail(500011, "etcd is down")
            result = self._route(seen, body, headers)
            seen.status = 304 if result is None else 200
            payload = b"" if result is None else json.dumps(result).encode()
        except Fail as exc:
            seen.status = exc.code // 1000
            error = {"errorCode": str(exc.code), "errorMessage": MESSAGES.get(exc.code, "")}
            payload = json.dumps({**error, "detail": exc.detail}).encode()
        headers.append(("content-type", "application/json"))
        self.logged.set()
        self.logged = trio.Event()
        return seen.status, headers, payload

    def _route(self, seen: Seen, body: bytes, headers: list[tuple[str, str]]) -> Any:
        method, path = seen.method, seen.path
        if (method, path) == ("POST", "/v4/token"):
            return self._login(_json(body))
        match = re.fullmatch(r"/v4/([^/]+)/registry(/.*)", path)
        if match is None:
            raise Fail(404000, path)
        self._authorize(seen.headers)
        project, rest = match.groups()
        q = seen.query
        if (method, rest) == ("GET", "/existence"):
            return {"serviceId": self._existing(project, q)}
        if (method, rest) == ("POST", "/microservices"):
            return {"serviceId": self._create_service(project, _json(body))}
        if (method, rest) == ("GET", "/instances"):
            return self._find(project, q, seen.headers.get("x-consumerid", ""), headers)
        match = re.fullmatch(r"/microservices/([^/]+)/instances(?:/([^/]+))?(/\w+)?", rest)
        if match is None:
            raise Fail(404000, path)
        sid, iid, action = match.groups()
        if (method, iid) == ("POST", None):
            return {"instanceId": self._register(project, sid, _json(body))}
        if action == "/status" and q.get("value") not in INSTANCE_STATUSES:
            raise Fail(400001, f"status {q.get('value')!r}")  # validated before lookup
        lease = self._lease(project, sid, iid or "")
        if (method, action) == ("PUT", "/heartbeat"):
            lease.renewed = self.clock()
        elif (method, action) == ("PUT", "/status"):
            lease.body["status"] = q["value"]
            self._publish("UPDATE", self.services[sid], lease.body)
        elif (method, action) == ("PUT", "/properties"):
            lease.body["properties"] = dict(_json(body).get("properties") or {})
            self._publish("UPDATE", self.services[sid], lease.body)
        elif (method, action) == ("DELETE", None):
            self.expire_now(sid, iid or "")
        else:
            raise Fail(404000, path)
        return {}

    def _login(self, body: dict[str, Any]) -> dict[str, str]:
        name, password = body.get("name"), body.get("password")
        if not name or self.accounts.get(name) != password:
            raise Fail(401202)
        token = f"token-{next(self._ids)}"
        self.tokens.add(token)
        return {"token": token}

    def _authorize(self, headers: Mapping[str, str]) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if self.accounts and (scheme != "Bearer" or token not in self.tokens):
            raise Fail(401201, "invalid or missing token")

    def _service(self, project: str, service_id: str) -> Service | None:
        service = self.services.get(service_id)
        return service if service is not None and service.project == project else None

    def _existing(self, project: str, q: Mapping[str, str]) -> str:
        if q.get("type") != "microservice":
            raise Fail(400001, "Only micro-service and schema can be used as type.")
        key = (project, q.get("env", ""), q.get("appId", ""), q.get("serviceName", ""))
        _validate_key(*key[1:], q.get("version", ""))
        for s in self.services.values():
            if s.provider == key and s.version == q.get("version"):
                return s.service_id
        raise Fail(400012, "/".join(key[1:]) + " does not exist.")

    def _create_service(self, project: str, body: dict[str, Any]) -> str:
        data = body.get("service")
        if not isinstance(data, dict):
            raise Fail(400001, "Request body is empty")
        app, version = data.get("appId") or "default", data.get("version") or "1.0.0"
        env, name = data.get("environment", ""), data.get("serviceName", "")
        _validate_key(env, app, name, version)
        if data.get("status", "") not in ("", "UP", "DOWN"):
            raise Fail(400001, "status")
        for s in self.services.values():
            if (s.provider, s.version) == ((project, env, app, name), version):
                return s.service_id  # Service Center answers the existing id
        service = Service(f"svc{next(self._ids)}", project, app, name, version, env)
        self.services[service.service_id] = service
        self.revisions[service.provider] = next(self._ids)
        return service.service_id

    def _register(self, project: str, sid: str, body: dict[str, Any]) -> str:
        data = body.get("instance")
        if not isinstance(data, dict):
            raise Fail(400001, "Instance is required")
        ttl = _validate_instance(data)
        service = self._service(project, sid)
        if service is None:
            raise Fail(400012, "Invalid 'serviceID' in request body.")
        iid = data.get("instanceId") or f"inst{next(self._ids)}"
        if (sid, iid) in self.leases:  # a known id is renewed, not duplicated
            self.leases[sid, iid].renewed = self.clock()
            return str(iid)
        instance = {**data, "serviceId": sid, "instanceId": iid, "version": service.version}
        instance.setdefault("status", "UP")
        self.leases[sid, iid] = Lease(instance, ttl, self.clock())
        self._publish("CREATE", service, instance)
        return str(iid)

    def _lease(self, project: str, sid: str, iid: str) -> Lease:
        lease = self.leases.get((sid, iid))
        if lease is None or self._service(project, sid) is None:
            raise Fail(400017, "Instance's leaseId not exist.")
        return lease

    def _find(
        self, project: str, q: Mapping[str, str], consumer_id: str, headers: list[tuple[str, str]]
    ) -> Any:
        app, name, env = q.get("appId", ""), q.get("serviceName", ""), q.get("env", "")
        if not app or not name or not NAME.match(app) or not NAME.match(name) or env not in ENVS:
            raise Fail(400001, "appId/serviceName/env")
        if consumer_id:
            consumer = self._service(project, consumer_id)
            if consumer is None:
                raise Fail(400012, f"Consumer[{consumer_id}] does not exist.")
            env = consumer.env
        key = (project, env, app, name)
        provider_ids = {s.service_id for s in self.services.values() if s.provider == key}
        if not provider_ids:
            raise Fail(400012, f"provider {app}/{name} does not exist")
        if consumer_id:
            self.dependencies.setdefault(consumer_id, set()).add(key)
        rev = str(self.revisions[key])
        headers.append(("x-resource-revision", rev))
        if q.get("rev") == rev:
            return None
        found = [lease.body for (sid, _), lease in self.leases.items() if sid in provider_ids]
        return {"instances": found} if found else {}  # omitempty, like Service Center

    def _publish(self, action: str, service: Service, instance: dict[str, Any] | None) -> None:
        self.revisions[service.provider] = next(self._ids)
        key = {
            "tenant": f"default/{service.project}",
            "environment": service.env,
            "appId": service.app,
            "serviceName": service.name,
            "version": service.version,
        }
        event: dict[str, Any] = {"action": action, "key": key}
        if instance is not None:
            event["instance"] = instance
        message = json.dumps(event)
        for consumer, providers in self.dependencies.items():
            if service.provider in providers:
                for channel in list(self.watchers.get(consumer, ())):
                    try:
                        channel.send_nowait(message)
                    except trio.WouldBlock:
                        channel.close()  # a subscriber this slow is dropped

    async def _websocket(self, stream: trio.abc.Stream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                await self._watch(request)
                nursery.cancel_scope.cancel()
        except* (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            pass

    async def _watch(self, request: trio_websocket.WebSocketRequest) -> None:
        match = re.fullmatch(r"/v4/([^/]+)/registry/microservices/([^/]+)/watcher", request.path)
        if match is None:
            await request.reject(404)
            return
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        try:
            self._authorize(headers)
        except Fail:
            await request.reject(401)
            return
        ws = await request.accept()
        self.watches_opened += 1
        project, consumer_id = match.groups()
        if self._service(project, consumer_id) is None:
            await ws.send_message("service does not exist")
            return
        send, receive = trio.open_memory_channel[str](64)
        self.watchers.setdefault(consumer_id, set()).add(send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain_until_closed, ws, nursery.cancel_scope)
                async for message in receive:
                    await ws.send_message(message)
                nursery.cancel_scope.cancel()
        finally:
            self.watchers[consumer_id].discard(send)
            with trio.move_on_after(1, shield=True):
                await ws.aclose()


async def _drain_until_closed(
    ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope
) -> None:
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()


def _is_upgrade(req: h11.Request) -> bool:
    return any(k == b"upgrade" and v.lower() == b"websocket" for k, v in req.headers)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise Fail(400001, "Unmarshal error") from None
    if not isinstance(data, dict):
        raise Fail(400001, "Unmarshal error")
    return data


def _validate_key(env: str, app: str, name: str, version: str) -> None:
    if env not in ENVS:
        raise Fail(400001, f"environment {env!r}")
    if not (0 < len(app) <= 160 and NAME.match(app)):
        raise Fail(400001, f"appId {app!r}")
    if not (0 < len(name) <= 128 and NAME.match(name)):
        raise Fail(400001, f"serviceName {name!r}")
    if not VERSION.match(version):
        raise Fail(400001, f"version {version!r}")


def _validate_instance(data: dict[str, Any]) -> float:
    """Check an instance as Service Center's validator does; return its lease length."""
    host = data.get("hostName")
    if not isinstance(host, str) or not 0 < len(host) <= 64 or re.search(r"\s", host):
        raise Fail(400001, "hostName")
    endpoints = data.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(
        isinstance(e, str) and e.strip() for e in endpoints
    ):
        raise Fail(400001, "endpoints")
    if data.get("status", "UP") not in INSTANCE_STATUSES:
        raise Fail(400001, "status")
    check = data.get("healthCheck")
    if check is None:
        return 30.0 * (3 + 1)  # Service Center's default lease: 30 s x (3 + 1)
    interval, times = check.get("interval", 0), check.get("times", 0)
    if check.get("mode") not in ("push", "pull") or not isinstance(interval, int) or interval < 1:
        raise Fail(400001, "healthCheck")
    if not isinstance(times, int) or times < 0:
        raise Fail(400001, "healthCheck.times")
    if check["mode"] == "pull":
        return 30.0 * (3 + 1)
    interval, times = max(interval, 5), max(times, 3)
    check.update(interval=interval, times=times)
    return float(interval * (times + 1))
