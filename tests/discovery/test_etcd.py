"""EtcdRegistry against a real etcd on loopback, plus its sans-IO pieces.

Needs the ``etcd`` binary (Debian: ``apt-get install etcd-server``); without
it the etcd tests skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.etcd_server import EtcdServer, copy_until_closed, free_ports
from trimesh.discovery import Instance, LeaseExpired, Registration, RegistryUnavailable, ServiceKey
from trimesh.discovery._etcd_api import JsonLines, b64, prefix_end
from trimesh.discovery.etcd import EtcdRegistry, WatchView, _cancel_outcome, service_names

GUARD = 15.0  # fail_after guard for anything that waits on etcd


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of the test's own, for tests that stop it or enable auth."""
    server = EtcdServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registry(etcd: EtcdServer, prefix: str) -> EtcdRegistry:
    return EtcdRegistry([etcd.endpoint], prefix=prefix)


def me(port: int = 8080, service: str = "orders", ttl: float = 30.0) -> Registration:
    return Registration(
        service=service, host="10.0.0.1", port=port, version="1.2.0", lease_ttl=ttl,
        metadata={"zone": "a"},
    )  # fmt: skip


class Snapshots:
    """An `on_change` callback that lets a test wait for a matching snapshot."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[list[Instance]](1000)

    def __call__(self, snapshot: Sequence[Instance]) -> None:
        self._send.send_nowait(list(snapshot))

    async def until(self, predicate: Callable[[list[Instance]], bool]) -> list[Instance]:
        with trio.fail_after(GUARD):
            while not predicate(snapshot := await self._receive.receive()):
                pass
            return snapshot


def ports(snapshot: Sequence[Instance]) -> list[int]:
    return sorted(i.port for i in snapshot)


async def wait_for(predicate: Callable[[], Awaitable[bool]], interval: float = 0.1) -> None:
    """Poll an async condition until it holds, under the test guard."""
    with trio.fail_after(GUARD):
        # An external system changes state; there is no event to wait on.
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(interval)


# ---------------------------------------------------------------- registry


async def test_register_then_instances(registry: EtcdRegistry) -> None:
    first = await registry.register(me(8080))
    await registry.register(me(8081))
    await registry.register(me(9000, service="orders-v2"))  # must not leak into "orders"
    found = await registry.instances(ServiceKey("orders"))
    assert ports(found) == [8080, 8081]
    one = next(i for i in found if i.instance_id == first)
    assert (one.host, one.version, one.status, dict(one.tags)) == (
        "10.0.0.1",
        "1.2.0",
        "UP",
        {"zone": "a"},
    )

    await registry.set_status(first, "DOWN")
    found = await registry.instances(ServiceKey("orders"))
    assert {i.port: i.status for i in found} == {8080: "DOWN", 8081: "UP"}

    assert await registry.register(me(8080)) == first  # idempotent: same id, new lease
    await registry.deregister(first)
    await registry.deregister(first)  # missing is not an error
    assert ports(await registry.instances(ServiceKey("orders"))) == [8081]


async def test_services_lists_names_with_instances(registry: EtcdRegistry) -> None:
    assert await registry.services("default") == []
    await registry.register(me(8080))
    await registry.register(me(8081))
    await registry.register(me(9000, service="orders-v2"))
    await registry.register(me(9001, service="a/b c%"))  # quoted in the key, not in the list
    gone = await registry.register(me(9002, service="gone"))
    await registry.deregister(gone)
    await registry.register(attrs.evolve(me(9003, service="carts"), app="shop/eu"))
    assert await registry.services("default") == ["a/b c%", "orders", "orders-v2"]
    assert await registry.services("shop/eu") == ["carts"]
    assert await registry.services("shop") == []


def test_service_names_skips_keys_of_other_shapes() -> None:
    keys = [
        b"/p/registry/app/orders/i1",
        b"/p/registry/app/orders/i2",
        b"/p/registry/app/caf%C3%A9/i3",
        b"/p/registry/app/stray",  # no instance id
        b"/p/registry/app/empty/",  # no instance id
        b"/p/registry/app//i4",  # no service
        b"/p/registry/other/users/i5",  # another app
    ]
    assert service_names(b"/p/registry/app/", keys) == ["café", "orders"]


async def test_lease_expiry_removes_key_unless_heartbeating(registry: EtcdRegistry) -> None:
    quiet = await registry.register(me(8080, ttl=2))
    alive = await registry.register(me(8081, ttl=2))

    async def quiet_gone() -> bool:
        await registry.heartbeat(alive)
        return ports(await registry.instances(ServiceKey("orders"))) == [8081]

    await wait_for(quiet_gone, interval=0.5)
    with trio.fail_after(GUARD):
        # Outlive the TTL once more by heartbeats alone.
        for _ in range(6):
            await registry.heartbeat(alive)
            await trio.sleep(0.5)
    assert ports(await registry.instances(ServiceKey("orders"))) == [8081]
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(quiet)


async def test_heartbeat_after_revoke_raises_lease_expired(
    registry: EtcdRegistry, etcd: EtcdServer
) -> None:
    instance_id = await registry.register(me())
    etcd.post("/v3/lease/revoke", {"ID": registry._mine[instance_id].lease})
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)
    with pytest.raises(LeaseExpired):
        await registry.set_status(instance_id, "DOWN")
    assert await registry.instances(ServiceKey("orders")) == ()
    assert await registry.register(me()) == instance_id  # the caller re-registers
    await registry.heartbeat(instance_id)
    assert len(await registry.instances(ServiceKey("orders"))) == 1


async def test_unreachable_endpoint_raises_and_fails_over(
    registry: EtcdRegistry, etcd: EtcdServer
) -> None:
    dead = ("127.0.0.1", free_ports(1)[0])
    with pytest.raises(RegistryUnavailable) as info:
        await EtcdRegistry([dead]).instances(ServiceKey("orders"))
    assert info.value.__cause__ is not None
    await registry.register(me())
    both = EtcdRegistry([dead, etcd.endpoint], prefix=registry._prefix)
    assert len(await both.instances(ServiceKey("orders"))) == 1


# ---------------------------------------------------------------- watch


async def test_watch_sees_puts_and_deletes(registry: EtcdRegistry, etcd: EtcdServer) -> None:
    other = EtcdRegistry([etcd.endpoint], prefix=registry._prefix)
    await other.register(me(8080))
    snapshots = Snapshots()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.watch, ServiceKey("orders"), snapshots)
        assert ports(await snapshots.until(lambda s: True)) == [8080]
        second = await other.register(me(8081))
        await snapshots.until(lambda s: ports(s) == [8080, 8081])
        await other.set_status(second, "DOWN")
        await snapshots.until(lambda s: any(i.status == "DOWN" for i in s))
        await other.deregister(second)
        await snapshots.until(lambda s: ports(s) == [8080])
        nursery.cancel_scope.cancel()


async def test_watch_raises_while_etcd_is_down_and_works_after(
    own_etcd: EtcdServer, prefix: str
) -> None:
    """Documented behaviour: the watch raises RegistryUnavailable; the caller restarts it."""
    registry = EtcdRegistry([own_etcd.endpoint], prefix=prefix)
    await registry.register(me(8080))
    snapshots = Snapshots()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:

            async def watch_until_down() -> None:
                with pytest.raises(RegistryUnavailable):
                    await registry.watch(ServiceKey("orders"), snapshots)

            nursery.start_soon(watch_until_down)
            await snapshots.until(lambda s: ports(s) == [8080])
            doomed = await registry.register(me(8082))
            await snapshots.until(lambda s: ports(s) == [8080, 8082])  # the stream is up
            await registry.deregister(doomed)
            await snapshots.until(lambda s: ports(s) == [8080])
            own_etcd.stop()
        with pytest.raises(RegistryUnavailable):
            await registry.heartbeat(next(iter(registry._mine)))
        own_etcd.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.watch, ServiceKey("orders"), snapshots)
            await snapshots.until(lambda s: ports(s) == [8080])  # leases survive a restart
            await registry.register(me(8081))
            await snapshots.until(lambda s: ports(s) == [8080, 8081])
            nursery.cancel_scope.cancel()


async def test_watch_resumes_from_last_revision_after_a_break(
    registry: EtcdRegistry, etcd: EtcdServer
) -> None:
    proxy = CuttableProxy(etcd.endpoint)
    writer = EtcdRegistry([etcd.endpoint], prefix=registry._prefix)
    snapshots = Snapshots()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        watcher = EtcdRegistry([("127.0.0.1", port)], prefix=registry._prefix)
        nursery.start_soon(watcher.watch, ServiceKey("orders"), snapshots)
        await snapshots.until(lambda s: s == [])
        await writer.register(me(8080))
        await snapshots.until(lambda s: ports(s) == [8080])

        proxy.hold_new_connections()
        proxy.cut()
        await writer.register(me(8081))  # happens while no stream is open
        proxy.release()
        await snapshots.until(lambda s: ports(s) == [8080, 8081])
        assert proxy.connections >= 3  # range, first stream, resumed stream
        nursery.cancel_scope.cancel()


async def test_compacted_watch_lists_again(registry: EtcdRegistry, etcd: EtcdServer) -> None:
    for port in (8080, 8081, 8082):
        await registry.register(me(port))
    gone = await registry.register(me(8083))
    await registry.deregister(gone)
    revision = int(etcd.post("/v3/maintenance/status", {})["header"]["revision"])
    etcd.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    snapshots = Snapshots()
    async with trio.open_nursery() as nursery:
        stale = WatchView(revision=1)  # long compacted away
        prefix = registry._service_prefix(ServiceKey("orders"))
        nursery.start_soon(registry._follow, prefix, stale, snapshots)
        assert ports(await snapshots.until(lambda s: True)) == [8080, 8081, 8082]
        await registry.register(me(8084))  # and the new watch follows on
        await snapshots.until(lambda s: ports(s) == [8080, 8081, 8082, 8084])
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- auth


async def test_auth_with_username_and_password(own_etcd: EtcdServer, prefix: str) -> None:
    for path, body in [
        ("/v3/auth/user/add", {"name": "root", "password": "s3cret"}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/enable", {}),
    ]:
        own_etcd.post(path, body)
    with pytest.raises(RegistryUnavailable):
        await EtcdRegistry([own_etcd.endpoint], prefix=prefix).instances(ServiceKey("orders"))
    with pytest.raises(RegistryUnavailable):
        wrong = EtcdRegistry([own_etcd.endpoint], prefix=prefix, username="root", password="x")
        await wrong.instances(ServiceKey("orders"))

    registry = EtcdRegistry([own_etcd.endpoint], prefix=prefix, username="root", password="s3cret")
    instance_id = await registry.register(me(8080))
    await registry.heartbeat(instance_id)
    registry._api._token = "expired.1"  # as if etcd had dropped our simple token
    assert ports(await registry.instances(ServiceKey("orders"))) == [8080]

    writer = EtcdRegistry([own_etcd.endpoint], prefix=prefix, username="root", password="s3cret")
    snapshots = Snapshots()
    async with trio.open_nursery() as nursery:
        registry._api._token = "expired.2"  # the watch stream re-authenticates too
        status = own_etcd.post("/v3/maintenance/status", {})
        view = WatchView(revision=int(status["header"]["revision"]))
        prefix_bytes = registry._service_prefix(ServiceKey("orders"))
        nursery.start_soon(registry._follow, prefix_bytes, view, snapshots)
        await writer.register(me(8081))
        await snapshots.until(lambda s: 8081 in ports(s))
        assert registry._api._token not in (None, "expired.2")
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- sans-IO


STREAM = [{"result": {"n": n, "s": "x" * n}} for n in range(5)]


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_json_lines_any_split_gives_the_same_objects(cuts: list[int]) -> None:
    data = b"".join(json.dumps(obj).encode() + b"\n" for obj in STREAM)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    lines = JsonLines()
    got = []
    for start, end in itertools.pairwise(bounds):
        got += lines.feed(data[start:end])
    assert got + lines.close() == STREAM


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\x00"), (b"/x/y", b"/x/z")],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def _kv(key: bytes, doc: object, revision: int) -> dict[str, object]:
    value = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}


def test_watch_view_applies_events_and_progress() -> None:
    doc = {"service": "s", "host": "h", "port": 1, "instance_id": "i1"}
    view = WatchView(revision=3)
    assert view.apply({"created": True, "header": {"revision": "9"}}) is False
    assert view.revision == 3  # a created answer says nothing about progress
    assert view.apply({"events": [{"kv": _kv(b"/p/i1", doc, 4)}]})  # PUT: "type" omitted
    assert [i.instance_id for i in view.snapshot()] == ["i1"]
    assert view.apply({"events": [{"kv": _kv(b"/p/i2", b"not json", 5)}]})
    assert len(view.snapshot()) == 1  # malformed documents are skipped
    assert view.apply(
        {"events": [{"type": "DELETE", "kv": {"key": b64(b"/p/i1"), "mod_revision": "6"}}]}
    )
    assert view.snapshot() == () and view.revision == 6
    assert view.apply({"header": {"revision": "12"}}) is False  # progress notification
    assert view.revision == 12


GOOD = {"service": "s", "host": "h", "port": 1, "instance_id": "i1"}


@pytest.mark.parametrize(
    ("kv", "why"),
    [
        (_kv(b"/p/i2", b"not json", 5), "Expecting value"),
        (_kv(b"/p/i2", [1, 2], 5), "the document is not an object"),
        (_kv(b"/p/i2", {**GOOD, "metadata": ["zone"]}, 5), "metadata is not an object"),
        (_kv(b"/p/i2", {**GOOD, "port": True}, 5), "bad port"),
        (_kv(b"/p/i2", {**GOOD, "port": "80"}, 5), "bad port"),
        (_kv(b"/p/i2", {**GOOD, "host": 7}, 5), "must be non-empty strings"),
        (_kv(b"/p/i2", {**GOOD, "status": "MAYBE"}, 5), "bad status"),
        (_kv(b"/p/i2", {"service": "s", "port": 1}, 5), "'host'"),
        ({"key": b64(b"/p/i2"), "value": 7}, "not a base64 string"),
        ({"key": 7, "value": b64(b"{}")}, "malformed key-value"),
        ({"value": b64(b"{}")}, "malformed key-value"),
        ("not an object", "malformed key-value"),
    ],
)
def test_watch_view_skips_malformed_rows_with_a_warning(
    kv: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    view = WatchView(revision=3)
    view.put(_kv(b"/p/i1", GOOD, 4))
    with caplog.at_level(logging.WARNING, "trimesh.discovery.etcd"):
        assert view.apply({"events": [{"kv": kv}]})
    assert [i.instance_id for i in view.snapshot()] == ["i1"]
    assert why in caplog.text
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)]


@pytest.mark.parametrize(
    "result",
    [
        {"events": "not a list"},
        {"events": [7, None, "x"]},
        {"events": [{"type": "DELETE", "kv": {"key": 5}}]},
        {"events": [{"kv": {**_kv(b"/p/i9", GOOD, 0), "mod_revision": {"x": 1}}}]},
        {"header": "not an object"},
        {"header": {"revision": "not a number"}},
    ],
)
def test_watch_view_survives_malformed_watch_answers(result: dict[str, object]) -> None:
    view = WatchView(revision=3)
    view.apply(result)
    assert view.revision == 3


async def test_malformed_rows_are_skipped_by_list_and_watch(
    registry: EtcdRegistry, etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    def put_raw(name: str, doc: object) -> None:
        key = registry._service_prefix(ServiceKey("orders")) + name.encode()
        etcd.post("/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(doc).encode())})

    bad = {"service": "orders", "host": "10.0.0.9", "port": 1, "metadata": "zone=a"}
    put_raw("bad-1", bad)
    await registry.register(me(8080))
    with caplog.at_level(logging.WARNING, "trimesh.discovery.etcd"):
        assert ports(await registry.instances(ServiceKey("orders"))) == [8080]
        snapshots = Snapshots()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.watch, ServiceKey("orders"), snapshots)
            await snapshots.until(lambda s: ports(s) == [8080])
            put_raw("bad-2", ["not", "an", "instance"])
            await registry.register(me(8081))  # the watch goes on past the bad row
            await snapshots.until(lambda s: ports(s) == [8080, 8081])
            nursery.cancel_scope.cancel()
    assert "bad-1" in caplog.text and "bad-2" in caplog.text
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        ({"canceled": True, "compact_revision": "7"}, "compacted"),
        ({"canceled": True, "cancel_reason": "etcdserver: invalid auth token"}, "unauthenticated"),
        ({"canceled": True, "cancel_reason": "etcdserver: permission denied"}, "unauthenticated"),
        ({"canceled": True, "cancel_reason": "etcdserver: no space"}, None),
    ],
)
def test_cancel_outcome(result: dict[str, object], outcome: str | None) -> None:
    if outcome is None:
        with pytest.raises(RegistryUnavailable, match="cancelled the watch"):
            _cancel_outcome(result)
    else:
        assert _cancel_outcome(result) == outcome


# ---------------------------------------------------------------- helpers


class CuttableProxy:
    """A loopback TCP proxy whose open connections a test can cut and whose new
    connections it can hold back, to break a watch stream on purpose."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.connections = 0
        self._gate = trio.Event()
        self._gate.set()
        self._scopes: set[trio.CancelScope] = set()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def hold_new_connections(self) -> None:
        self._gate = trio.Event()

    def release(self) -> None:
        self._gate.set()

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        gate = self._gate
        with trio.CancelScope() as scope:
            await gate.wait()
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream(*self.target)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(
                        copy_until_closed, downstream, upstream, nursery.cancel_scope
                    )
                    nursery.start_soon(
                        copy_until_closed, upstream, downstream, nursery.cancel_scope
                    )
            except OSError:
                pass
            finally:
                self._scopes.discard(scope)
        await trio.aclose_forcefully(downstream)
