"""`trimesh import-mesher`: Mesher / go-chassis conf folders → trimesh.yaml.

The samples under tests/data/mesher/ are written in Mesher's documented format
(apache/servicecomb-mesher conf/ and go-chassis docs): `consumer/` in the
current servicecomb.* / cse.* layout, `provider/` in the older cse.* and
service_description layout with flat dotted keys mixed in.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from trimesh import convert as p
from trimesh.config import Config, load
from trimesh.config.load import serving_problems
from trimesh.mesher import add_import_command, convert, read_folder, run_import_command

DATA = Path(__file__).parent / "data" / "mesher"

CONSUMER: dict[str, Any] = {
    "service": {
        "name": "webapp",
        "app": "shop",
        "version": "1.10",
        "environment": "production",
        "metadata": {"allowCrossApp": "false", "zone": "az1"},
    },
    "listen": {"outbound": "127.0.0.1:30101", "admin": "127.0.0.1:30102"},
    "registry": {"type": "servicecomb", "endpoints": ["127.0.0.1:30100", "10.0.0.9:30100"]},
    "routes": {
        "orders": [
            {
                "precedence": 2,
                "match": {
                    "source": "webapp",
                    "source_tags": {"version": "1.10"},
                    "headers": {
                        "x-user": {"regex": ".*(?:vip).*", "caseInsensitive": True},
                        "x-tier": {"exact": "gold"},
                    },
                },
                "route": [{"tags": {"version": "2.0"}, "weight": 100}],
            },
            {
                "precedence": 1,
                "route": [
                    {"tags": {"version": "1.0"}, "weight": 90},
                    {"tags": {"version": "2.0"}, "weight": 10},
                ],
            },
        ]
    },
    "policies": {
        "default": {
            "load_balancer": {"strategy": "random"},
            "retry": {
                "retry_on_same": 1,
                "retry_on_next": 2,
                "backoff": {"kind": "exponential", "base": "200ms", "max": "400ms"},
            },
            "timeout": "5s",
            "max_concurrent": 200,
            "circuit_breaker": {
                "enabled": True,
                "force_open": False,
                "force_closed": False,
                "sleep_window": "10s",
                "request_volume_threshold": 20,
                "error_threshold_percentage": 50,
            },
            "fault": {"delay": {"percent": 10, "fixed": "5ms"}},
        },
        "services": {
            "orders": {
                "load_balancer": {"strategy": "weighted_response"},
                "retry": {"retry_on_same": 0, "retry_on_next": 3},
                "timeout": "1500ms",
                "max_concurrent": 50,
                "fault": {"abort": {"percent": 5, "status": 503}},
            },
            "payments": {
                "load_balancer": {"strategy": "session_sticky"},
                # Mesher: a service's loadbalance block replaces the global one.
                "retry": {"attempts": 0, "retry_on_same": 0, "retry_on_next": 0},
                "circuit_breaker": {"error_threshold_percentage": 10, "sleep_window": "2500ms"},
            },
        },
    },
    "egress": {
        "allow": [
            {"hosts": ["www.google.com", "*.yahoo.com"], "ports": [80]},
            {"hosts": ["www.facebook.com"], "ports": [80]},
        ]
    },
    "log_level": "warning",
}

PROVIDER: dict[str, Any] = {
    "service": {
        "name": "orders",
        "app": "shop",
        "version": "2.0.1",
        "environment": "production",
        "metadata": {"allowCrossApp": "true", "zone": "az2"},
    },
    "listen": {
        "outbound": "127.0.0.1:30101",
        "inbound": "10.0.0.5:30101",
        "admin": "127.0.0.1:30102",
    },
    "registry": {
        "type": "servicecomb",
        "endpoints": ["10.0.0.9:30100"],
        "heartbeat_interval": "30s",
        "ttl": "120s",
        "project": "prod",
    },
    "routes": {
        "inventory": [
            {
                "precedence": 2,
                "match": {
                    "source_tags": {"version": "2.0.1"},
                    "headers": {"x-region": {"regex": "^eu-.*$"}},
                },
                "route": [{"tags": {"version": "1.2"}, "weight": 100}],
            }
        ],
        "reviews": [
            {
                "precedence": 1,
                "route": [
                    {"tags": {"version": "0.2", "app": "HelloWorld"}, "weight": 80},
                    {"tags": {"version": "1.2", "app": "HelloWorld"}, "weight": 20},
                ],
            }
        ],
    },
    "policies": {
        "default": {
            "load_balancer": {"strategy": "round_robin"},
            "retry": {"attempts": 0},
            "timeout": "3s",
        },
        "services": {
            "inventory": {
                "timeout": "800ms",
                "circuit_breaker": {"enabled": True},
                "rate_limit": {"qps": 20, "burst": 4},
            }
        },
    },
    "inbound": {
        "rate_limit": {
            "qps": 100,
            "burst": 20,
            "per_source": {
                "batch": {"qps": 3, "burst": 10},
                "reports": {"qps": 200, "burst": 40},
                "web": {"qps": 40, "burst": 8},
            },
        }
    },
    "log_level": "debug",
}


def _convert(name: str) -> tuple[dict[str, Any], list[str]]:
    return convert(read_folder(DATA / name))


def _one(files: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return convert(dict(files))


@pytest.mark.parametrize(("sample", "expected"), [("consumer", CONSUMER), ("provider", PROVIDER)])
def test_samples_convert_to_the_expected_config(sample: str, expected: dict[str, Any]) -> None:
    config, _ = _convert(sample)
    assert config == expected


@pytest.mark.parametrize(
    ("sample", "named"),
    [
        ("consumer", "chassis.yaml: servicecomb.registry.scope: not mapped"),
        ("consumer", "chassis.yaml: servicecomb.handler.chain.Consumer.outgoing: not mapped"),
        ("consumer", "circuit_breaker.yaml: cse.isolation.Consumer.timeout.enabled: not mapped"),
        ("consumer", "circuit_breaker.yaml: cse.circuitBreaker.scope: not mapped"),
        ("consumer", "circuit_breaker.yaml: cse.fallbackpolicy.Consumer.policy: not mapped"),
        (
            "consumer",
            "load_balancing.yaml: cse.loadbalance.payments.SessionStickinessRule"
            ".sessionTimeoutInSeconds: not mapped",
        ),
        ("consumer", "mesher.yaml: localHealthCheck: not mapped: write app.health instead"),
        ("consumer", "mesher.yaml: admin.enable: not mapped"),
        ("consumer", "lager.yaml: logFile: not mapped"),
        ("consumer", "router.yaml: servicecomb.routeRule.payments[0].match.refer:"),
        ("consumer", "egress.yaml: egressRule.google-ext[0].ports[1]:"),
        (
            "consumer",
            "load_balancing.yaml: cse.loadbalance.payments: in Mesher this block replaces",
        ),
        ("consumer", "chassis.yaml: servicecomb.protocols.http.listenAddress: Mesher on 127.0.0.1"),
        ("provider", "chassis.yaml: cse.protocols.grpc.listenAddress: not mapped"),
        ("provider", "chassis.yaml: cse.service.registry.watch: not mapped"),
        (
            "provider",
            "chassis.yaml: cse.flowcontrol.Consumer.qps.limit.inventory.stock.reserve: not mapped",
        ),
        ("provider", "chassis.yaml: cse.loadbalance.retryOnNext: ignored: retryEnabled is not"),
        ("provider", "chassis.yaml: cse.flowcontrol.Provider.qps.limit.reports: Mesher gives"),
        ("provider", "microservice.yaml: service_description.level: not mapped"),
        ("provider", "auth.yaml: cse.credentials.accessKey: not mapped"),
        ("provider", "lager.yaml: rollingPolicy: not mapped"),
        (
            "provider",
            "rate_limiting.yaml: cse.flowcontrol.Provider.qps.limit.web: also set in chassis.yaml",
        ),
    ],
)
def test_unmapped_keys_are_warnings_naming_file_and_key(sample: str, named: str) -> None:
    _, warnings = _convert(sample)
    assert [w for w in warnings if w.startswith(named)], "\n".join(warnings)


# Sample keys whose value is Mesher's default (so dropping them changes nothing),
# and another value, which must change the output.
DEFAULT_VALUED = {
    "consumer/egress.yaml: egress.infra": "pilot",
    "consumer/load_balancing.yaml: cse.loadbalance.backoff.kind": "constant",
    "consumer/load_balancing.yaml: cse.loadbalance.orders.retryOnSame": 2,
    "provider/chassis.yaml: cse.service.registry.type": "kubernetes",
    "provider/chassis.yaml: cse.flowcontrol.Provider.qps.enabled": False,
    "provider/chassis.yaml: cse.loadbalance.retryEnabled": True,
}


@pytest.mark.parametrize("sample", ["consumer", "provider"])
def test_every_key_is_mapped_or_warned_about(sample: str) -> None:
    """Each leaf of a sample is warned about, or dropping (changing) it is noticed."""
    files = read_folder(DATA / sample)
    full, warnings = convert(files)
    for name, data in files.items():
        for key in _leaves(data):
            dotted = ".".join(key)
            if any(f"{name}: {dotted}" in w or f"in {name} ({dotted}:" in w for w in warnings):
                continue
            changed = copy.deepcopy(files)
            _set(changed[name], key, DEFAULT_VALUED.get(f"{sample}/{name}: {dotted}", _DROP))
            config, now = convert(changed)
            noticed = config != full or any(f"{name}: {dotted}" in w for w in now)
            assert noticed, f"{sample}/{name}: {dotted} silently dropped"


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(data, Mapping) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix] if data is not None else []


_DROP = object()


def _set(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        data = data[part]
    if value is _DROP:
        del data[key[-1]]
    else:
        data[key[-1]] = value


# --- one key space: nested, flat and older spellings --------------------------------------


def test_nested_flat_and_mixed_keys_are_the_same_key() -> None:
    nested = {"cse": {"loadbalance": {"orders": {"strategy": {"name": "Random"}}}}}
    flat = {"cse.loadbalance.orders.strategy.name": "Random"}
    mixed = {"cse": {"loadbalance.orders": {"strategy.name": "Random"}}}
    newer = {"servicecomb": {"loadbalance": {"orders": {"strategy": {"name": "Random"}}}}}
    results = [_one({"chassis.yaml": form}) for form in (nested, flat, mixed, newer)]
    for config, warnings in results:
        assert config["policies"]["services"] == {
            "orders": {"load_balancer": {"strategy": "random"}}
        }
        assert warnings == []


def test_a_strategy_that_is_not_a_name_is_warned_about_not_a_crash() -> None:
    config, warnings = _one({"chassis.yaml": {"cse.loadbalance.strategy.name": ["Random"]}})
    assert "load_balancer" not in config["policies"].get("default", {})
    assert any("strategy.name" in w and "expected one of" in w for w in warnings), warnings


def test_files_merge_into_one_key_space_and_the_later_file_wins() -> None:
    config, warnings = _one(
        {
            "chassis.yaml": {"cse": {"isolation": {"Consumer": {"timeoutInMilliseconds": 1000}}}},
            "circuit_breaker.yaml": {"cse.isolation.Consumer.timeoutInMilliseconds": 2000},
            "load_balancing.yaml": {"cse.isolation.Consumer.maxConcurrentRequests": 7},
        }
    )
    assert config["policies"]["default"]["timeout"] == "2s"
    assert config["policies"]["default"]["max_concurrent"] == 7
    assert warnings == [
        "circuit_breaker.yaml: cse.isolation.Consumer.timeoutInMilliseconds: also set in"
        " chassis.yaml (cse.isolation.Consumer.timeoutInMilliseconds: 1000); the later file's"
        " value is used"
    ]


@pytest.mark.parametrize(
    "microservice",
    [
        {"servicecomb": {"service": {"name": "a", "app": "b", "version": "1.0.0"}}},
        {"APPLICATION_ID": "b", "service_description": {"name": "a", "version": "1.0.0"}},
        {"service_description": {"name": "a", "application": "b", "version": "1.0.0"}},
    ],
)
def test_service_description_old_and_new(microservice: dict[str, Any]) -> None:
    config, warnings = _one({"microservice.yaml": microservice})
    assert config["service"] == {"name": "a", "app": "b", "version": "1.0.0"}
    assert warnings == []


def test_versions_keep_their_text_as_go_chassis_reads_them() -> None:
    files = read_folder(DATA / "consumer")
    assert convert(files)[0]["service"]["version"] == "1.10"


# --- listeners and registry ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "listen", "warned"),
    [
        ("127.0.0.1:30101", {"outbound": "127.0.0.1:30101"}, "local app only"),
        ("10.1.2.3:30111", {"outbound": "127.0.0.1:30111", "inbound": "10.1.2.3:30111"}, None),
        ("0.0.0.0:30101", {"outbound": "127.0.0.1:30101"}, "refuses 0.0.0.0"),
        ("10.1.2.3:", {"outbound": "127.0.0.1:0", "inbound": "10.1.2.3:0"}, None),
        ("nonsense", None, "expected HOST:PORT"),
    ],
)
def test_mesher_http_listener_is_both_directions(
    address: str, listen: dict[str, str] | None, warned: str | None
) -> None:
    config, warnings = _one(
        {"chassis.yaml": {"servicecomb": {"protocols": {"http": {"listenAddress": address}}}}}
    )
    assert config.get("listen") == listen
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0], warnings


def test_advertise_and_admin_addresses() -> None:
    protocols = {
        "http": {"listenAddress": "10.0.0.5:30101", "advertiseAddress": "203.0.113.7:30101"},
        "rest-admin": {"listenAddress": "0.0.0.0:30102"},
        "rest": {"listenAddress": "0.0.0.0:5000"},
    }
    config, warnings = _one({"chassis.yaml": {"cse": {"protocols": protocols}}})
    assert config["listen"] == {
        "outbound": "127.0.0.1:30101",
        "inbound": "10.0.0.5:30101",
        "advertise": "203.0.113.7",
        "admin": "0.0.0.0:30102",
    }
    assert warnings == [
        "chassis.yaml: cse.protocols.rest.listenAddress: not mapped: not a Mesher proxy"
        " listener: Mesher proxies on `http`"
    ]


def test_registry_addresses_credentials_and_older_layouts() -> None:
    config, warnings = _one(
        {
            "chassis.yaml": {
                "cse.service.registry.registrator.address": "https://sc1:30100",
                "cse.service.registry.serviceDiscovery.address": "http://sc1:30100,sc2:30100/",
                "servicecomb.credentials": {"account": {"name": "u", "password": "pw"}},
            }
        }
    )
    assert config["registry"] == {
        "type": "servicecomb",
        "endpoints": ["sc1:30100", "sc2:30100"],
        "username": "u",
        "password": "pw",
    }
    assert warnings == [
        "chassis.yaml: cse.service.registry.registrator.address: https://sc1:30100: trimesh"
        " speaks plain HTTP to Service Center"
    ]


def test_a_disabled_or_foreign_registry_is_not_mapped() -> None:
    for registry in ({"disabled": True, "address": "http://sc:30100"}, {"type": "pilot"}):
        config, warnings = _one({"chassis.yaml": {"servicecomb": {"registry": registry}}})
        assert "registry" not in config
        assert warnings and all("servicecomb.registry." in w for w in warnings)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("DEBUG", "debug"),
        ("INFO", "info"),
        ("WARN", "warning"),
        ("ERROR", "error"),
        ("FATAL", "critical"),
    ],
)
def test_log_levels(level: str, expected: str) -> None:
    assert _one({"lager.yaml": {"logLevel": level}})[0]["log_level"] == expected
    assert _one({"lager.yaml": {"logger_level": level.lower()}})[0]["log_level"] == expected


# --- load balancing and retries -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mesher", "trimesh"),
    [
        ("RoundRobin", "round_robin"),
        ("Random", "random"),
        ("WeightedResponse", "weighted_response"),
        ("SessionStickiness", "session_sticky"),
    ],
)
def test_strategy_names(mesher: str, trimesh: str) -> None:
    config, _ = _one({"load_balancing.yaml": {"cse.loadbalance.strategy.name": mesher}})
    assert config["policies"]["default"]["load_balancer"] == {"strategy": trimesh}


def test_an_unknown_strategy_is_a_warning() -> None:
    config, warnings = _one({"load_balancing.yaml": {"cse.loadbalance.strategy.name": "zoneaware"}})
    assert "load_balancer" not in config["policies"]["default"]
    assert warnings[0].startswith("load_balancing.yaml: cse.loadbalance.strategy.name: expected")


@pytest.mark.parametrize(
    ("loadbalance", "retries"),
    [
        ({}, {"default": 0, "orders": 0}),  # Mesher's default: no retries (trimesh's: 2)
        ({"retryEnabled": False, "retryOnNext": 3}, {"default": 0, "orders": 0}),
        ({"retryEnabled": True}, {"default": 0, "orders": 0}),
        ({"retryEnabled": True, "retryOnSame": 1, "retryOnNext": 2}, {"default": 3, "orders": 0}),
        (
            {"retryEnabled": True, "retryOnNext": 2, "orders": {"retryEnabled": True}},
            {"default": 2, "orders": 0},
        ),
        (
            {"orders": {"retryEnabled": "true", "retryOnNext": 4}},
            {"default": 0, "orders": 4},
        ),
    ],
)
def test_retry_counts_after_loading(
    loadbalance: dict[str, Any], retries: dict[str, int], tmp_path: Path
) -> None:
    """Mesher's retry settings give the same number of retries once trimesh loads them."""
    lb = {"orders": {"strategy": {"name": "Random"}}, **loadbalance}
    if isinstance(loadbalance.get("orders"), Mapping):
        lb["orders"] = {"strategy": {"name": "Random"}, **loadbalance["orders"]}
    config, _ = _one({"load_balancing.yaml": {"cse": {"loadbalance": lb}}})
    loaded = _load(config, tmp_path)
    assert loaded.policies.base("other").retry.max_retries == retries["default"]
    assert loaded.policies.base("orders").retry.max_retries == retries["orders"]


