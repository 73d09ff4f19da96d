"""Tests of the embedded SQLite registry (`trimesh.discovery.local`)."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.discovery.watcher import Watcher
from trimesh.discovery.base import (
    Instance,
    LeaseExpired,
    Registration,
    Registry,
    RegistryUnavailable,
    ServiceKey,
)
from trimesh.discovery.local import LocalRegistry, default_path

ORDERS = ServiceKey("orders")


@attrs.define
class FakeClock:
    """A wall clock the test moves by hand, shared by registries on one file."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def orders(port: int = 8080, **changes: Any) -> Registration:
    return attrs.evolve(Registration("orders", "127.0.0.1", 8080), port=port, **changes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def registry(tmp_path: Path, clock: FakeClock) -> AsyncIterator[LocalRegistry]:
    async with LocalRegistry(tmp_path / "registry.db", clock=clock, poll_interval=0.01) as reg:
        yield reg


@pytest.fixture
async def other(tmp_path: Path, clock: FakeClock) -> AsyncIterator[LocalRegistry]:
    """A second registry object on the same file: another sidecar process."""
    async with LocalRegistry(tmp_path / "registry.db", clock=clock, poll_interval=0.01) as reg:
        yield reg


async def test_register_then_instances_round_trip(registry: LocalRegistry) -> None:
    me = orders(version="1.2.0", environment="prod", metadata={"zone": "a"})
    instance_id = await registry.register(me)
    [found] = await registry.instances(ORDERS)
    assert found == Instance(
        "orders",
        instance_id,
        "127.0.0.1",
        8080,
        version="1.2.0",
        environment="prod",
        tags={"zone": "a"},
    )
    assert found.lease_age == 0.0
    assert await registry.instances(ServiceKey("orders", app="other")) == ()


async def test_register_is_idempotent_per_endpoint(registry: LocalRegistry) -> None:
    first = await registry.register(orders())
    again = await registry.register(orders(version="2.0.0"))
    second_port = await registry.register(orders(port=8081))
    assert first == again != second_port
    found = await registry.instances(ORDERS)
    assert [(i.instance_id, i.version) for i in found] == [
        (first, "2.0.0"),
        (second_port, "0.0.1"),
    ]


async def test_heartbeat_renews_and_expiry_hides(registry: LocalRegistry, clock: FakeClock) -> None:
    instance_id = await registry.register(orders(lease_ttl=30.0))
    clock.now += 20
    [found] = await registry.instances(ORDERS)
    assert found.lease_age == 20.0
    await registry.heartbeat(instance_id)
    clock.now += 20  # 40 s after register, 20 s after the heartbeat
    [found] = await registry.instances(ORDERS)
    assert found.lease_age == 20.0
    clock.now += 10
    assert await registry.instances(ORDERS) == ()


async def test_heartbeat_after_expiry_raises_lease_expired(
    registry: LocalRegistry, clock: FakeClock
) -> None:
    instance_id = await registry.register(orders(lease_ttl=30.0))
    clock.now += 30
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)
    with pytest.raises(LeaseExpired):
        await registry.heartbeat("never-registered")
    # Registering again (what the heartbeat loop does on LeaseExpired) makes a
    # new instance: the expired one is gone for good.
    renewed_id = await registry.register(orders(lease_ttl=30.0))
    assert renewed_id != instance_id
    await registry.heartbeat(renewed_id)
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)


async def test_set_status_flips_up_and_down(registry: LocalRegistry, clock: FakeClock) -> None:
    instance_id = await registry.register(orders())
    await registry.set_status(instance_id, "DOWN")
    assert [i.status for i in await registry.instances(ORDERS)] == ["DOWN"]
    await registry.set_status(instance_id, "UP")
    assert [i.status for i in await registry.instances(ORDERS)] == ["UP"]
    with pytest.raises(LeaseExpired):
        await registry.set_status("never-registered", "DOWN")


async def test_deregister_removes_and_tolerates_missing(registry: LocalRegistry) -> None:
    instance_id = await registry.register(orders())
    await registry.deregister(instance_id)
    assert await registry.instances(ORDERS) == ()
    await registry.deregister(instance_id)
    with pytest.raises(LeaseExpired):
        await registry.heartbeat(instance_id)


async def test_services_lists_live_services_of_the_app(
    registry: LocalRegistry, other: LocalRegistry, clock: FakeClock
) -> None:
    assert await registry.services("default") == []
    await registry.register(orders(port=8080))
    await other.register(orders(port=8081))
    users = await other.register(attrs.evolve(orders(), service="users"))
    await registry.set_status(users, "DOWN")  # DOWN is still live
    await registry.register(attrs.evolve(orders(), service="billing", lease_ttl=10.0))
    gone = await registry.register(attrs.evolve(orders(), service="gone"))
    await registry.deregister(gone)
    await registry.register(attrs.evolve(orders(), app="shop", service="carts"))
    assert await registry.services("default") == ["billing", "orders", "users"]
    clock.now += 10  # billing's only lease runs out
    assert await other.services("default") == ["orders", "users"]
    assert await registry.services("shop") == ["carts"]
    assert await registry.services("nobody") == []


