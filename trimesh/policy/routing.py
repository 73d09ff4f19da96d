"""Route rules: which instances of a service a request may go to (Mesher's router). Sans-IO.

`routes.<service>` is a list of rules; the highest `precedence` whose `match`
fits the request wins, and one of its `route` entries (a tag set) is chosen by
smooth weighted round robin. Weights under 100 leave the remainder to the
latest version. The balancer then picks one instance among those returned.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trimesh.discovery.base import Instance
from trimesh.policy.match import (
    ConfigProblems,
    Match,
    RequestInfo,
    compile_match,
    parse_text_map,
)

LATEST = "latest"  # as a `version` tag: the highest version among the instances
# Dotted numbers (each short enough to stay a small int), then an optional non-numeric suffix.
_VERSION = re.compile(r"[vV]?(\d{1,30}(?:\.\d{1,30})*)((?:\.?[^\d.].*)?)", re.DOTALL)


@attrs.frozen
class WeightedTags:
    """One `route` entry: instances carrying all of `tags` get `weight` percent."""

    tags: Mapping[str, str]
    weight: int


@attrs.frozen
class RouteRule:
    """One rule of a service, its `match` compiled."""

    precedence: int
    match: Match
    route: tuple[WeightedTags, ...]
    # Where the rule was written ("routes.orders[2]"), for explain and messages.
    where: str = attrs.field(default="", eq=False)
    # The rule as configured, JSON-able (Mesher's routeRule document shape), for the admin API.
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


def parse_routes(raw: Any, where: str = "routes") -> dict[str, tuple[RouteRule, ...]]:
    """Validate `routes` into each service's rules, highest precedence first (ties: as written).

    Error handling: raises `ConfigProblems` naming every bad key by its path.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigProblems([f"{where}: expected a mapping of service name to rules"])
    problems: list[str] = []
    out: dict[str, tuple[RouteRule, ...]] = {}
    for service, rules in raw.items():
        at = f"{where}.{service}"
        if not isinstance(service, str) or not service:
            problems.append(f"{where}: service name {service!r} must be a non-empty string")
        elif isinstance(rules, str):
            problems.append(f"{at}: expected a list of rules, not a string (a | block?)")
        elif not isinstance(rules, list):
            problems.append(f"{at}: expected a list of rules")
        else:
            parsed = [_rule(rule, f"{at}[{i}]", problems) for i, rule in enumerate(rules)]
            kept = [rule for rule in parsed if rule is not None]
            out[service] = tuple(sorted(kept, key=lambda rule: -rule.precedence))
    if problems:
        raise ConfigProblems(problems)
    return out


def _rule(raw: Any, at: str, problems: list[str]) -> RouteRule | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: expected a mapping with precedence, match and route")
        return None
    before = len(problems)
    for key in raw:
        if key not in ("precedence", "match", "route"):
            problems.append(f"{at}.{key}: unknown key (expected one of precedence, match, route)")
    precedence = raw.get("precedence", 0)
    if not isinstance(precedence, int) or isinstance(precedence, bool):
        problems.append(f"{at}.precedence: expected an integer, got {precedence!r}")
    match = None
    try:
        match = compile_match(raw.get("match"), f"{at}.match")
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    route = _route(raw.get("route"), f"{at}.route", problems)
    if match is None or route is None or len(problems) > before:
        return None
    view: dict[str, Any] = {"precedence": precedence}
    if raw.get("match"):
        view["match"] = copy.deepcopy(raw["match"])
    view["route"] = [{"tags": dict(entry.tags), "weight": entry.weight} for entry in route]
    return RouteRule(precedence, match, route, at, view)


def _route(raw: Any, at: str, problems: list[str]) -> tuple[WeightedTags, ...] | None:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{at}: required: a non-empty list of {{tags: {{...}}, weight: N}}")
        return None
    entries = [_weighted(item, f"{at}[{i}]", problems) for i, item in enumerate(raw)]
    total = sum(entry.weight for entry in entries if entry is not None)
    if total > 100:
        problems.append(f"{at}: weights add up to {total}, more than 100")
    if any(entry is None for entry in entries) or total > 100:
        return None
    return tuple(entry for entry in entries if entry is not None)


def _weighted(raw: Any, at: str, problems: list[str]) -> WeightedTags | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: expected a mapping with tags and weight")
        return None
    for key in raw:
        if key not in ("tags", "weight"):
            problems.append(f"{at}.{key}: unknown key (expected one of tags, weight)")
    weight = raw.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
        problems.append(f"{at}.weight: expected an integer percentage 0..100, got {weight!r}")
        weight = None
    tags = parse_text_map(raw.get("tags"), f"{at}.tags", problems)
    if weight is None or tags is None:
        return None
    return WeightedTags(tags, weight)