@pytest.mark.parametrize(
    ("backoff", "expected", "warned"),
    [
        ({"kind": "constant", "minMs": 100}, {"kind": "constant", "base": "100ms"}, False),
        ({"kind": "zero", "minMs": 100}, {"kind": "constant", "base": 0}, False),
        ({"minMs": 0, "maxMs": 0}, {"kind": "constant", "base": 0}, False),
        ({"minMs": 1000, "maxMs": 3000}, {"kind": "exponential", "base": "1s", "max": "3s"}, False),
        ({"maxMs": 300}, {"kind": "exponential", "base": 0, "max": "300ms"}, False),
        (
            {"MinMs": 200, "MaxMs": 400},
            {"kind": "exponential", "base": "200ms", "max": "400ms"},
            True,
        ),
        (
            {"kind": "jittered", "minMs": 10, "maxMs": 20},
            {"kind": "exponential", "base": "10ms", "max": "20ms"},
            True,
        ),
        (
            {"minMs": 500, "maxMs": 100},
            {"kind": "exponential", "base": "500ms", "max": "500ms"},
            True,
        ),
        ({"kind": "fibonacci", "minMs": 10}, None, True),
    ],
)
def test_backoff(backoff: dict[str, Any], expected: dict[str, Any] | None, warned: bool) -> None:
    lb = {"retryEnabled": True, "retryOnNext": 1, "backoff": backoff}
    config, warnings = _one({"load_balancing.yaml": {"cse": {"loadbalance": lb}}})
    assert config["policies"]["default"]["retry"].get("backoff") == expected
    assert bool(warnings) == warned


