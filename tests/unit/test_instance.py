"""What makes two registry instances the same (`trimesh.discovery.base.Instance`).

Watchers publish a snapshot only when it differs from the last one, so
equality must see every change a consumer acts on (tags included: route
rules match on them) and ignore the lease age that ticks on every read.
"""

from __future__ import annotations

import attrs
import pytest

from trimesh.discovery.base import Instance

BASE = Instance("orders", "i-1", "10.0.0.1", 8080, version="1.0", tags={"zone": "a"})


@pytest.mark.parametrize(
    ("change", "equal"),
    [
        ({"lease_age": 12.5}, True),
        ({"tags": {"zone": "a"}}, True),
        ({"service": "users"}, False),
        ({"app": "shop"}, False),
        ({"instance_id": "i-2"}, False),
        ({"host": "10.0.0.2"}, False),
        ({"port": 8081}, False),
        ({"status": "DOWN"}, False),
        ({"version": "1.1"}, False),
        ({"environment": "prod"}, False),
        ({"tags": {"zone": "b"}}, False),
        ({"tags": {}}, False),
        ({"tags": {"zone": "a", "canary": "1"}}, False),
    ],
)
def test_equality(change: dict[str, object], equal: bool) -> None:
    other = attrs.evolve(BASE, **change)
    assert (other == BASE) is equal
    assert (other != BASE) is not equal
    if equal:
        assert hash(other) == hash(BASE)


def test_tag_order_does_not_matter_and_instances_stay_hashable() -> None:
    one = attrs.evolve(BASE, tags={"a": "1", "b": "2"})
    two = attrs.evolve(BASE, tags={"b": "2", "a": "1"})
    assert one == two and len({one, two}) == 1
    # Differing only in tags: equal hashes are allowed, equality is not.
    assert len({one, BASE}) == 2


def test_snapshots_compare_by_content() -> None:
    aged = attrs.evolve(BASE, lease_age=3.0)
    retagged = attrs.evolve(BASE, tags={"zone": "b"})
    assert (aged,) == (BASE,)
    assert (retagged,) != (BASE,)