@functools.lru_cache(maxsize=1024)
def version_key(version: str) -> tuple[int, tuple[int, ...], int, str]:
    """Sort key for versions: numeric parts as numbers ("1.10" > "1.9"), "1.0" == "1.0.0".

    A release sorts above its pre-releases ("2.0" > "2.0-rc1"); a version that does
    not start with digits sorts below every one that does.
    """
    found = _VERSION.fullmatch(version) if len(version) <= 200 else None
    if found is None:
        return (0, (), 0, version)
    numbers = [int(part) for part in found[1].split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return (1, tuple(numbers), 0 if found[2] else 1, found[2])


def latest_instances(instances: Sequence[Instance]) -> list[Instance]:
    """The instances of the highest version (`version_key`) among `instances`."""
    if not instances:
        return []
    top = max(version_key(instance.version) for instance in instances)
    return [instance for instance in instances if version_key(instance.version) == top]


def _tag(instance: Instance, key: str) -> str | None:
    if key == "version":
        return instance.version
    if key == "app":
        return instance.app
    return instance.tags.get(key)


def tagged_instances(tags: Mapping[str, str], instances: Sequence[Instance]) -> list[Instance]:
    """The instances carrying every tag (`version: latest` means the highest version)."""
    pool: Sequence[Instance] = instances
    wanted = dict(tags)
    if wanted.get("version") == LATEST:
        del wanted["version"]
        pool = latest_instances(instances)
    items = wanted.items()
    return [i for i in pool if all(_tag(i, key) == value for key, value in items)]


class SmoothWeighted:
    """nginx's smooth weighted round robin over fixed weights; `next()` gives an index.

    Deterministic, and exact over every cycle of sum(weights) picks, spread out
    evenly within it (5/1/1 gives a a b a c a a). A zero weight is never picked.
    """

    def __init__(self, weights: Sequence[int]) -> None:
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self._weights = tuple(weights)
        self._total = sum(weights)
        self._current = [0] * len(weights)

    def next(self) -> int:
        current = self._current
        best = 0
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best


@attrs.frozen
class _Decision:
    index: int | None  # of the rule in the router's order
    rule: RouteRule | None
    tags: Mapping[str, str] | None
    selected_by: str  # "tags", "fallback-latest", "default-all", "default-latest"
    instances: list[Instance]


class ServiceRouter:
    """Chooses which instances of one service a request may go to, by its route rules.

    The first rule (highest precedence) whose match fits wins; one of its tag sets
    is chosen by `SmoothWeighted` (state kept per rule across calls, so the router
    is rebuilt on config reload but not when instances change). A remainder under
    100 is an implicit `{version: latest}` entry. When the chosen tag set matches
    no instance, the request goes to all instances of the latest version, as it
    does for the remainder; Mesher (go-chassis) fails such a request with "No
    available instance" instead. With no rule matching: every instance, or with
    `default_version="latest"` the latest version's. Never returns an instance
    outside `instances`, and never an empty list for a non-empty `instances`.
    """

    def __init__(self, rules: Sequence[RouteRule], default_version: str | None = None) -> None:
        if default_version not in (None, LATEST):
            raise ValueError(f"default_version must be None or 'latest', got {default_version!r}")
        self.rules = tuple(sorted(rules, key=lambda rule: -rule.precedence))
        self.default_version = default_version
        self._entries = [_with_remainder(rule.route) for rule in self.rules]
        self._weighted = [SmoothWeighted([e.weight for e in es]) for es in self._entries]

    def select(
        self, info: RequestInfo, instances: Sequence[Instance]
    ) -> tuple[RouteRule | None, list[Instance]]:
        """The rule that matched (None if none) and the instances the request may go to."""
        decision = self._decide(info, instances)
        return decision.rule, decision.instances

    def explain(self, info: RequestInfo, instances: Sequence[Instance]) -> dict[str, Any]:
        """What `select` decides, as JSON-able data; advances the weighted state like it."""
        d = self._decide(info, instances)
        rule = None
        if d.rule is not None:
            rule = {"index": d.index, "precedence": d.rule.precedence, "where": d.rule.where}
        return {
            "rule": rule,
            "tags": None if d.tags is None else dict(d.tags),
            "selected_by": d.selected_by,
            "instances": [instance.instance_id for instance in d.instances],
        }

    def _decide(self, info: RequestInfo, instances: Sequence[Instance]) -> _Decision:
        for index, rule in enumerate(self.rules):
            if rule.match.matches(info):
                tags = self._entries[index][self._weighted[index].next()].tags
                chosen = tagged_instances(tags, instances)
                if chosen or not instances:
                    return _Decision(index, rule, tags, "tags", chosen)
                return _Decision(index, rule, tags, "fallback-latest", latest_instances(instances))
        if self.default_version == LATEST:
            return _Decision(None, None, None, "default-latest", latest_instances(instances))
        return _Decision(None, None, None, "default-all", list(instances))


def _with_remainder(route: tuple[WeightedTags, ...]) -> tuple[WeightedTags, ...]:
    left = 100 - sum(entry.weight for entry in route)
    return (*route, WeightedTags({"version": LATEST}, left)) if left > 0 else route
