"""The instance cache the request path reads, and its trust filter (`trimesh.discovery.cache`)."""

from __future__ import annotations

import logging

import pytest

from trimesh.discovery.base import Instance
from trimesh.discovery.cache import InstanceCache
from trimesh.discovery.trust import InstanceFilter

GOOD = Instance("orders", "good", "10.0.0.1", 8080)
DOWN = Instance("orders", "down", "10.0.0.2", 8080, status="DOWN")
METADATA = Instance("orders", "metadata", "169.254.169.254", 80)
ADMIN = Instance("orders", "admin", "127.0.0.1", 30102)
LOOPBACK = Instance("orders", "loopback", "127.0.0.1", 8080)
SIDECAR = InstanceFilter(own=frozenset({("127.0.0.1", 30102)}), allow_loopback=False)


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="trimesh.discovery.cache")
    return caplog


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The cache's WARNING lines so far."""
    return [r.getMessage() for r in caplog.records if r.name == "trimesh.discovery.cache"]


def test_unknown_service_is_none_and_known_empty_is_empty() -> None:
    cache = InstanceCache()
    assert cache.lookup("orders") is None
    cache.update("orders", [])
    assert cache.lookup("orders") == ()
    cache.forget("orders")
    assert cache.lookup("orders") is None


def test_lookup_returns_usable_up_instances_and_all_returns_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = InstanceCache(SIDECAR)
    cache.update("orders", [GOOD, DOWN, METADATA, ADMIN, LOOPBACK])
    assert cache.lookup("orders") == (GOOD,)
    assert cache.all("orders") == (GOOD, DOWN, METADATA, ADMIN, LOOPBACK)
    assert cache.snapshot() == {"orders": (GOOD, DOWN, METADATA, ADMIN, LOOPBACK)}
    assert set(cache.rejected("orders")) == {"metadata", "admin", "loopback"}
    assert "own listeners" in cache.rejected("orders")["admin"]
    assert len(warned(caplog)) == 3


def test_each_rejected_instance_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = InstanceCache(SIDECAR)
    for _ in range(3):
        cache.update("orders", [GOOD, METADATA])
    [line] = warned(caplog)
    assert "metadata" in line and "169.254.169.254" in line and "link-local" in line
    cache.update("orders", [GOOD])  # gone, then back: newly rejected again
    cache.update("orders", [GOOD, METADATA])
    assert len(warned(caplog)) == 2


def test_all_rejected_means_known_but_empty() -> None:
    cache = InstanceCache(SIDECAR)
    cache.update("orders", [METADATA])
    assert cache.lookup("orders") == ()  # 503 no instance, not 502 unknown service


def test_set_filter_refilters_what_the_cache_holds(caplog: pytest.LogCaptureFixture) -> None:
    cache = InstanceCache()  # before the listeners bind: the baseline rules
    cache.update("orders", [GOOD, ADMIN, LOOPBACK, METADATA])
    cache.update("users", [LOOPBACK])
    assert cache.lookup("orders") == (GOOD, ADMIN, LOOPBACK)
    assert len(warned(caplog)) == 1  # only the metadata address
    cache.set_filter(SIDECAR)
    assert cache.instance_filter is SIDECAR
    assert cache.lookup("orders") == (GOOD,)
    assert cache.lookup("users") == ()
    assert len(warned(caplog)) == 4  # admin, loopback twice; metadata not again
    cache.set_filter(InstanceFilter(allow_loopback=True))
    assert cache.lookup("users") == (LOOPBACK,)
    assert cache.rejected("users") == {}


def test_repr_shows_counts() -> None:
    cache = InstanceCache(SIDECAR)
    cache.update("orders", [GOOD, METADATA])
    assert repr(cache) == "<InstanceCache {'orders': 2} rejected=1>"