# --- isolation, circuit breaker, fault, rate limits ---------------------------------------


def test_fault_values_fall_back_to_global_as_go_chassis_does() -> None:
    rest = "policy.fault.protocols.rest"
    config, warnings = _one(
        {
            "fault.yaml": {
                f"cse.governance.Consumer._global.{rest}.abort.percent": 10,
                f"cse.governance.Consumer.orders.{rest}.abort.httpStatus": 502,
                f"cse.governance.Consumer.carts.{rest}.abort.percent": 0,  # 0: not set
                f"cse.governance.Consumer.carts.{rest}.delay.percent": 50,
                f"cse.governance.Consumer.carts.{rest}.delay.fixedDelay": 1500,
                f"cse.governance.Consumer.pay.{rest}.abort.percent": 30,
                f"cse.governance.Consumer.pay.{rest}.abort.httpStatus": 302,
                f"cse.governance.Consumer.web.schemas.s1.{rest}.abort.percent": 30,
                "cse.governance.Consumer._global.policy.fault.protocols.highway.delay.percent": 1,
            }
        }
    )
    policies = config["policies"]
    assert "fault" not in policies["default"]
    assert policies["services"] == {
        "orders": {"fault": {"abort": {"percent": 10, "status": 502}}},
        "carts": {"fault": {"delay": {"percent": 50, "fixed": "1500ms"}}},
    }
    assert [w.split(": ")[1] for w in warnings] == [
        f"cse.governance.Consumer._global.{rest}.abort.percent",  # no status: Mesher answers 400
        f"cse.governance.Consumer.pay.{rest}.abort.httpStatus",  # not an error status
        f"cse.governance.Consumer.web.schemas.s1.{rest}.abort.percent",
        "cse.governance.Consumer._global.policy.fault.protocols.highway.delay.percent",
    ]
    assert "400" in warnings[0]


