"""`policies` blocks per scope: isolation, circuit breaker, fault, rate limits; `inbound`.

`Blocks` collects the blocks; `loadbalance` adds strategies and retries to them.
"""

from __future__ import annotations

import re
from typing import Any

from trimesh.mesher.keyspace import Keys, Raw
from trimesh.mesher.values import as_int, flag, ms_duration, whole


class Blocks:
    """`policies.default` and `policies.services.<svc>` as they are built."""

    def __init__(self) -> None:
        self.default: Raw = {}
        self.services: dict[str, Raw] = {}

    def at(self, scope: str | None) -> Raw:
        return self.default if scope is None else self.services.setdefault(scope, {})

    def section(self) -> Raw:
        services = {name: block for name, block in sorted(self.services.items()) if block}
        return {
            **({"default": self.default} if self.default else {}),
            **({"services": services} if services else {}),
        }


def scoped(keys: Keys, prefix: str, heads: frozenset[str]) -> dict[str | None, dict[str, str]]:
    """Keys under `prefix` by scope (None: global, else a service) → property → key.

    `cse.isolation.Consumer.timeoutInMilliseconds` is global, `...Consumer.orders.
    timeoutInMilliseconds` is for `orders`: a first segment that is a property name
    (`heads`) makes a global key. A service key with nothing after the name is left over.
    """
    scopes: dict[str | None, dict[str, str]] = {}
    for suffix, key in keys.under(prefix).items():
        head, _, rest = suffix.partition(".")
        if head in heads:
            scopes.setdefault(None, {})[suffix] = key
        elif rest:
            scopes.setdefault(head, {})[rest] = key
    return scopes


_ISOLATION = {"timeoutInMilliseconds": "timeout", "maxConcurrentRequests": "max_concurrent"}
_BREAKER = {
    "enabled": "enabled",
    "forceOpen": "force_open",
    "forceClosed": "force_closed",
    "sleepWindowInMilliseconds": "sleep_window",
    "requestVolumeThreshold": "request_volume_threshold",
    "errorThresholdPercentage": "error_threshold_percentage",
}


def map_isolation(keys: Keys, blocks: Blocks) -> None:
    """`cse.isolation.Consumer[.<svc>]`: timeout and bulkhead, key by key as go-chassis does."""
    heads = frozenset({*_ISOLATION, "timeout"})
    for scope, props in scoped(keys, "cse.isolation.Consumer.", heads).items():
        for prop, key in props.items():
            target = _ISOLATION.get(prop)
            n = whole(keys, key, 1) if target else None
            if target and n is not None:
                blocks.at(scope)[target] = ms_duration(n) if target == "timeout" else n


def map_breaker(keys: Keys, blocks: Blocks) -> None:
    """`cse.circuitBreaker.Consumer[.<svc>]` → `circuit_breaker`."""
    for scope, props in scoped(keys, "cse.circuitBreaker.Consumer.", frozenset(_BREAKER)).items():
        breaker: Raw = {}
        for prop, key in props.items():
            target = _BREAKER.get(prop)
            value: Any = None
            if target in ("enabled", "force_open", "force_closed"):
                value = flag(keys, key)
            elif target == "sleep_window":
                n = whole(keys, key, 1)
                value = None if n is None else ms_duration(n)
            elif target == "request_volume_threshold":
                value = whole(keys, key, 1)
            elif target == "error_threshold_percentage":
                value = whole(keys, key, 0, 100)
            if target and value is not None:
                breaker[target] = value
        if breaker:
            blocks.at(scope).setdefault("circuit_breaker", {}).update(breaker)


_FAULT_KEY = re.compile(
    r"([^.]+)\.policy\.fault\.protocols\.rest\.(abort\.percent|abort\.httpStatus"
    r"|delay\.percent|delay\.fixedDelay)"
)


