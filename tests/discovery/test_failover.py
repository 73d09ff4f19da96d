"""Endpoint failover within one call deadline (`trimesh.discovery._failover`), and its use
by the etcd and Service Center backends against a member that hangs.

A hung member either accepts connections and never answers (a `SwitchProxy`
in blackhole mode) or never accepts them (a full accept queue).
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.discovery.watcher import Watcher
from tests.etcd_server import EtcdServer, SwitchProxy, never_accepting
from tests.sc_double import ServiceCenterDouble
from trimesh.discovery._failover import (
    MIN_ATTEMPT,
    EndpointOrder,
    attempt_share,
    call_deadline,
    first_answer,
)
from trimesh.discovery.base import Registration, RegistryUnavailable, ServiceKey
from trimesh.discovery.etcd import EtcdRegistry
from trimesh.discovery.servicecomb import ServiceCombRegistry

ME = Registration("orders", "127.0.0.1", 8080)
A, B, C = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)
DEADLINE = 1.0

# ---------------------------------------------------------------- sans-IO


@pytest.mark.parametrize(
    ("remaining", "left", "share"),
    [
        (6.0, 3, 2.0),
        (6.0, 1, 6.0),
        (0.15, 3, MIN_ATTEMPT),  # a floor, so a short remainder is not split into crumbs
        (math.inf, 2, math.inf),  # no deadline: no share either
        (1.0, 0, 1.0),
    ],
)
def test_attempt_share(remaining: float, left: int, share: float) -> None:
    assert attempt_share(remaining, left) == pytest.approx(share)


def test_endpoint_order_starts_with_the_last_that_answered() -> None:
    order = EndpointOrder([A, B, C])
    assert order.order() == [0, 1, 2]
    order.answered(2)
    assert (order.order(), order.current) == ([2, 0, 1], C)
    order.skip()
    assert order.order() == [0, 1, 2]
    with pytest.raises(ValueError):
        EndpointOrder([])


# ---------------------------------------------------------------- the loop, on the mock clock


async def test_each_endpoint_gets_a_share_of_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order, tried = EndpointOrder([A, B, C]), []

    async def attempt(endpoint: tuple[str, int]) -> tuple[str, int]:
        tried.append((endpoint, trio.current_time()))
        if endpoint != C:
            await trio.sleep_forever()
        return endpoint

    start = trio.current_time()
    with trio.fail_after(6):
        assert await first_answer(order, attempt, retry_on=(OSError,), what="test") == C
    assert [(e, t - start) for e, t in tried] == [(A, 0), (B, 2), (C, 4)]
    assert order.current == C  # tried first next time


async def test_refusals_move_on_at_once_and_other_errors_propagate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order = EndpointOrder([A, B])

    async def refused(endpoint: tuple[str, int]) -> None:
        raise ConnectionRefusedError(f"{endpoint} refused")

    with pytest.raises(RegistryUnavailable, match=r"no test endpoint answered: .*2.*refused"):
        await first_answer(order, refused, retry_on=(OSError,), what="test")
    assert trio.current_time() == 0

    async def bug(endpoint: tuple[str, int]) -> None:
        raise KeyError("not a transport error")

    with pytest.raises(KeyError):
        await first_answer(order, bug, retry_on=(OSError,), what="test")


async def test_every_endpoint_hung_ends_at_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(endpoint: tuple[str, int]) -> None:
        await trio.sleep_forever()

    order = EndpointOrder([A, B])
    with (
        pytest.raises(RegistryUnavailable, match=r"^register: no answer within 3 s$"),
        call_deadline(3, "register"),
    ):
        await first_answer(order, hang, retry_on=(OSError,), what="test")
    assert trio.current_time() == 3


# ---------------------------------------------------------------- real backends


@pytest.fixture(params=["accepts-and-hangs", "never-accepts"])
async def hung(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[tuple[str, int]]:
    """An endpoint of a registry member that hangs."""
    if request.param == "never-accepts":
        with never_accepting() as endpoint:
            yield endpoint
        return
    proxy = SwitchProxy(("127.0.0.1", 1))
    await nursery.start(proxy.serve)
    proxy.blackhole()
    yield proxy.endpoint


def elapsed_since(start: float) -> float:
    return trio.current_time() - start


async def test_etcd_fails_over_within_the_call_deadline(
    etcd: EtcdServer, hung: tuple[str, int]
) -> None:
    registry = EtcdRegistry([hung, etcd.endpoint], prefix=f"/t-{uuid.uuid4().hex[:8]}")
    start = trio.current_time()
    with call_deadline(DEADLINE, "register"):
        instance_id = await registry.register(ME)
    assert DEADLINE / 2 <= elapsed_since(start) < DEADLINE  # half for each member
    # Streams fail over too: the keepalive of a heartbeat, starting at the hung member.
    registry._api._order.answered(0)
    start = trio.current_time()
    with call_deadline(DEADLINE, "heartbeat"):
        await registry.heartbeat(instance_id)
    assert elapsed_since(start) < DEADLINE
    start = trio.current_time()
    with call_deadline(DEADLINE, "look up"):  # and the member that answered stays first
        assert len(await registry.instances(ServiceKey("orders"))) == 1
    assert elapsed_since(start) < DEADLINE / 2


@pytest.fixture
async def sc_port(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(ServiceCenterDouble().serve)
    return port


async def test_servicecomb_fails_over_within_the_call_deadline(
    sc_port: int, hung: tuple[str, int]
) -> None:
    registry = ServiceCombRegistry([hung, ("127.0.0.1", sc_port)], call_timeout=DEADLINE)
    start = trio.current_time()
    with call_deadline(DEADLINE, "register"):
        instance_id = await registry.register(ME)
    assert DEADLINE / 2 <= elapsed_since(start) < DEADLINE
    start = trio.current_time()
    with call_deadline(DEADLINE, "heartbeat"):
        await registry.heartbeat(instance_id)
    assert elapsed_since(start) < DEADLINE / 2

    # A watch that starts at the hung member: either the connect fails over,
    # or (the member accepted) the handshake runs out and the next watch,
    # restarted as the session would, goes to the member that answers.
    registry._order.answered(0)
    watcher = Watcher()

    async def watch_like_the_session() -> None:
        while True:
            with contextlib.suppress(RegistryUnavailable):
                await registry.watch(ServiceKey("orders"), watcher)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_like_the_session)
        with trio.fail_after(2 * DEADLINE):
            await watcher.wait_for(lambda s: [i.instance_id for i in s] == [instance_id])
        nursery.cancel_scope.cancel()