async def test_two_registries_on_one_file_see_each_other(
    registry: LocalRegistry, other: LocalRegistry
) -> None:
    mine = await registry.register(orders(port=8080))
    theirs = await other.register(orders(port=8081))
    for reg in (registry, other):
        assert [i.instance_id for i in await reg.instances(ORDERS)] == [mine, theirs]
    await other.deregister(mine)
    assert [i.instance_id for i in await registry.instances(ORDERS)] == [theirs]


async def test_watch_sees_other_registry_within_250ms(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    watcher = Watcher()
    # Default poll_interval: this is the latency the sidecar actually gets.
    async with LocalRegistry(path) as reg, LocalRegistry(path) as other, trio.open_nursery() as n:
        n.start_soon(reg.watch, ORDERS, watcher)
        with trio.fail_after(5):
            await watcher.wait_for(lambda s: s == [])
        instance_id = await other.register(orders())
        with trio.fail_after(0.25):
            [found] = await watcher.wait_for(lambda s: s)
        assert found.instance_id == instance_id
        n.cancel_scope.cancel()


async def test_watch_reports_only_content_changes(
    registry: LocalRegistry, other: LocalRegistry
) -> None:
    watcher = Watcher()
    async with trio.open_nursery() as n:
        n.start_soon(registry.watch, ORDERS, watcher)
        with trio.fail_after(5):
            await watcher.wait_for(lambda s: s == [])
            instance_id = await other.register(orders(metadata={"zone": "a"}))
            await watcher.wait_for(lambda s: len(s) == 1)
            # Same content: bumps the revision but must not call on_change.
            await other.register(orders(metadata={"zone": "a"}))
            await other.set_status(instance_id, "DOWN")
            await watcher.wait_for(lambda s: s[0].status == "DOWN")
            # A tag-only change is a change (route rules match on tags).
            await other.register(orders(metadata={"zone": "b"}))
            await watcher.wait_for(lambda s: s[0].tags == {"zone": "b"})
            await other.deregister(instance_id)
            await watcher.wait_for(lambda s: s == [])
        n.cancel_scope.cancel()
    assert [[(i.status, dict(i.tags)) for i in s] for s in watcher.snapshots] == [
        [],
        [("UP", {"zone": "a"})],
        [("DOWN", {"zone": "a"})],
        [("UP", {"zone": "b"})],
        [],
    ]


async def test_watch_notices_expiry(registry: LocalRegistry, clock: FakeClock) -> None:
    await registry.register(orders(lease_ttl=30.0))
    watcher = Watcher()
    async with trio.open_nursery() as n:
        n.start_soon(registry.watch, ORDERS, watcher)
        with trio.fail_after(5):
            await watcher.wait_for(lambda s: len(s) == 1)
            # No write happens: only the lease deadline can wake the watcher.
            clock.now += 30
            await watcher.wait_for(lambda s: s == [])
        n.cancel_scope.cancel()


async def test_watch_sees_registration_from_another_process(tmp_path: Path) -> None:
    # Real time on both sides: the child process cannot share a fake clock.
    path = tmp_path / "registry.db"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import trio
        from trimesh.discovery.base import Registration
        from trimesh.discovery.local import LocalRegistry

        async def main() -> None:
            async with LocalRegistry(Path(sys.argv[1])) as reg:
                print(await reg.register(Registration("orders", "10.0.0.7", 9000)))

        trio.run(main)
        """
    )
    watcher = Watcher()
    async with LocalRegistry(path, poll_interval=0.01) as real, trio.open_nursery() as n:
        n.start_soon(real.watch, ORDERS, watcher)
        with trio.fail_after(8):
            await watcher.wait_for(lambda s: s == [])
            child = await trio.run_process(
                [sys.executable, "-c", script, str(path)], capture_stdout=True
            )
            [found] = await watcher.wait_for(lambda s: s)
        assert found.instance_id == child.stdout.decode().strip()
        assert found.address == ("10.0.0.7", 9000)
        n.cancel_scope.cancel()


async def test_sqlite_errors_become_registry_unavailable(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not a sqlite file" * 100)
    async with LocalRegistry(tmp_path / "not-a-db") as reg:
        with pytest.raises(RegistryUnavailable) as info:
            await reg.instances(ORDERS)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_local_registry_satisfies_the_protocol(tmp_path: Path) -> None:
    registry: Registry = LocalRegistry(tmp_path / "registry.db")  # checked by mypy
    assert "idle" in repr(registry)


async def test_closed_registry_refuses_calls(registry: LocalRegistry) -> None:
    await registry.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await registry.instances(ORDERS)


async def test_parent_directories_are_created(tmp_path: Path) -> None:
    async with LocalRegistry(tmp_path / "a" / "b" / "registry.db") as reg:
        assert await reg.instances(ORDERS) == ()
    assert (tmp_path / "a" / "b" / "registry.db").is_file()


@pytest.mark.parametrize(
    ("xdg", "expected"),
    [
        ("/srv/state", Path("/srv/state/trimesh/registry.db")),
        ("", Path("/home/me/.local/state/trimesh/registry.db")),
        ("relative/state", Path("/home/me/.local/state/trimesh/registry.db")),
        (None, Path("/home/me/.local/state/trimesh/registry.db")),
    ],
)
def test_default_path_follows_xdg(
    monkeypatch: pytest.MonkeyPatch, xdg: str | None, expected: Path
) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    assert default_path() == expected
