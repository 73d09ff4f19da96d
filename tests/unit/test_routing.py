"""Route rules (`trimesh.policy.routing`): parsing, smooth weighting, instance selection."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from trimesh.discovery.base import Instance
from trimesh.policy.match import ANY, ConfigProblems, RequestInfo
from trimesh.policy.routing import (
    RouteRule,
    ServiceRouter,
    SmoothWeighted,
    WeightedTags,
    latest_instances,
    parse_routes,
    version_key,
)


def inst(iid: str, version: str = "1.0", app: str = "default", **tags: str) -> Instance:
    return Instance("orders", iid, "127.0.0.1", 9000 + len(iid), app, version, tags=tags)


def req(headers: dict[str, str] | None = None, source: str | None = None) -> RequestInfo:
    return RequestInfo("GET", "/api", headers or {}, source)


def ids(instances: Sequence[Instance]) -> list[str]:
    return [i.instance_id for i in instances]


def router(rules: list[dict[str, Any]], default_version: str | None = None) -> ServiceRouter:
    return ServiceRouter(parse_routes({"orders": rules})["orders"], default_version)


def route(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"tags": {"version": v}, "weight": w} for v, w in pairs]


V1, V1B, V2, V10 = inst("a1", "1.0"), inst("b1", "1.0"), inst("c2", "2.0"), inst("d10", "1.10.0")
FLEET = [V1, V1B, V2]


# ---- parsing


def test_rules_are_sorted_by_precedence_stably() -> None:
    rules = parse_routes(
        {
            "orders": [
                {"precedence": 1, "route": route(("1", 100))},
                {"precedence": 5, "route": route(("5a", 100))},
                {"route": route(("0", 100))},  # precedence defaults to 0 (Mesher)
                {"precedence": 5, "route": route(("5b", 100))},
            ],
            "pay": [],
        }
    )
    assert [r.where for r in rules["orders"]] == [
        "routes.orders[1]",
        "routes.orders[3]",
        "routes.orders[0]",
        "routes.orders[2]",
    ]
    assert [r.precedence for r in rules["orders"]] == [5, 5, 1, 0]
    assert rules["orders"][0].match == ANY
    assert rules["orders"][0].route == (WeightedTags({"version": "5a"}, 100),)
    assert rules["pay"] == ()
    assert parse_routes(None) == {}


def test_a_rule_keeps_its_configured_shape_for_the_admin_api() -> None:
    match = {"headers": {"X-User": {"exact": "vip", "caseInsensitive": True}}}
    raw = {"orders": [{"match": match, "route": [{"tags": {"version": 2}, "weight": 40}]}]}
    (rule,) = parse_routes(raw)["orders"]
    assert rule.raw == {
        "precedence": 0,
        "match": match,
        "route": [{"tags": {"version": "2"}, "weight": 40}],
    }
    match["headers"]["X-User"]["exact"] = "changed"  # a private copy
    assert json.loads(json.dumps(rule.raw))["match"]["headers"]["X-User"]["exact"] == "vip"
    (plain,) = parse_routes({"o": [{"precedence": 3, "route": route(("1", 100))}]})["o"]
    assert plain.raw == {"precedence": 3, "route": [{"tags": {"version": "1"}, "weight": 100}]}


def test_tags_are_a_string_map() -> None:
    (rule,) = parse_routes(
        {"o": [{"route": [{"tags": {"version": "1.0", "app": "shop", "n": 3}, "weight": 0}]}]}
    )["o"]
    assert rule.route == (WeightedTags({"version": "1.0", "app": "shop", "n": "3"}, 0),)


# (raw `routes` value, every problem expected)
ROUTE_PROBLEMS: list[tuple[Any, list[str]]] = [
    ([], ["routes: expected a mapping of service name to rules"]),
    ({"orders": "- precedence: 1"},
     ["routes.orders: expected a list of rules, not a string (a | block?)"]),
    ({"orders": {"precedence": 1}}, ["routes.orders: expected a list of rules"]),
    ({"": []}, ["routes: service name '' must be a non-empty string"]),
    ({"orders": [3]}, ["routes.orders[0]: expected a mapping with precedence, match and route"]),
    ({"orders": [{"precedence": 1}]},
     ["routes.orders[0].route: required: a non-empty list of {tags: {...}, weight: N}"]),
    ({"orders": [{"route": []}]},
     ["routes.orders[0].route: required: a non-empty list of {tags: {...}, weight: N}"]),
    ({"orders": [{"precedence": "high", "route": route(("1", 100))}]},
     ["routes.orders[0].precedence: expected an integer, got 'high'"]),
    ({"orders": [{"precedence": True, "route": route(("1", 100))}]},
     ["routes.orders[0].precedence: expected an integer, got True"]),
    ({"orders": [{"route": route(("1", 100)), "when": {}}]},
     ["routes.orders[0].when: unknown key (expected one of precedence, match, route)"]),
    ({"orders": [{"route": route(("1", 80), ("2", 30))}]},
     ["routes.orders[0].route: weights add up to 110, more than 100"]),
    ({"orders": [{"route": route(("1", 101))}]},
     ["routes.orders[0].route[0].weight: expected an integer percentage 0..100, got 101",
      ]),
    ({"orders": [{"route": [{"tags": {"version": "1"}, "weight": -1}]}]},
     ["routes.orders[0].route[0].weight: expected an integer percentage 0..100, got -1"]),
    ({"orders": [{"route": [{"tags": {"version": "1"}, "weight": 50.5}]}]},
     ["routes.orders[0].route[0].weight: expected an integer percentage 0..100, got 50.5"]),
    ({"orders": [{"route": [{"tags": {"version": "1"}}]}]},
     ["routes.orders[0].route[0].weight: expected an integer percentage 0..100, got None"]),
    ({"orders": [{"route": [{"weight": 100}]}]},
     ["routes.orders[0].route[0].tags: expected a mapping of names to strings"]),
    ({"orders": [{"route": [{"tags": ["v1"], "weight": 100}]}]},
     ["routes.orders[0].route[0].tags: expected a mapping of names to strings"]),
    ({"orders": [{"route": [{"tags": {"version": 2.0}, "weight": 100}]}]},
     ["routes.orders[0].route[0].tags.version: 2.0 is a YAML number; quote it "
      "(1.10 reads as 1.1)"]),
    ({"orders": [{"route": [{"tags": {"version": "1"}, "weight": 100, "label": "x"}]}]},
     ["routes.orders[0].route[0].label: unknown key (expected one of tags, weight)"]),
    ({"orders": [{"route": ["v1"]}]},
     ["routes.orders[0].route[0]: expected a mapping with tags and weight"]),
    ({"orders": [{"match": {"headers": {"x-user": {"exact": "vip"}}},
                  "route": route(("1", 100))},
                 {"match": {"headers": {"x-user": {"exactly": "vip"}}},
                  "route": route(("1", 100))}]},
     ["routes.orders[1].match.headers.x-user.exactly: unknown operator (expected one of exact, "
      "noEqu, prefix, contains, regex, less, noLess, greater, noGreater)"]),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), ROUTE_PROBLEMS)
def test_route_problems_name_the_key_path(raw: Any, expected: list[str]) -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_routes(raw)
    assert caught.value.problems == expected


def test_every_route_problem_is_collected() -> None:
    raw = {
        "orders": [
            {"precedence": 2, "match": {"method": 1}, "route": route(("1", 90), ("2", 20))},
            {"precedence": 1, "route": [{"tags": {"version": 1.5}, "weight": 100}]},
        ],
        "pay": "text",
    }
    with pytest.raises(ConfigProblems) as caught:
        parse_routes(raw, "cfg.routes")
    assert caught.value.problems == [
        "cfg.routes.orders[0].match.method: expected a method or a non-empty list of methods",
        "cfg.routes.orders[0].route: weights add up to 110, more than 100",
        "cfg.routes.orders[1].route[0].tags.version: 1.5 is a YAML number; quote it "
        "(1.10 reads as 1.1)",
        "cfg.routes.pay: expected a list of rules, not a string (a | block?)",
    ]


# ---- smooth weighted round robin


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [
        ([5, 1, 1], "aabacaa" * 2),  # nginx's documented example
        ([1, 1], "abab"),
        ([2, 1], "abaaba"),
        ([90, 10], "aaaaabaaaa"),  # spread out, not nine a's then a b
        ([0, 3, 0, 1], "bbdb" * 2),
        ([7], "aaa"),
    ],
)
def test_smooth_weighted_sequence(weights: list[int], sequence: str) -> None:
    wrr = SmoothWeighted(weights)
    assert "".join("abcd"[wrr.next()] for _ in sequence) == sequence


@pytest.mark.parametrize("weights", [[5, 1, 1], [90, 10], [33, 33, 34], [1, 0, 99], [3, 7, 11]])
def test_smooth_weighted_is_exact_over_each_cycle(weights: list[int]) -> None:
    wrr = SmoothWeighted(weights)
    for _ in range(3):
        counts = Counter(wrr.next() for _ in range(sum(weights)))
        assert [counts[i] for i in range(len(weights))] == weights


@pytest.mark.parametrize("weights", [[], [0, 0], [3, -1]])
def test_smooth_weighted_needs_a_positive_total(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="positive sum"):
        SmoothWeighted(weights)


# ---- versions


def test_version_order_is_numeric_aware() -> None:
    ordered = ["", "abc", "0.9", "1.0-rc1", "1.0", "1.2", "1.9.0", "v1.10.0", "2.0.0-beta", "2"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("1.0") == version_key("1.0.0") == version_key("1")
    assert version_key("1" * 40) == (0, (), 0, "1" * 40)  # absurd: not a version
    assert ids(latest_instances([V1, V10, inst("x", "1.9.0")])) == ["d10"]
    assert ids(latest_instances([V1, V1B])) == ["a1", "b1"]
    assert latest_instances([]) == []


# ---- selection


def test_ninety_ten_over_a_thousand_selections_is_exact() -> None:
    r = router([{"route": route(("1.0", 90), ("2.0", 10))}])
    counts = Counter(tuple(ids(r.select(req(), FLEET)[1])) for _ in range(1000))
    assert counts == {("a1", "b1"): 900, ("c2",): 100}


def test_weights_under_100_send_the_remainder_to_the_latest_version() -> None:
    fleet = [V1, inst("e9", "1.9.0"), V10]
    r = router([{"route": route(("1.0", 30))}])
    counts = Counter(tuple(ids(r.select(req(), fleet)[1])) for _ in range(200))
    assert counts == {("a1",): 60, ("d10",): 140}
    r = router([{"route": route(("1.0", 0))}])
    assert {tuple(ids(r.select(req(), fleet)[1])) for _ in range(10)} == {("d10",)}


def test_first_matching_rule_by_precedence_wins() -> None:
    r = router(
        [
            {"precedence": 1, "route": route(("1.0", 100))},
            {
                "precedence": 2,
                "match": {"headers": {"x-user": {"exact": "vip"}}},
                "route": route(("2.0", 100)),
            },
            {"precedence": 3, "match": {"source": "admin"}, "route": route(("1.10.0", 100))},
        ]
    )
    fleet = [*FLEET, V10]
    rule, got = r.select(req({"x-user": "vip"}), fleet)
    assert (rule and rule.where, ids(got)) == ("routes.orders[1]", ["c2"])
    rule, got = r.select(req({"x-user": "vip"}, source="admin"), fleet)
    assert (rule and rule.where, ids(got)) == ("routes.orders[2]", ["d10"])
    rule, got = r.select(req({"x-user": "guest"}), fleet)
    assert (rule and rule.where, ids(got)) == ("routes.orders[0]", ["a1", "b1"])


def test_tags_match_version_app_and_metadata() -> None:
    fleet = [
        inst("p", "1.0", "shop", zone="a"),
        inst("q", "1.0", "shop", zone="b"),
        inst("r", "1.0", "other", zone="a"),
        inst("s", "2.0", "shop"),
    ]
    cases = [
        ({"version": "1.0"}, ["p", "q", "r"]),
        ({"app": "shop"}, ["p", "q", "s"]),
        ({"zone": "a"}, ["p", "r"]),
        ({"zone": "a", "app": "shop", "version": "1.0"}, ["p"]),
        ({"version": "latest", "app": "shop"}, ["s"]),  # Mesher's built-in `latest`
        ({}, ["p", "q", "r", "s"]),
    ]
    for tags, expected in cases:
        r = router([{"route": [{"tags": tags, "weight": 100}]}])
        assert ids(r.select(req(), fleet)[1]) == expected, tags


def test_tags_matching_no_instance_fall_back_to_the_latest_version() -> None:
    r = router([{"route": route(("3.0", 100))}])
    rule, got = r.select(req(), [V1, V2, inst("c2b", "2.0")])
    assert rule is not None
    assert ids(got) == ["c2", "c2b"]
    assert r.explain(req(), [V1, V2])["selected_by"] == "fallback-latest"


def test_no_matching_rule_means_every_instance_or_the_latest() -> None:
    rules = [{"match": {"source": "web"}, "route": route(("1.0", 100))}]
    assert router(rules).select(req(), FLEET) == (None, FLEET)
    assert router([]).select(req(), FLEET) == (None, FLEET)
    assert router(rules, "latest").select(req(), FLEET) == (None, [V2])
    assert router([], "latest").select(req(), [V1, V10, V2]) == (None, [V2])
    with pytest.raises(ValueError, match="default_version"):
        router([], "newest")


def test_no_instances_gives_none() -> None:
    r = router([{"route": route(("1.0", 50))}])
    assert r.select(req(), [])[1] == []
    assert router([], "latest").select(req(), []) == (None, [])


def test_each_rule_keeps_its_own_weighted_state_across_instance_changes() -> None:
    r = router(
        [
            {"precedence": 2, "match": {"source": "web"}, "route": route(("1.0", 50), ("2.0", 50))},
            {"precedence": 1, "route": route(("1.0", 50), ("2.0", 50))},
        ]
    )
    web = [ids(r.select(req(source="web"), FLEET)[1])]
    other = [ids(r.select(req(), FLEET)[1])]
    web.append(ids(r.select(req(source="web"), [V1, V2])[1]))  # the instance set changed
    other.append(ids(r.select(req(), [V1, V2])[1]))
    web.append(ids(r.select(req(source="web"), FLEET)[1]))
    assert web == [["a1", "b1"], ["c2"], ["a1", "b1"]]
    assert other == [["a1", "b1"], ["c2"]]


def test_hand_built_rules_are_sorted_and_fully_weighted() -> None:
    low = RouteRule(1, ANY, (WeightedTags({"version": "1.0"}, 100),))
    high = RouteRule(9, ANY, ())  # no entries: everything to the latest version
    r = ServiceRouter([low, high])
    assert r.rules == (high, low)
    assert r.select(req(), FLEET) == (high, [V2])


def test_explain_is_json_and_follows_the_weighted_sequence() -> None:
    r = router([{"precedence": 4, "route": route(("1.0", 50))}])
    first = r.explain(req(), FLEET)
    second = r.explain(req(), FLEET)
    assert json.loads(json.dumps([first, second])) == [
        {
            "rule": {"index": 0, "precedence": 4, "where": "routes.orders[0]"},
            "tags": {"version": "1.0"},
            "selected_by": "tags",
            "instances": ["a1", "b1"],
        },
        {
            "rule": {"index": 0, "precedence": 4, "where": "routes.orders[0]"},
            "tags": {"version": "latest"},
            "selected_by": "tags",
            "instances": ["c2"],
        },
    ]
    assert router([], "latest").explain(req(), FLEET) == {
        "rule": None,
        "tags": None,
        "selected_by": "default-latest",
        "instances": ["c2"],
    }
    assert router([]).explain(req(), FLEET)["selected_by"] == "default-all"
