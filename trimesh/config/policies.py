"""The `policies` section: per-service (and per-API) traffic policy, resolved once per request.

```yaml
policies:
  default: {timeout: 30s, retry: {attempts: 2}}
  services:
    orders: {timeout: 5s, load_balancer: {strategy: least_request}}
    payments:                       # a list of blocks: API-level governance
      - {timeout: 10s}              # no `match`: the service's own settings
      - match: {method: POST, path: {prefix: /pay}}
        timeout: 2s
        retry: {attempts: 0}
```

Blocks merge key by key (mappings merge, anything else replaces): built-in
defaults < `policies.default` < the service's unmatched blocks < the first
block whose `match` fits the request (the service's blocks first, then the
default's). Every combination is merged and parsed at load time, so a request
only runs matchers and never parses. Error handling: `parse_policies` raises
`ConfigProblems` naming every bad key by its path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from trimesh import convert as p
from trimesh.policy.balancer import COOKIE, STRATEGIES
from trimesh.policy.breaker import BreakerPolicy, parse_circuit_breaker
from trimesh.policy.fault import FaultPolicy, parse_fault
from trimesh.policy.hedge import HedgePolicy, parse_hedge
from trimesh.policy.match import ANY, ConfigProblems, Match, RequestInfo, compile_match
from trimesh.policy.outlier import OutlierPolicy, parse_outlier
from trimesh.policy.ratelimit import RateLimit, parse_rate_limit
from trimesh.policy.retry import RetryPolicy, parse_budget, parse_retry

BLOCK_KEYS = (
    "match",
    "timeout",
    "per_try_timeout",
    "connect_timeout",
    "default_version",
    "load_balancer",
    "retry",
    "hedge",
    "circuit_breaker",
    "outlier",
    "max_concurrent",
    "rate_limit",
    "fault",
)
# Keys that hold per-service state (counters, windows, buckets): a block with a
# `match` (one API) cannot have its own, so they are refused there.
SERVICE_ONLY_KEYS = ("load_balancer", "circuit_breaker", "outlier", "max_concurrent", "rate_limit")


@attrs.frozen
class ServicePolicy:
    """What one request to one service runs under (part of the request's snapshot)."""

    # From the end of the request until the response head is chosen, all attempts
    # included (Envoy's route timeout, minus the body); None = none.
    timeout: float | None = 30.0
    per_try_timeout: float | None = None
    # None: `upstream.connect_timeout`.
    connect_timeout: float | None = None
    # "latest": with no route rule, only the highest version gets traffic (Mesher).
    default_version: str | None = None
    load_balancer: str = "round_robin"
    sticky_cookie: str = COOKIE
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    # (ratio of recent requests, retries per second always allowed)
    budget: tuple[float, float] = (0.2, 10.0)
    hedge: HedgePolicy | None = None
    circuit_breaker: BreakerPolicy = attrs.field(factory=BreakerPolicy)
    outlier: OutlierPolicy = attrs.field(factory=OutlierPolicy)
    # The bulkhead: requests in flight to the service at once (Mesher's
    # maxConcurrentRequests); None: unlimited.
    max_concurrent: int | None = 1000
    rate_limit: RateLimit | None = None
    fault: FaultPolicy | None = None


DEFAULT = ServicePolicy()
# The inbound side calls the local app once: no retries, no hedges.
# Its own deadline is `upstream.response_timeout`; a caller's propagated deadline still applies.
INBOUND = ServicePolicy(
    timeout=None,
    retry=RetryPolicy(attempts=0),
    outlier=OutlierPolicy(enabled=False),
    max_concurrent=None,
)


@attrs.frozen
class _Block:
    match: Match
    policy: ServicePolicy


@attrs.frozen
class PolicyBook:
    """Every service's resolved policies; `resolve` is what a request calls."""

    default: ServicePolicy = DEFAULT
    default_apis: tuple[_Block, ...] = ()
    services: Mapping[str, tuple[ServicePolicy, tuple[_Block, ...]]] = attrs.field(factory=dict)

    def base(self, service: str) -> ServicePolicy:
        """The service's policy before any API-level block (balancer, route defaults)."""
        found = self.services.get(service)
        return self.default if found is None else found[0]

    def resolve(self, service: str, info: RequestInfo | None) -> ServicePolicy:
        found = self.services.get(service)
        base, apis = (self.default, self.default_apis) if found is None else found
        if info is not None:
            for block in apis:
                if block.match.matches(info):
                    return block.policy
        return base

    def has_api_blocks(self, service: str) -> bool:
        found = self.services.get(service)
        return bool(self.default_apis if found is None else found[1])


def parse_policies(raw: Any, where: str = "policies") -> PolicyBook:
    """Validate and resolve the whole section. Raises `ConfigProblems`."""
    if raw is None:
        return PolicyBook()
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigProblems([f"{where}: expected a mapping with `default` and `services`"])
    for key in raw:
        if key not in ("default", "services"):
            problems.append(f"{where}.{key}: unknown key (expected one of default, services)")
    default_plain, default_matched = _blocks(raw.get("default"), f"{where}.default", problems)
    services_raw = raw.get("services") or {}
    if not isinstance(services_raw, Mapping):
        problems.append(f"{where}.services: expected a mapping of service name to policy")
        services_raw = {}
    base_raw = _merged({}, default_plain)
    default = _policy(base_raw, f"{where}.default", problems)
    default_apis = tuple(
        _Block(m, _policy(_merged(base_raw, [b]), w, problems)) for m, b, w in default_matched
    )
    services: dict[str, tuple[ServicePolicy, tuple[_Block, ...]]] = {}
    for name, value in services_raw.items():
        at = f"{where}.services.{name}"
        try:
            p.name(name)
        except ValueError as exc:
            problems.append(f"{at}: {exc}")
            continue
        plain, matched = _blocks(value, at, problems)
        own_raw = _merged(base_raw, plain)
        own = _policy(own_raw, at, problems)
        blocks = tuple(
            _Block(m, _policy(_merged(own_raw, [b]), w, problems))
            for m, b, w in matched + default_matched
        )
        services[str(name)] = (own, blocks)
    if problems:
        raise ConfigProblems(_inherited_once(problems, where))
    return PolicyBook(default, default_apis, services)


def _inherited_once(problems: list[str], where: str) -> list[str]:
    """Drop a problem a block only inherited: the same key and message under an ancestor.

    Blocks are validated merged over what they inherit, so a bad key in
    `policies.default` would otherwise be reported again under every service.
    """
    block = re.compile(rf"^({re.escape(where)}\.(?:default|services\.[^.\[]+))(\[\d+\])?(.*)$")
    present = set(problems)
    kept = []
    for problem in problems:
        path, sep, message = problem.partition(": ")
        found = block.match(path)
        if found is not None:
            prefix, index, rest = found.groups()
            ancestors = [prefix] if index else []
            if prefix != f"{where}.default":
                ancestors.append(f"{where}.default")
            if any(f"{a}{rest}{sep}{message}" in present for a in ancestors if a != path):
                continue
        kept.append(problem)
    return kept


def _blocks(
    value: Any, where: str, problems: list[str]
) -> tuple[list[Mapping[str, Any]], list[tuple[Match, Mapping[str, Any], str]]]:
    """Split a block or a list of blocks into unmatched ones and (match, block, path)."""
    if value is None:
        return [], []
    items: Sequence[Any] = value if isinstance(value, list) else [value]
    plain: list[Mapping[str, Any]] = []
    matched: list[tuple[Match, Mapping[str, Any], str]] = []
    for i, block in enumerate(items):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        if not isinstance(block, Mapping):
            problems.append(f"{at}: expected a mapping of policy keys")
            continue
        for key in block:
            if key not in BLOCK_KEYS:
                problems.append(
                    f"{at}.{key}: unknown key (expected one of {', '.join(BLOCK_KEYS)})"
                )
        if "match" not in block:
            plain.append(block)
            continue
        for key in SERVICE_ONLY_KEYS:
            if key in block:
                problems.append(
                    f"{at}.{key}: applies to the whole service, not one API: "
                    "move it to a block without `match`"
                )
        try:
            match = compile_match(block["match"], f"{at}.match")
        except ConfigProblems as exc:
            problems.extend(exc.problems)
            match = ANY
        matched.append((match, {k: v for k, v in block.items() if k != "match"}, at))
    return plain, matched


def _merged(base: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from trimesh.config.load import merge  # load imports this module

    out = _expanded(base)
    for block in blocks:
        out = merge(out, _expanded(block))
    return out


# Keys whose scalar shorthand stands for one key of their mapping (`hedge: 20ms`).
_SHORTHAND = {
    "hedge": "delay",
    "load_balancer": "strategy",
    "circuit_breaker": "enabled",
    "outlier": "enabled",
}
_OFF = (None, False, "off")


def _expanded(block: Mapping[str, Any]) -> dict[str, Any]:
    """`block`'s policy keys, shorthand spelled out so it merges key by key."""
    out = {k: v for k, v in block.items() if k in BLOCK_KEYS and k != "match"}
    for key, inner in _SHORTHAND.items():
        value = out.get(key)
        if key in out and not isinstance(value, Mapping) and value not in _OFF:
            out[key] = {inner: value}
    return out


def _policy(raw: Mapping[str, Any], where: str, problems: list[str]) -> ServicePolicy:
    simple = {
        "timeout": p.optional_duration,
        "per_try_timeout": p.optional_duration,
        "connect_timeout": p.optional_duration,
        "default_version": _default_version,
    }
    values = p.convert_keys(raw, where, simple, problems)
    if "load_balancer" in raw:
        values.update(_load_balancer(raw["load_balancer"], f"{where}.load_balancer", problems))
    if "retry" in raw:
        values.update(_retry(raw["retry"], f"{where}.retry", problems))
    values.update(p.convert_keys(raw, where, {"max_concurrent": _max_concurrent}, problems))
    for key, parse_block in _BLOCK_PARSERS.items():
        value = raw.get(key)
        if key not in raw or (value in _OFF and key in _OPTIONAL_BLOCKS):
            continue
        try:
            values[key] = parse_block(value, f"{where}.{key}")
        except ConfigProblems as exc:
            problems.extend(exc.problems)
    try:
        return ServicePolicy(**values)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return DEFAULT


_BLOCK_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "hedge": parse_hedge,
    "circuit_breaker": parse_circuit_breaker,
    "outlier": parse_outlier,
    "rate_limit": parse_rate_limit,
    "fault": parse_fault,
}
# Blocks that `off` (or null) removes; the others are always there, with `enabled`.
_OPTIONAL_BLOCKS = frozenset({"hedge", "rate_limit", "fault"})


def _max_concurrent(value: Any) -> int | None:
    if value in _OFF:
        return None
    return p.positive_int(value)


def _default_version(value: Any) -> str | None:
    if value in (None, False, "none", "all"):
        return None
    if value == "latest":
        return "latest"
    raise ValueError(f"expected `latest` or `all`, got {value!r}")


def _load_balancer(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"strategy": raw}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping like {{strategy: round_robin}}")
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "strategy":
            if value not in STRATEGIES:
                problems.append(
                    f"{where}.strategy: expected one of {', '.join(STRATEGIES)}, got {value!r}"
                )
            else:
                out["load_balancer"] = value
        elif key == "cookie":
            try:
                out["sticky_cookie"] = p.name(value)
            except ValueError as exc:
                problems.append(f"{where}.cookie: {exc}")
        else:
            problems.append(f"{where}.{key}: unknown key (expected one of strategy, cookie)")
    return out


def _retry(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if raw in (None, False, "off"):
        return {"retry": RetryPolicy(attempts=0)}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of retry settings")
        return {}
    out: dict[str, Any] = {}
    try:
        out["retry"] = parse_retry({k: v for k, v in raw.items() if k != "budget"}, where)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    if "budget" in raw:
        try:
            out["budget"] = parse_budget(raw["budget"], f"{where}.budget")
        except ConfigProblems as exc:
            problems.extend(exc.problems)
    return out