def test_consumer_and_provider_rate_limits() -> None:
    config, warnings = _one(
        {
            "rate_limiting.yaml": {
                "cse": {
                    "flowcontrol": {
                        "Consumer": {"qps": {"global": {"limit": 1000}, "limit": {"orders": "3"}}},
                        "Provider": {"qps": {"enabled": False, "global": {"limit": 100}}},
                    }
                }
            }
        }
    )
    assert config["policies"]["default"]["rate_limit"] == {"qps": 1000, "burst": 200}
    # go-chassis's burst: a fifth of the rate, or 10 when that rounds to 0.
    assert config["policies"]["services"]["orders"]["rate_limit"] == {"qps": 3, "burst": 10}
    assert "inbound" not in config
    assert warnings == [
        "rate_limiting.yaml: cse.flowcontrol.Provider.qps.global.limit: ignored:"
        " qps.enabled is false"
    ]


def test_a_zero_limit_is_not_mapped() -> None:
    config, warnings = _one({"chassis.yaml": {"cse.flowcontrol.Provider.qps.global.limit": 0}})
    assert "inbound" not in config
    assert "Mesher refuses every request below 1" in warnings[0]


# --- route rules and egress ---------------------------------------------------------------


def test_route_rule_forms_and_what_cannot_be_kept() -> None:
    router = {
        "servicecomb.routeRule.a": "- route: [{tags: {version: 1.0}}]\n",
        "servicecomb.routeRule.b": "- precedence: [unclosed\n",
        "servicecomb.routeRule.c": (
            "- precedence: 3\n"
            "  match: {headers: {x-n: {range: 0-100}}}\n"
            "  route: [{tags: {version: 1}, weight: 100}]\n"
            "- precedence: 2\n"
            "  match: {headers: {x-n: {greater: 10, caseInsensitive: false}}, extra: 1}\n"
            "  route: [{tags: {version: 2}, weight: 100, label: x}]\n"
        ),
    }
    config, warnings = _one({"router.yaml": router})
    assert config["routes"] == {
        "a": [{"precedence": 0, "route": [{"tags": {"version": "1.0"}, "weight": 0}]}],
        "c": [
            {
                "precedence": 2,
                "match": {"headers": {"x-n": {"greater": "10"}}},
                "route": [{"tags": {"version": "2"}, "weight": 100}],
            }
        ],
    }
    where = "router.yaml: servicecomb.routeRule"
    assert warnings[0].startswith(f"{where}.b: not valid YAML")
    assert warnings[1].startswith(f"{where}.c[0].match.headers.x-n.range: unsupported operator")
    assert warnings[2].startswith(f"{where}.c[1].match.extra: ignored")
    assert warnings[3].startswith(f"{where}.c[1].route[0].label: not mapped")
    assert len(warnings) == 4