def map_faults(keys: Keys, blocks: Blocks) -> None:
    """`cse.governance.Consumer.{_global,<svc>}.policy.fault.protocols.rest` → `fault`.

    go-chassis reads each value from the most specific scope where it is not 0, so
    a service inherits the global values it does not set; a service that sets any
    key of a fault gets the whole fault written out.
    """
    found: dict[str | None, dict[str, tuple[str, int]]] = {}
    for suffix, key in keys.under("cse.governance.Consumer.").items():
        m = _FAULT_KEY.fullmatch(suffix)
        if m is None:
            continue
        n = whole(keys, key, 0)
        if n:  # 0 is "not set" to go-chassis
            found.setdefault(None if m[1] == "_global" else m[1], {})[m[2]] = (key, n)
    defaults = found.get(None, {})
    for scope, own in found.items():
        effective = {**defaults, **own}
        fault: Raw = {}
        for kind in ("abort", "delay"):
            if any(prop.startswith(kind) for prop in own):
                one = _fault(keys, kind, effective)
                if one is not None:
                    fault[kind] = one
        if fault:
            blocks.at(scope)["fault"] = fault


def _fault(keys: Keys, kind: str, values: dict[str, tuple[str, int]]) -> Raw | None:
    what, target = ("httpStatus", "status") if kind == "abort" else ("fixedDelay", "fixed")
    percent, detail = values.get(f"{kind}.percent"), values.get(f"{kind}.{what}")
    if percent is None:
        assert detail is not None
        keys.warn(detail[0], f"no {kind}.percent: Mesher never injects this fault; not mapped")
        return None
    if percent[1] > 100:
        keys.warn(percent[0], "a percentage must be 0-100; fault not mapped")
        return None
    if detail is None:
        keys.warn(
            percent[0],
            f"no {kind}.{what}: Mesher rejects every request with 400 (invalid fault); not mapped",
        )
        return None
    if kind == "abort" and not 400 <= detail[1] <= 599:
        keys.warn(detail[0], "trimesh aborts with an error status (400-599) only; not mapped")
        return None
    return {"percent": percent[1], target: detail[1] if kind == "abort" else ms_duration(detail[1])}


def _qps_limits(keys: Keys, prefix: str) -> dict[str | None, Raw]:
    """`<prefix>{enabled, global.limit, limit.<svc>}` → scope → `{qps, burst}`.

    The burst is go-chassis's: a fifth of the rate, or 10 when that is 0.
    """
    enabled = True
    if prefix + "enabled" in keys:
        enabled = flag(keys, prefix + "enabled") is not False
    items: list[tuple[str | None, str]] = []
    if prefix + "global.limit" in keys:
        items.append((None, prefix + "global.limit"))
    # A dotted name is a per-schema or per-operation limit: left over, with a reason.
    items += [(n, k) for n, k in keys.under(prefix + "limit.").items() if "." not in n]
    limits: dict[str | None, Raw] = {}
    for scope, key in items:
        if not enabled:
            keys.warn(key, "ignored: qps.enabled is false")
            continue
        n = as_int(keys.take(key))
        if n is None or n < 1:
            keys.warn(
                key,
                "expected a whole number of requests per second (1 or more)"
                " (Mesher refuses every request below 1); not mapped",
            )
            continue
        limits[scope] = {"qps": n, "burst": n // 5 or 10}
    return limits


def map_flow_control(keys: Keys, blocks: Blocks) -> Raw:
    """Consumer limits → policy `rate_limit`; provider limits → the `inbound` section."""
    for scope, limit in _qps_limits(keys, "cse.flowcontrol.Consumer.qps.").items():
        blocks.at(scope)["rate_limit"] = limit
    prefix = "cse.flowcontrol.Provider.qps."
    provider = _qps_limits(keys, prefix)
    overall = provider.pop(None, None)
    rate_limit: Raw = dict(overall or {})
    if provider:
        rate_limit["per_source"] = {str(k): v for k, v in sorted(provider.items(), key=str)}
    for source, limit in provider.items():
        if overall is not None and limit["qps"] > overall["qps"]:
            keys.warnings.append(
                f"{keys.where(prefix + 'limit.' + str(source))}: Mesher gives {source} its own"
                f" limit instead of the global one; trimesh applies both, so {source} gets at"
                f" most {overall['qps']} qps"
            )
    return {"rate_limit": rate_limit} if rate_limit else {}
