"""Config parsing, merging and validation: sans-IO, table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trimesh.config import Config, ConfigError, build, load, registry_url
from trimesh.config.load import from_env, serving_problems


def test_defaults_match_the_documented_ports() -> None:
    config = build({})
    assert config == Config()
    assert config.listen.outbound == ("127.0.0.1", 30101)
    assert config.listen.admin == ("127.0.0.1", 30102)
    assert config.listen.inbound == ("127.0.0.1", 30103)
    assert config.limits.max_header_bytes == 65536
    assert config.limits.max_headers == 100
    assert config.limits.header_timeout == 10.0
    assert config.listen.drain_timeout == 20.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"limits": {"header_timeout": "500ms"}}, ("limits", "header_timeout", 0.5)),
        ({"limits": {"header_timeout": "2m"}}, ("limits", "header_timeout", 120.0)),
        ({"limits": {"max_header_bytes": "32KiB"}}, ("limits", "max_header_bytes", 32768)),
        ({"limits": {"max_body_bytes": "1GiB"}}, ("limits", "max_body_bytes", 1 << 30)),
        ({"listen": {"outbound": "[::1]:8000"}}, ("listen", "outbound", ("::1", 8000))),
        ({"listen": {"admin": 9000}}, ("listen", "admin", ("127.0.0.1", 9000))),
        ({"app": {"ports": "rest:8080,grpc:9090"}}, ("app", "ports", {"rest": 8080, "grpc": 9090})),
    ],
)
def test_value_forms(raw: dict[str, Any], expected: tuple[str, str, Any]) -> None:
    section, key, value = expected
    assert getattr(getattr(build(raw), section), key) == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"limits": {"header_timeout": "soon"}}, "limits.header_timeout: expected a duration"),
        ({"limits": {"header_timeout": 0}}, "limits.header_timeout: must be positive"),
        ({"limits": {"max_headers": True}}, "limits.max_headers: expected a whole number"),
        ({"listen": {"inbound": "nohost"}}, "listen.inbound: expected HOST:PORT"),
        ({"listen": {"inbound": "h:70000"}}, "listen.inbound: port must be 0-65535"),
        ({"listen": "x"}, "listen: expected a mapping"),
        ({"service": {"name": "a b"}}, "service.name: expected letters"),
        ({"service": {"nmae": "x"}}, "service.nmae: unknown key"),
        ({"registry": {"type": "zookeeper"}}, "registry.type: expected one of"),
        ({"registry": {"type": "etcd"}}, "registry.endpoints: required"),
        (
            {"registry": {"services": {"x": ["nope"]}}},
            "registry.services: x[0]: expected HOST:PORT",
        ),
        ({"registry": {"ttl": "5s", "heartbeat_interval": "10s"}}, "registry.ttl: must be longer"),
        ({"app": {"health": {"port": "grpc"}}}, "app.health.port: 'grpc' is not declared"),
        ({"log_level": "loud"}, "log_level: expected one of"),
    ],
)
def test_problems_are_named_by_key_path(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(raw)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("registry", ["etcd", "servicecomb"])
@pytest.mark.parametrize("inbound", ["127.0.0.1:30103", "0.0.0.0:30103", "[::]:30103", "[::1]:1"])
def test_network_registry_needs_advertise_for_a_local_inbound(registry: str, inbound: str) -> None:
    raw: dict[str, Any] = {
        "registry": {"type": registry, "endpoints": "10.0.0.1:2379"},
        "listen": {"inbound": inbound},
    }
    # Only a sidecar that registers itself needs it (`trimesh registry list` does not).
    [problem] = serving_problems(build(raw))
    assert problem.startswith(f"listen.advertise: required with registry type {registry} when")
    # An explicit advertise is honoured, loopback included (one machine, tests).
    for advertise in ("10.0.0.5", "127.0.0.1"):
        raw["listen"] = {"inbound": inbound, "advertise": advertise}
        assert serving_problems(build(raw)) == []


@pytest.mark.parametrize(
    "raw",
    [
        {
            "registry": {"type": "etcd", "endpoints": "10.0.0.1:2379"},
            "listen": {"inbound": "10.0.0.5:1"},
        },
        {"registry": {"type": "local"}, "listen": {"inbound": "127.0.0.1:1"}},
        {"registry": {"type": "static"}, "listen": {"inbound": "0.0.0.0:1"}},
    ],
)
def test_advertise_is_not_needed_otherwise(raw: dict[str, Any]) -> None:
    assert serving_problems(build(raw)) == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        build({"limits": {"header_timeout": "x", "max_headers": "y"}, "bogus": 1})
    assert len(info.value.problems) == 3


def test_mesher_environment_variables() -> None:
    env = {
        "CAS_COMPONENT_NAME": "orders",
        "CAS_APPLICATION_NAME": "shop",
        "CAS_INSTANCE_VERSION": "1.2.3",
        "ENVIRONMENT": "production",
        "SERVICE_PORTS": "rest:8080",
        "PAAS_CSE_SC_ENDPOINT": "http://10.0.0.1:30100",
        "TRIMESH_LISTEN_ADVERTISE": "10.0.0.5",
    }
    config = build(from_env(env))
    assert (config.service.name, config.service.app, config.service.version) == (
        "orders",
        "shop",
        "1.2.3",
    )
    assert config.service.environment == "production"
    assert config.app.ports == {"rest": 8080}
    assert config.registry.type == "servicecomb"
    assert config.registry.endpoints == (("10.0.0.1", 30100),)
    assert config.listen.advertise == "10.0.0.5"


def test_specific_addr_sets_the_app_address() -> None:
    config = build(from_env({"SPECIFIC_ADDR": "127.0.0.2:9999"}))
    assert config.app.host == "127.0.0.2"
    assert config.app.ports == {"rest": 9999}


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("service: {name: from-file, version: '1'}\nlimits: {max_headers: 10}\n")
    env = {"CAS_COMPONENT_NAME": "from-env", "TRIMESH_LIMITS_MAX_HEADERS": "20"}
    config = load(path, {"service": {"name": "from-cli"}}, env=env)
    assert config.service.name == "from-cli"
    assert config.service.version == "1"
    assert config.limits.max_headers == 20


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("local:///var/lib/r.db", {"type": "local", "path": "/var/lib/r.db"}),
        ("local:", {"type": "local"}),
        ("static:", {"type": "static"}),
        ("etcd://a:2379,b:2379", {"type": "etcd", "endpoints": "a:2379,b:2379"}),
        ("servicecomb://127.0.0.1:30100", {"type": "servicecomb", "endpoints": "127.0.0.1:30100"}),
    ],
)
def test_registry_urls(url: str, expected: dict[str, str]) -> None:
    assert registry_url(url) == expected


def test_access_log_off_unquoted_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("observe: {access_log: off}\n")
    assert load(path, env={}).observe.access_log == "off"


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("service: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(path) in info.value.problems[0]
