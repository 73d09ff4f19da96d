"""Which registry entries the request path may use (`trimesh.discovery.trust`)."""

from __future__ import annotations

import pytest

from trimesh.config.model import RegistryConfig
from trimesh.discovery.base import Instance
from trimesh.discovery.factory import instance_filter
from trimesh.discovery.trust import BASELINE, InstanceFilter, parse_ip

OWN = frozenset({("127.0.0.1", 30101), ("0.0.0.0", 30102), ("10.0.0.5", 30105)})
STRICT = InstanceFilter(own=OWN, allow_loopback=False)
LOCAL = InstanceFilter(own=OWN, allow_loopback=True)
NETWORKS = InstanceFilter(own=OWN, allow_loopback=True, allow_networks=("10.0.0.0/8", "fd00::/8"))


def at(host: str, port: int = 8080) -> Instance:
    return Instance("orders", f"{host}:{port}", host, port)


# (filter, host, port, reason fragment or None when usable)
CASES = [
    # our own listeners, exactly or through a wildcard / loopback listener
    (LOCAL, "127.0.0.1", 30101, "own listeners"),
    (LOCAL, "127.0.0.2", 30101, "own listeners"),
    (LOCAL, "localhost", 30101, "own listeners"),
    (LOCAL, "::1", 30101, "own listeners"),
    (LOCAL, "::ffff:127.0.0.1", 30102, "own listeners"),
    (LOCAL, "127.0.0.1", 30102, "own listeners"),
    (LOCAL, "10.0.0.5", 30105, "own listeners"),
    (STRICT, "10.0.0.5", 30105, "own listeners"),
    (LOCAL, "127.0.0.1", 30105, None),  # 10.0.0.5 listener: loopback is another socket
    (LOCAL, "10.0.0.6", 30105, None),
    (LOCAL, "10.0.0.5", 30106, None),
    (LOCAL, "127.0.0.1", 8080, None),
    # never: metadata services, autoconfiguration, unspecified, multicast
    (LOCAL, "169.254.169.254", 80, "link-local"),
    (LOCAL, "169.254.0.1", 8080, "link-local"),
    (LOCAL, "fe80::1", 8080, "link-local"),
    (LOCAL, "fe80::1%eth0", 8080, "link-local"),
    (LOCAL, "[fe80::1]", 8080, "link-local"),
    (LOCAL, "::ffff:169.254.169.254", 80, "link-local"),
    (LOCAL, "0.0.0.0", 8080, "unspecified"),
    (LOCAL, "::", 8080, "unspecified"),
    (LOCAL, "224.0.0.1", 8080, "multicast"),
    (LOCAL, "ff02::1", 8080, "multicast"),
    (LOCAL, "10.0.0.1", 0, "port 0"),
    (LOCAL, "10.0.0.1", 70000, "port 70000"),
    # loopback only where the registry is local to the machine
    (STRICT, "127.0.0.1", 8080, "loopback"),
    (STRICT, "::1", 8080, "loopback"),
    (STRICT, "localhost", 8080, "loopback"),
    (STRICT, "api.localhost", 8080, "loopback"),
    (STRICT, "10.0.0.1", 8080, None),
    (STRICT, "2001:db8::1", 8080, None),
    (STRICT, "orders.internal", 8080, None),  # hostnames are not resolved here
    # allow_networks narrows everything else further
    (NETWORKS, "10.1.2.3", 8080, None),
    (NETWORKS, "fd00::7", 8080, None),
    (NETWORKS, "192.168.1.1", 8080, "outside registry.allow_networks"),
    (NETWORKS, "127.0.0.1", 8080, "outside registry.allow_networks"),
    (NETWORKS, "orders.internal", 8080, "hostname"),
    (NETWORKS, "169.254.169.254", 80, "link-local"),
]


@pytest.mark.parametrize(("rules", "host", "port", "reason"), CASES)
def test_instance_filter(rules: InstanceFilter, host: str, port: int, reason: str | None) -> None:
    rejection = rules.rejection(at(host, port))
    if reason is None:
        assert rejection is None
        assert rules.usable(at(host, port))
    else:
        assert rejection is not None and reason in rejection
        assert not rules.usable(at(host, port))


def test_allow_networks_must_be_networks() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        InstanceFilter(allow_networks=("10.0.0.0/33",))
    # Host bits are tolerated: operators write "10.1.2.3/8" meaning 10.0.0.0/8.
    assert InstanceFilter(allow_networks=("10.1.2.3/8",)).usable(at("10.9.9.9"))


def test_baseline_allows_loopback_but_not_the_metadata_service() -> None:
    assert BASELINE.usable(at("127.0.0.1"))
    assert not BASELINE.usable(at("169.254.169.254", 80))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("orders", None),
        ("", None),
    ],
)
def test_parse_ip(host: str, expected: str | None) -> None:
    ip = parse_ip(host)
    assert (None if ip is None else str(ip)) == expected


@pytest.mark.parametrize(
    ("registry", "advertised", "loopback_ok"),
    [
        ("local", "10.0.0.5", True),
        ("static", "10.0.0.5", True),
        ("etcd", "10.0.0.5", False),
        ("servicecomb", "10.0.0.5", False),
        # We register a loopback address ourselves: one machine, peers on loopback too.
        ("etcd", "127.0.0.1", True),
        ("servicecomb", "::1", True),
    ],
)
def test_instance_filter_from_config(registry: str, advertised: str, loopback_ok: bool) -> None:
    cfg = RegistryConfig(type=registry, allow_networks=())  # type: ignore[arg-type]
    rules = instance_filter(cfg, [("127.0.0.1", 30101), ("", 30102)], advertised=advertised)
    assert rules.usable(at("127.0.0.1", 8080)) is loopback_ok
    assert not rules.usable(at("127.0.0.1", 30101))
    # A wildcard listener is reached through the address we advertise too.
    assert not rules.usable(at(advertised, 30102))
    assert rules.usable(at("10.0.0.9", 30102))


def test_instance_filter_from_config_keeps_allow_networks() -> None:
    cfg = RegistryConfig(type="local", allow_networks=("10.0.0.0/8",))
    rules = instance_filter(cfg, [], advertised="10.0.0.5")
    assert rules.usable(at("10.0.0.9")) and not rules.usable(at("192.168.0.9"))
