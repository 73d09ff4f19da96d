"""The `policies` and `routes` sections: key-path errors, API-level blocks, `route test`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trimesh.cli import main
from trimesh.config.policies import ServicePolicy, parse_policies
from trimesh.policy.hedge import HedgePolicy
from trimesh.policy.match import ConfigProblems, request_info


def info(method: str = "GET", path: str = "/", **headers: str):  # type: ignore[no-untyped-def]
    return request_info(
        method.encode(),
        path.encode(),
        [(k.encode(), v.encode()) for k, v in headers.items()],
        "web",
        {},
    )


def test_blocks_merge_default_service_then_matching_api() -> None:
    book = parse_policies(
        {
            "default": {"timeout": "10s", "retry": {"attempts": 1}},
            "services": {
                "pay": [
                    {"per_try_timeout": "2s"},
                    {"match": {"method": "POST", "path": {"prefix": "/pay"}}, "timeout": "3s"},
                ]
            },
        }
    )
    plain = book.resolve("pay", info("GET", "/pay/1"))
    api = book.resolve("pay", info("POST", "/pay/1"))
    other = book.resolve("orders", info("POST", "/pay/1"))
    assert (plain.timeout, plain.per_try_timeout, plain.retry.attempts) == (10, 2, 1)
    assert (api.timeout, api.per_try_timeout, api.retry.attempts) == (3, 2, 1)
    assert other == book.default and other.timeout == 10
    assert parse_policies({}).default == ServicePolicy()


def test_every_bad_key_is_named_by_its_path() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_policies(
            {
                "default": {"timout": "1s", "load_balancer": {"strategy": "fastest"}},
                "services": {
                    "pay": [{"match": {"method": "POST", "pth": "/x"}, "retry": {"attempts": -1}}]
                },
                "extra": 1,
            }
        )
    text = "\n".join(caught.value.problems)
    for path in (
        "policies.default.timout",
        "policies.default.load_balancer.strategy",
        "policies.services.pay[0].match.pth",
        "policies.services.pay[0].retry.attempts",
        "policies.extra",
    ):
        assert path in text, text


def test_hedge_blocks_parse_merge_and_turn_off() -> None:
    book = parse_policies(
        {
            "default": {"hedge": {"delay": "p95", "max_hedges": 2}},
            "services": {"fast": {"hedge": "20ms"}, "plain": {"hedge": "off"}},
        }
    )
    assert book.base("other").hedge == HedgePolicy(delay="p95", max_hedges=2)
    assert book.base("fast").hedge == HedgePolicy(delay=0.02, max_hedges=2)
    assert book.base("plain").hedge is None


def test_bad_hedge_is_named_by_path() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_policies({"services": {"a": {"hedge": {"delay": "soon"}}}})
    assert caught.value.problems == [
        "policies.services.a.hedge.delay: expected a duration like 50ms, or p95; got 'soon'"
    ]


def test_check_exits_2_naming_route_and_policy_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "registry: {type: static}\n"
        "routes:\n  orders:\n    - precedence: 1\n      route:\n"
        "        - {tags: {version: '1'}, weight: 80}\n"
        "        - {tags: {version: '2'}, weight: 30}\n"
        "policies:\n  services:\n    orders: {per_try_timeout: soon}\n"
    )
    assert main(["check", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "routes.orders[0]" in err and "100" in err
    assert "policies.services.orders.per_try_timeout" in err


def test_route_test_prints_the_rule_and_the_instances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "registry:\n  type: static\n  services:\n    orders:\n"
        "      - {address: '127.0.0.1:9001', version: '1.0'}\n"
        "      - {address: '127.0.0.1:9002', version: '2.0'}\n"
        "routes:\n  orders:\n"
        "    - precedence: 2\n      match: {headers: {x-user: {exact: vip}}}\n"
        "      route: [{tags: {version: '2.0'}, weight: 100}]\n"
        "    - precedence: 1\n      route: [{tags: {version: '1.0'}, weight: 100}]\n"
    )
    argv = ["route", "test", "-c", str(cfg), "--service", "orders"]
    assert main([*argv, "--header", "x-user=vip", "--source", "web"]) == 0
    vip = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    rest = json.loads(capsys.readouterr().out)
    assert vip["rule"]["precedence"] == 2 and vip["tags"] == {"version": "2.0"}
    assert rest["rule"]["precedence"] == 1 and rest["tags"] == {"version": "1.0"}
    assert [i for i in json.dumps(vip["instances"]).split('"') if "9002" in i]
    assert "9001" not in json.dumps(vip["instances"])


def test_a_bad_default_is_named_once_not_under_every_service() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_policies(
            {
                "default": {"timeout": "soon"},
                "services": {
                    "a": {"retry": {"attempts": 1}},
                    "b": [{"match": {"method": "GET"}, "per_try_timeout": "1s"}],
                    "c": {"timeout": "later"},
                },
            }
        )
    assert caught.value.problems == [
        "policies.default.timeout: expected a duration like 10s or 500ms, got 'soon'",
        "policies.services.c.timeout: expected a duration like 10s or 500ms, got 'later'",
    ]