@pytest.mark.parametrize(
    ("pattern", "widened"),
    [
        ("vip", ".*(?:vip).*"),
        ("^vip", ".*(?:^vip).*"),
        ("^v.p$", "^v.p$"),
        ("a\\$", ".*(?:a\\$).*"),
    ],
)
def test_regex_keeps_meshers_search_semantics(pattern: str, widened: str) -> None:
    rule = [{"match": {"headers": {"x": {"regex": pattern}}}, "route": [{"tags": {}, "weight": 1}]}]
    config, _ = _one({"router.yaml": {"routeRule": {"svc": rule}}})
    assert config["routes"]["svc"][0]["match"]["headers"]["x"]["regex"] == widened


def test_egress_rules() -> None:
    egress = {
        "egress": {"infra": "pilot", "address": "http://pilot:15010"},
        "egressRule": {
            "one": [
                {
                    "hosts": "api.example.com",
                    "ports": [{"port": 8080}, {"port": 443, "protocol": "HTTPS"}],
                }
            ],
            "two": [{"hosts": ["x.example.com"], "ports": [{"protocol": "TCP", "port": 22}]}],
            "three": "not a list",
        },
    }
    config, warnings = _one({"egress.yaml": egress})
    assert config["egress"] == {"allow": [{"hosts": ["api.example.com"], "ports": [8080]}]}
    assert [w.split(": ")[1] for w in warnings] == [
        "egress.infra",
        "egressRule.one[0].ports[1]",
        "egressRule.two[0].ports[0]",
        "egressRule.two[0]",
        "egressRule.three",
        "egress.address",
    ]


