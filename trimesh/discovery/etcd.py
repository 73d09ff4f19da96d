"""The etcd registry backend, over etcd's v3 JSON gateway (etcd >= 3.4).

Each instance is one key, ``<prefix>/registry/<app>/<service>/<instance-id>``,
whose value is a JSON document of the instance and which is attached to a
lease of `Registration.lease_ttl` seconds. A heartbeat renews the lease; when
the lease runs out etcd deletes the key, so dead sidecars vanish on their own.
Discovery is a range read of the service's key prefix followed by a watch
stream that resumes from the last seen revision; `services` is a keys-only
range read of the app's prefix.

Deadlines: the caller bounds each call it makes (`Discovery` does, with
`registry.call_timeout`); a watch bounds what it does on its own: each list
and each stream open by `call_timeout`, and a stream that shows no sign of
life (event, progress notification) for twice `watch_interval` is reopened.
We ask etcd for progress notifications, but it sends them only every 10
minutes by default, so a healthy but quiet stream is reopened too: one
request that resumes from the last revision.

Error handling: transport failures and etcd refusals raise
`RegistryUnavailable`; an expired or revoked lease raises `LeaseExpired`. A
malformed row (a value that is not an instance document, an entry that is not
an object) is skipped with a warning.
Resource handling: no connection outlives a call; `watch` holds one stream
until it returns or is cancelled.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

import attrs
import trio

from trimesh.discovery._etcd_api import (
    NOT_FOUND,
    EtcdError,
    EtcdGateway,
    JsonObject,
    b64,
    prefix_end,
    unb64,
)
from trimesh.discovery._failover import call_deadline
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    OnChange,
    Registration,
    RegistryUnavailable,
    ServiceKey,
    Status,
)

log = logging.getLogger(__name__)

StreamOutcome = Literal["broken", "compacted", "unauthenticated", "quiet"]
MAX_IDLE_BREAKS = 3
# A watch stream silent for twice this long is reopened (see the module docstring).
WATCH_INTERVAL = 60.0


@attrs.frozen
class _Own:
    """One registration of ours: where it lives and which lease holds it."""

    instance_id: str
    registration: Registration
    key: bytes
    lease: str
    status: Status = "UP"
    registered: float = attrs.field(factory=time.time)


class EtcdRegistry:
    """A `Registry` kept in etcd; see the module docstring for the key layout.

    Endpoints are tried in order when one fails. With `username`, calls carry
    an etcd auth token, renewed when etcd reports it invalid. `call_timeout`
    and `watch_interval` bound what `watch` does on its own.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        prefix: str = "/trimesh",
        username: str | None = None,
        password: str | None = None,
        call_timeout: float = 5.0,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self._api = EtcdGateway(endpoints, username, password)
        self._prefix = prefix.rstrip("/")
        self._mine: dict[str, _Own] = {}
        self._call_timeout = call_timeout
        self._watch_interval = watch_interval

    def __repr__(self) -> str:
        return f"<EtcdRegistry {self._prefix!r} {self._api!r} own={len(self._mine)}>"

    async def register(self, me: Registration) -> str:
        """Put our instance under a fresh lease; registering `me` again keeps its id."""
        old = next((own for own in self._mine.values() if own.registration == me), None)
        instance_id = old.instance_id if old else uuid.uuid4().hex
        grant = await self._api.call(
            "/v3/lease/grant", {"TTL": str(max(1, math.ceil(me.lease_ttl)))}
        )
        own = _Own(
            instance_id,
            me,
            self._instance_key(me.key, instance_id),
            str(grant.get("ID", "0")),  # int64 as a JSON string
            old.status if old else "UP",
        )
        await self._put(own)
        self._mine[instance_id] = own
        if old is not None:
            try:
                await self._revoke(old.lease)  # the key moved to the new lease
            except RegistryUnavailable as exc:
                # An orphaned lease holds no key and dies after its TTL.
                log.warning("etcd: could not revoke old lease of %s: %s", instance_id, exc)
        return instance_id

    async def heartbeat(self, instance_id: str) -> None:
        """Renew the lease with one keepalive round trip.

        Error handling: `LeaseExpired` when etcd no longer knows the lease
        (its answer carries no TTL) or the id is not ours.
        """
        own = self._own(instance_id)
        async with self._api.stream("/v3/lease/keepalive", {"ID": own.lease}) as answers:
            result = await answers.receive()
        if result is None or _int(result.get("TTL")) <= 0:
            raise LeaseExpired(f"etcd lease of {instance_id} expired")

    async def set_status(self, instance_id: str, status: Status) -> None:
        """Rewrite our instance document with `status`, under the same lease."""
        own = attrs.evolve(self._own(instance_id), status=status)
        await self._put(own)
        self._mine[instance_id] = own

    async def deregister(self, instance_id: str) -> None:
        """Revoke our lease, which deletes the key; unknown ids are ignored."""
        own = self._mine.get(instance_id)
        if own is not None:
            await self._revoke(own.lease)
            del self._mine[instance_id]

    async def instances(self, key: ServiceKey) -> Sequence[Instance]:
        """Every instance of `key` as one consistent range read."""
        return (await self._list(self._service_prefix(key))).snapshot()

    async def services(self, app: str) -> Sequence[str]:
        """The names of `app`'s services that have at least one instance key, sorted.

        One keys-only range read; a key exists only while its lease lives.
        """
        prefix = self._app_prefix(app)
        answer = await self._api.call(
            "/v3/kv/range",
            {"key": b64(prefix), "range_end": b64(prefix_end(prefix)), "keys_only": True},
        )
        keys = (key for kv in _entries(answer, "kvs") if (key := _key_of(kv)) is not None)
        return service_names(prefix, keys)

    async def watch(self, key: ServiceKey, on_change: OnChange) -> None:
        """List `key`, report it, then report every change until cancelled.

        A broken or quiet stream is reopened at once from the last seen
        revision; if no endpoint accepts the new stream (etcd down),
        `RegistryUnavailable` is raised and the caller restarts the watch,
        which lists afresh. A watch cancelled by compaction lists again and
        reports the new list.
        """
        prefix = self._service_prefix(key)
        with call_deadline(self._call_timeout, "etcd watch: list"):
            view = await self._list(prefix)
        on_change(view.snapshot())
        await self._follow(prefix, view, on_change)

    async def aclose(self) -> None:
        """Nothing to release: every call uses its own connection."""

    async def _follow(self, prefix: bytes, view: WatchView, on_change: OnChange) -> None:
        # Separate from `watch` so tests can start from a chosen (old) revision.
        auth_retried, idle_breaks = False, 0
        while True:
            seen = view.revision
            outcome = await self._follow_stream(prefix, view, on_change)
            if outcome == "compacted":
                log.info("etcd watch %r fell behind compaction; listing again", prefix)
                with call_deadline(self._call_timeout, "etcd watch: list"):
                    view = await self._list(prefix)
                on_change(view.snapshot())
            elif outcome == "quiet":
                # Not a break: the stream opened fine and may just have had nothing to say.
                idle_breaks = 0
                log.info("etcd watch %r silent for %g s; reopening", prefix, self._quiet_after)
            elif outcome == "unauthenticated":
                if auth_retried:
                    raise EtcdError(16, "etcd refused the watch token twice")
                log.info("etcd watch %r: token rejected; authenticating again", prefix)
                self._api.forget_token()
            else:
                # Streams that keep breaking with no progress mean something is
                # wrong between us and etcd: let the caller back off.
                idle_breaks = 0 if view.revision > seen else idle_breaks + 1
                if idle_breaks >= MAX_IDLE_BREAKS:
                    raise RegistryUnavailable(f"etcd watch {prefix!r} keeps breaking")
                log.info("etcd watch %r resuming after revision %d", prefix, view.revision)
            auth_retried = outcome == "unauthenticated"

    async def _follow_stream(
        self, prefix: bytes, view: WatchView, on_change: OnChange
    ) -> StreamOutcome:
        """Apply one watch stream's events to `view` (see `follow_stream`)."""
        return await follow_stream(
            self._api,
            prefix,
            view,
            lambda: on_change(view.snapshot()),
            call_timeout=self._call_timeout,
            quiet_after=self._quiet_after,
            what=f"etcd watch {prefix!r}",
        )

    @property
    def _quiet_after(self) -> float:
        return 2 * self._watch_interval

    async def _list(self, prefix: bytes) -> WatchView:
        answer = await self._api.call(
            "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        )
        view = WatchView(revision=_revision(answer))
        for kv in _entries(answer, "kvs"):
            view.put(kv)
        return view

    async def _put(self, own: _Own) -> None:
        body = {"key": b64(own.key), "value": b64(_document(own)), "lease": own.lease}
        try:
            await self._api.call("/v3/kv/put", body)
        except EtcdError as exc:
            if exc.code == NOT_FOUND:  # "requested lease not found"
                raise LeaseExpired(f"etcd lease of {own.instance_id} expired") from exc
            raise

    async def _revoke(self, lease: str) -> None:
        try:
            await self._api.call("/v3/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if exc.code != NOT_FOUND:  # already expired or revoked
                raise

    def _own(self, instance_id: str) -> _Own:
        try:
            return self._mine[instance_id]
        except KeyError:
            raise LeaseExpired(f"{instance_id} is not registered here") from None

    def _app_prefix(self, app: str) -> bytes:
        # Quoting keeps a "/" in a name from reaching into another app's or service's keys.
        return f"{self._prefix}/registry/{quote(app, safe='')}/".encode()

    def _service_prefix(self, key: ServiceKey) -> bytes:
        return self._app_prefix(key.app) + f"{quote(key.name, safe='')}/".encode()

    def _instance_key(self, key: ServiceKey, instance_id: str) -> bytes:
        return self._service_prefix(key) + instance_id.encode()


@attrs.define
class WatchView:
    """Sans-IO state of one watcher: instances by etcd key, and the last revision seen."""

    instances: dict[bytes, Instance] = attrs.field(factory=dict)
    revision: int = 0

    def snapshot(self) -> tuple[Instance, ...]:
        return tuple(sorted(self.instances.values(), key=lambda i: i.instance_id))

    def put(self, kv: object) -> None:
        """Record a key-value from a range answer or a PUT event; skip a malformed one."""
        key = _key_of(kv)
        if key is None:
            return
        assert isinstance(kv, dict)  # _key_of checked it
        instance = _instance_from(key, kv.get("value", ""))
        if instance is None:
            self.instances.pop(key, None)
        else:
            self.instances[key] = instance

    def apply(self, result: JsonObject) -> bool:
        """Apply one watch response; return whether it carried events."""
        events = _entries(result, "events")
        for event in events:
            kv = event.get("kv")
            if event.get("type", "PUT") == "DELETE":
                key = _key_of(kv)
                if key is not None:
                    self.instances.pop(key, None)
            else:
                self.put(kv)
            if isinstance(kv, dict):
                self.revision = max(self.revision, _int(kv.get("mod_revision")))
        if not events and not result.get("created"):
            # A progress notification: every event up to this revision was sent.
            self.revision = max(self.revision, _revision(result))
        return bool(events)


class Followed(Protocol):
    """What a watch stream updates: a last revision, and events applied one response at a time."""

    revision: int

    def apply(self, result: JsonObject) -> bool: ...


async def follow_stream(
    api: EtcdGateway,
    prefix: bytes,
    view: Followed,
    on_events: Callable[[], None],
    *,
    call_timeout: float,
    quiet_after: float,
    what: str,
) -> StreamOutcome:
    """Apply one watch stream's events on `prefix` to `view`; say why the stream ended.

    `on_events` is called after each response that carried events. Used by the
    registry's watchers and by the config centre.

    Error handling: `RegistryUnavailable` if the stream is not confirmed
    within `call_timeout` or etcd cancels it for a reason we cannot fix; a
    break after that is the "broken" outcome, and silence for `quiet_after`
    seconds the "quiet" one.
    """
    request = {
        "key": b64(prefix),
        "range_end": b64(prefix_end(prefix)),
        "start_revision": str(view.revision + 1),
        "progress_notify": True,
    }
    async with AsyncExitStack() as stack:
        with call_deadline(call_timeout, f"{what}: open"):
            results = await stack.enter_async_context(
                api.stream("/v3/watch", {"create_request": request})
            )
            result = await results.receive()
        if result is not None and result.get("canceled"):
            return _cancel_outcome(result)
        if result is None or not result.get("created"):
            raise RegistryUnavailable(f"{what} ended before it started")
        canceled: JsonObject | None = None
        with trio.move_on_after(quiet_after) as quiet:
            try:
                while (result := await results.receive()) is not None:
                    quiet.deadline = trio.current_time() + quiet_after
                    if result.get("canceled"):
                        canceled = result
                        break
                    if view.apply(result):
                        on_events()
            except RegistryUnavailable as exc:
                log.info("%s broke: %s", what, exc)
    if canceled is not None:
        return _cancel_outcome(canceled)
    return "quiet" if quiet.cancelled_caught else "broken"


def service_names(app_prefix: bytes, keys: Iterable[bytes]) -> list[str]:
    """The distinct service names in instance keys under `app_prefix`, unquoted and sorted.

    A key is ``<app_prefix><quoted service>/<instance id>``; keys of any other
    shape are not ours and are skipped.
    """
    names = set()
    for key in keys:
        quoted, sep, instance_id = key.removeprefix(app_prefix).partition(b"/")
        if key.startswith(app_prefix) and quoted and sep and instance_id:
            names.add(unquote(quoted.decode("utf-8", "replace")))
    return sorted(names)


def _revision(answer: JsonObject) -> int:
    header = answer.get("header")
    return _int(header.get("revision")) if isinstance(header, dict) else 0


def _int(value: object) -> int:
    """An int64 as the gateway writes it (a JSON string), or 0 when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value) if isinstance(value, str) else 0
    except ValueError:
        return 0


def _entries(answer: JsonObject, field: str) -> list[JsonObject]:
    """The objects in `answer[field]` (``kvs``, ``events``); others are skipped with a warning."""
    items = answer.get(field, [])
    if not isinstance(items, list):
        log.warning("etcd: ignoring %s that is not a list: %.200r", field, items)
        return []
    bad = [item for item in items if not isinstance(item, dict)]
    if bad:
        log.warning("etcd: ignoring %s entries that are not objects: %.200r", field, bad)
    return [item for item in items if isinstance(item, dict)]


def _key_of(kv: object) -> bytes | None:
    """The key of a key-value entry; None (and a warning) when the entry is malformed."""
    key = kv.get("key") if isinstance(kv, dict) else None
    try:
        if isinstance(key, str):
            return unb64(key)
    except ValueError:
        pass
    log.warning("etcd: ignoring a malformed key-value entry: %.200r", kv)
    return None


def _cancel_outcome(result: JsonObject) -> StreamOutcome:
    if _int(result.get("compact_revision")) > 0:
        return "compacted"
    reason = str(result.get("cancel_reason", "watch cancelled"))
    # etcd 3.4 says "invalid auth token"; 3.5 cancels a stale token's watch with
    # "permission denied". Either way authenticate once more; a second refusal raises.
    if "auth" in reason or "permission denied" in reason:
        return "unauthenticated"
    raise RegistryUnavailable(f"etcd cancelled the watch: {reason}")


def _document(own: _Own) -> bytes:
    me = own.registration
    return json.dumps(
        {
            "instance_id": own.instance_id,
            "app": me.app,
            "service": me.service,
            "host": me.host,
            "port": me.port,
            "version": me.version,
            "environment": me.environment,
            "status": own.status,
            "metadata": dict(me.metadata),
            "registered": own.registered,
        }
    ).encode()


def _instance_from(key: bytes, value: object) -> Instance | None:
    """Decode a base64 instance document; None (and a warning) for anything malformed."""
    try:
        if not isinstance(value, str):
            raise TypeError("the value is not a base64 string")
        doc: Any = json.loads(unb64(value))
        if not isinstance(doc, dict):
            raise TypeError("the document is not an object")
        port, status, tags = doc["port"], doc.get("status", "UP"), doc.get("metadata", {})
        if isinstance(port, bool) or not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"bad port {port!r}")
        if status not in ("UP", "DOWN"):
            raise ValueError(f"bad status {status!r}")
        if not isinstance(tags, dict):
            raise TypeError("metadata is not an object")
        service, host = doc["service"], doc["host"]
        if not (isinstance(service, str) and isinstance(host, str) and service and host):
            raise TypeError("service and host must be non-empty strings")
        return Instance(
            service=service,
            instance_id=str(doc.get("instance_id") or key.rsplit(b"/", 1)[-1].decode()),
            host=host,
            port=port,
            app=str(doc.get("app", "default")),
            version=str(doc.get("version", "")),
            environment=str(doc.get("environment", "")),
            status=status,
            tags=tags,
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("etcd: ignoring malformed instance at %r: %s", key, exc or repr(exc))
        return None
