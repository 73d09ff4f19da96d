"""Properties of route selection (`ServiceRouter`), checked with hypothesis.

For any rule set and any sequence of requests and instance sets:
* two routers built the same way, fed the same sequence, choose the same
  (deterministic given the same weighted state);
* the rule chosen is the first, by precedence, whose match fits;
* the instances returned are exactly those carrying the chosen tag set, or,
  when none does, the documented fallback (the latest version); with no rule,
  every instance (or the latest version with `default_version="latest"`);
  never anything outside the instances given, never nothing from something;
* over one cycle of 100 picks, each tag set is chosen exactly as often as its
  weight says (the remainder going to `{version: latest}`).

The expectations are computed here independently of the module's helpers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trimesh.discovery.base import Instance
from trimesh.policy.match import RequestInfo
from trimesh.policy.routing import ServiceRouter, parse_routes

SETTINGS = settings(max_examples=150, deadline=None)

# Versions in ascending order, as the router must rank them.
VERSIONS = ["", "0.9", "1.0", "1.9.0", "1.10.0", "2.0-rc1", "2.0"]
RANK = {v: i for i, v in enumerate(VERSIONS)}
APPS = ["shop", "ops"]
ZONES = ["a", "b"]

MATCHES: list[dict[str, Any] | None] = [
    None,
    {"headers": {"x-user": {"exact": "vip"}}},
    {"headers": {"x-n": {"greater": 5}}},
    {"method": ["POST", "put"]},
    {"path": {"prefix": "/api"}},
    {"source": "web"},
    {"source": "web", "headers": {"x-user": {"regex": "v.*", "caseInsensitive": True}}},
]


@st.composite
def instance_pools(draw: st.DrawFn) -> list[Instance]:
    count = draw(st.integers(0, 6))
    pool = []
    for n in range(count):
        zone = draw(st.sampled_from([None, *ZONES]))
        pool.append(
            Instance(
                "orders",
                f"i{n}",
                "127.0.0.1",
                9000 + n,
                draw(st.sampled_from(APPS)),
                draw(st.sampled_from(VERSIONS)),
                tags={} if zone is None else {"zone": zone},
            )
        )
    return pool


tag_sets = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([*VERSIONS[1:], "latest", "3.0"]),
        "app": st.sampled_from(APPS),
        "zone": st.sampled_from(ZONES),
    },
)


@st.composite
def weights(draw: st.DrawFn) -> list[int]:
    """1 to 3 weights summing to at most 100 (cuts of 0..100, maybe leaving a remainder)."""
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=1, max_size=3)))
    parts = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    if draw(st.booleans()):
        parts[-1] += 100 - cuts[-1]
    return parts


@st.composite
def rule_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    rules = []
    for _ in range(draw(st.integers(0, 4))):
        rule: dict[str, Any] = {"precedence": draw(st.integers(0, 3))}
        match = draw(st.sampled_from(MATCHES))
        if match is not None:
            rule["match"] = match
        rule["route"] = [{"tags": draw(tag_sets), "weight": w} for w in draw(weights())]
        rules.append(rule)
    return rules


requests = st.builds(
    RequestInfo,
    method=st.sampled_from(["GET", "POST", "put"]),
    path=st.sampled_from(["/", "/api/1", "/web"]),
    headers=st.fixed_dictionaries(
        {},
        optional={
            "x-user": st.sampled_from(["vip", "VIP", "guest"]),
            "x-n": st.sampled_from(["3", "10", "x"]),
        },
    ),
    source=st.sampled_from([None, "web", "cli"]),
)


def latest(pool: Sequence[Instance]) -> list[Instance]:
    if not pool:
        return []
    top = max(RANK[i.version] for i in pool)
    return [i for i in pool if RANK[i.version] == top]


def carrying(tags: Mapping[str, str], pool: Sequence[Instance]) -> list[Instance]:
    def value(i: Instance, key: str) -> str | None:
        return {"version": i.version, "app": i.app}.get(key, i.tags.get(key))

    if tags.get("version") == "latest":
        pool = latest(pool)
        tags = {k: v for k, v in tags.items() if k != "version"}
    return [i for i in pool if all(value(i, k) == v for k, v in tags.items())]


def ids(pool: Sequence[Instance]) -> list[str]:
    return [i.instance_id for i in pool]


@SETTINGS
@given(
    rules=rule_sets(),
    default=st.sampled_from([None, "latest"]),
    calls=st.lists(st.tuples(requests, instance_pools()), min_size=1, max_size=12),
)
def test_routing_is_deterministic_and_stays_in_the_selected_subset(
    rules: list[dict[str, Any]],
    default: str | None,
    calls: list[tuple[RequestInfo, list[Instance]]],
) -> None:
    parsed = parse_routes({"orders": rules})["orders"]
    one, two = ServiceRouter(parsed, default), ServiceRouter(parsed, default)
    in_order = sorted(parsed, key=lambda r: -r.precedence)
    for info, pool in calls:
        rule, chosen = one.select(info, pool)
        told = two.explain(info, pool)
        assert ids(chosen) == told["instances"]
        assert (rule and rule.where) == (told["rule"] and told["rule"]["where"])

        first = next((r for r in in_order if r.match.matches(info)), None)
        assert rule is first
        assert all(any(i is p for p in pool) for i in chosen)
        assert bool(chosen) == bool(pool)
        if rule is None:
            assert told["tags"] is None
            expected = pool if default is None else latest(pool)
            assert told["selected_by"] == ("default-all" if default is None else "default-latest")
        else:
            assert told["tags"] in [dict(entry.tags) for entry in rule.route] + [
                {"version": "latest"}
            ]
            expected = carrying(told["tags"], pool)
            if not expected:
                expected = latest(pool)
                assert told["selected_by"] == "fallback-latest" or not pool
        assert ids(chosen) == ids(expected)


@SETTINGS
@given(route=st.lists(st.tuples(tag_sets, st.integers(0, 100)), min_size=1, max_size=3))
def test_each_cycle_of_100_picks_follows_the_weights(
    route: list[tuple[dict[str, str], int]],
) -> None:
    total = sum(w for _, w in route)
    if total > 100:
        route = [(tags, w * 100 // total) for tags, w in route]
        total = sum(w for _, w in route)
    parsed = parse_routes({"o": [{"route": [{"tags": t, "weight": w} for t, w in route]}]})
    router = ServiceRouter(parsed["o"])
    expected: Counter[tuple[tuple[str, str], ...]] = Counter()
    for tags, w in route:
        expected[tuple(sorted(tags.items()))] += w
    expected[(("version", "latest"),)] += 100 - total
    info = RequestInfo("GET", "/", {})
    for _ in range(2):
        seen = Counter(tuple(sorted(router.explain(info, [])["tags"].items())) for _ in range(100))
        assert seen == +expected