# --- the printed YAML goes back through trimesh's own loader ------------------------------


def _load(config: Mapping[str, Any], tmp_path: Path) -> Config:
    path = tmp_path / "trimesh.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    return load(path, env={})


def _import(conf_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="trimesh")
    add_import_command(parser.add_subparsers(dest="command", required=True))
    code = run_import_command(parser.parse_args(["import-mesher", str(conf_dir)]))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("sample", "expected"), [("consumer", CONSUMER), ("provider", PROVIDER)])
def test_printed_yaml_validates_with_trimeshs_loader(
    sample: str, expected: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _import(DATA / sample, capsys)
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed == expected
    assert out.startswith("# Generated by `trimesh import-mesher")
    assert err and all(
        line.startswith("trimesh import-mesher: warning: ") for line in err.splitlines()
    )
    config = _load(printed, tmp_path)
    assert config.service.name == expected["service"]["name"]
    assert set(config.routes) == set(expected["routes"])
    _assert_issue8_shapes(printed)
    # The issue 8 keys load as what they say.
    for name, block in printed["policies"].get("services", {}).items():
        loaded = config.policies.base(name)
        if "max_concurrent" in block:
            assert loaded.max_concurrent == block["max_concurrent"]
        if "circuit_breaker" in block:
            inherited = printed["policies"].get("default", {}).get("circuit_breaker", {})
            enabled = block["circuit_breaker"].get("enabled", inherited.get("enabled", False))
            assert loaded.circuit_breaker.enabled == enabled


def test_the_provider_sample_passes_trimesh_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out, _ = _import(DATA / "provider", capsys)
    config = _load(yaml.safe_load(out), tmp_path)
    assert serving_problems(config) == []
    assert config.listen.inbound == ("10.0.0.5", 30101)
    assert config.policies.base("inventory").timeout == 0.8
    assert config.policies.base("other").retry.max_retries == 0


def test_the_consumer_sample_needs_an_address_for_providers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Mesher on 127.0.0.1 serves no providers; `trimesh check` asks for listen.advertise."""
    _, out, err = _import(DATA / "consumer", capsys)
    config = _load(yaml.safe_load(out), tmp_path)
    assert [p.split(":")[0] for p in serving_problems(config)] == ["listen.advertise"]
    assert "set it to the host IP" in err
    assert config.policies.base("payments").retry.max_retries == 0
    assert config.policies.base("orders").retry.max_retries == 3


def _assert_issue8_shapes(config: Mapping[str, Any]) -> None:
    """The issue 8 keys have the shape /work/notes/issue8_api.md gives them."""
    policies = config.get("policies", {})
    for block in [policies.get("default", {}), *policies.get("services", {}).values()]:
        if "circuit_breaker" in block:
            _assert_breaker(block["circuit_breaker"])
        if "max_concurrent" in block:
            assert isinstance(block["max_concurrent"], int) and block["max_concurrent"] > 0
        if "rate_limit" in block:
            _assert_rate(block["rate_limit"], ("qps", "burst"))
        if "fault" in block:
            _assert_fault(block["fault"])
    inbound = config.get("inbound", {})
    assert set(inbound) <= {"rate_limit"}
    if "rate_limit" in inbound:
        limit = inbound["rate_limit"]
        _assert_rate({k: v for k, v in limit.items() if k != "per_source"}, ("qps", "burst"))
        for source, per in limit.get("per_source", {}).items():
            assert p.name(source) == source
            _assert_rate(per, ("qps", "burst"))
    for item in config.get("egress", {}).get("allow", []):
        assert set(item) == {"hosts", "ports"}
        assert all(isinstance(h, str) and h for h in item["hosts"])
        assert all(isinstance(n, int) and 1 <= n <= 65535 for n in item["ports"])


def _assert_breaker(breaker: Mapping[str, Any]) -> None:
    flags = {"enabled", "force_open", "force_closed"}
    assert set(breaker) <= flags | {
        "request_volume_threshold",
        "error_threshold_percentage",
        "sleep_window",
        "failure_statuses",
    }
    assert all(isinstance(breaker[k], bool) for k in flags & set(breaker))
    if "sleep_window" in breaker:
        assert p.duration(breaker["sleep_window"]) > 0
    if "request_volume_threshold" in breaker:
        assert isinstance(breaker["request_volume_threshold"], int)
    if "error_threshold_percentage" in breaker:
        assert 0 <= breaker["error_threshold_percentage"] <= 100


def _assert_rate(limit: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    assert set(limit) <= set(keys) and "qps" in limit
    assert limit["qps"] > 0 and math.isfinite(limit["qps"])
    assert isinstance(limit["burst"], int) and limit["burst"] >= 1


def _assert_fault(fault: Mapping[str, Any]) -> None:
    assert fault and set(fault) <= {"abort", "delay"}
    if "abort" in fault:
        assert set(fault["abort"]) == {"percent", "status"}
        assert 0 <= fault["abort"]["percent"] <= 100 and 400 <= fault["abort"]["status"] <= 599
    if "delay" in fault:
        assert set(fault["delay"]) == {"percent", "fixed"}
        assert 0 <= fault["delay"]["percent"] <= 100 and p.duration(fault["delay"]["fixed"]) > 0


# --- errors -------------------------------------------------------------------------------


def test_a_missing_folder_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _import(tmp_path / "nope", capsys)
    assert (code, out) == (2, "")
    assert err == f"trimesh import-mesher: {tmp_path / 'nope'}: not a directory\n"


def test_a_folder_without_yaml_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "README").write_text("hello")
    code, out, err = _import(tmp_path, capsys)
    assert (code, out) == (2, "")
    assert "no *.yaml files" in err


def test_invalid_yaml_exits_2_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "chassis.yaml").write_text("cse:\n  loadbalance: {strategy: [\n")
    code, out, err = _import(tmp_path, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"trimesh import-mesher: {tmp_path / 'chassis.yaml'}: not valid YAML: ")


def test_an_unreadable_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "chassis.yaml").write_bytes(b"cse: \xff\xfe\n")
    code, _, err = _import(tmp_path, capsys)
    assert code == 2
    assert f"{tmp_path / 'chassis.yaml'}: cannot read: not UTF-8 text" in err


def test_a_file_that_is_not_a_mapping_is_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "chassis.yaml").write_text("- just\n- a list\n")
    (tmp_path / "lager.yaml").write_text("")
    code, out, err = _import(tmp_path, capsys)
    assert code == 0
    assert yaml.safe_load(out) == {"policies": {"default": {"retry": {"attempts": 0}}}}
    assert "chassis.yaml: the top level is not a mapping of keys; file ignored" in err
