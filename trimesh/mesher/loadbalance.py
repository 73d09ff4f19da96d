"""`cse.loadbalance[.<svc>]` → the strategy and retries of `policies` blocks."""

from __future__ import annotations

from trimesh.mesher.keyspace import Keys, Raw
from trimesh.mesher.policies import Blocks, scoped
from trimesh.mesher.values import flag, ms_duration, whole

_STRATEGIES = {
    "RoundRobin": "round_robin",
    "Random": "random",
    "WeightedResponse": "weighted_response",
    "SessionStickiness": "session_sticky",
}
_LB_HEADS = frozenset(
    {
        "strategy",
        "retryEnabled",
        "retryOnSame",
        "retryOnNext",
        "backoff",
        "SessionStickinessRule",
        "serverListFilters",
    }
)
_NO_RETRY: Raw = {"attempts": 0}


def map_load_balancing(keys: Keys, blocks: Blocks) -> None:
    """`cse.loadbalance[.<svc>]`: strategy and retries.

    Mesher does not retry unless `retryEnabled`, so the default block always says
    so (trimesh's own default is 2 retries). A service's block replaces the global
    one in Mesher (go-chassis v2 control panel), so the service's block here spells
    out what it does not inherit.
    """
    scopes = scoped(keys, "cse.loadbalance.", _LB_HEADS)
    default = _lb_block(keys, scopes.pop(None, {}))
    blocks.default.update(default)
    for service, props in scopes.items():
        assert service is not None
        own = _lb_block(keys, props)
        lost = []
        if own["retry"] == _NO_RETRY and default["retry"] != _NO_RETRY:
            own["retry"] = {"attempts": 0, "retry_on_same": 0, "retry_on_next": 0}
            lost += [] if "retryEnabled" in props else ["no retries"]
        elif own["retry"] == _NO_RETRY:
            del own["retry"]  # the same as the default's
        strategy = default.get("load_balancer", {}).get("strategy", "round_robin")
        if "load_balancer" not in own and strategy != "round_robin":
            own["load_balancer"] = {"strategy": "round_robin"}
            lost.append("round_robin")
        if lost:
            keys.warnings.append(
                f"{keys.file(next(iter(props.values())))}: cse.loadbalance.{service}: in Mesher"
                f" this block replaces the global cse.loadbalance settings, so {service} gets"
                f" {' and '.join(lost)}; the output says so explicitly"
            )
        blocks.at(service).update(own)


def _lb_block(keys: Keys, props: dict[str, str]) -> Raw:
    block: Raw = {}
    if "strategy.name" in props:
        key = props["strategy.name"]
        name = keys.take(key)
        if isinstance(name, str) and name in _STRATEGIES:
            block["load_balancer"] = {"strategy": _STRATEGIES[name]}
        else:
            keys.warn(key, f"expected one of {', '.join(_STRATEGIES)}; not mapped")
    block["retry"] = _retry(keys, props)
    return block


def _retry(keys: Keys, props: dict[str, str]) -> Raw:
    enabled = "retryEnabled" in props and flag(keys, props["retryEnabled"])
    if not enabled:
        for prop in ("retryOnSame", "retryOnNext", *_BACKOFF):
            if prop in props:
                keys.warn(props[prop], "ignored: retryEnabled is not true, Mesher does not retry")
        return dict(_NO_RETRY)
    retry: Raw = {}
    for prop, target in (("retryOnSame", "retry_on_same"), ("retryOnNext", "retry_on_next")):
        if prop in props:
            retry[target] = whole(keys, props[prop], 0) or 0
    # retryEnabled with no counts makes one try in Mesher; explicit zeros say the same here.
    retry.setdefault("retry_on_same", 0)
    retry.setdefault("retry_on_next", 0)
    backoff = _backoff(keys, props)
    if backoff is not None:
        retry["backoff"] = backoff
    return retry


_BACKOFF = {
    "backoff.kind": "kind",
    "backoff.minMs": "min",
    "backoff.maxMs": "max",
    "backoff.MinMs": "min",
    "backoff.MaxMs": "max",
}


def _backoff_keys(keys: Keys, props: dict[str, str]) -> dict[str, str]:
    """A scope's backoff keys by role (kind, min, max)."""
    found: dict[str, str] = {}
    for prop, role in _BACKOFF.items():
        if prop in props:
            found[role] = props[prop]
            if prop.endswith(("MinMs", "MaxMs")):
                keys.warn(
                    props[prop],
                    "go-chassis reads backoff.minMs / maxMs (case matters) and ignored this"
                    " spelling; mapped anyway",
                )
    return found


def _backoff(keys: Keys, props: dict[str, str]) -> Raw | None:
    """go-chassis backoff (kind exponential|constant|zero, minMs, maxMs) → trimesh's."""
    found = _backoff_keys(keys, props)
    if not found:
        return None
    kind = str(keys.take(found["kind"])).lower() if "kind" in found else "exponential"
    low, high = ((whole(keys, found[r], 0) or 0) if r in found else 0 for r in ("min", "max"))
    if kind == "jittered":
        keys.warn(found["kind"], "not a go-chassis v2 kind; mapped to exponential (full jitter)")
        kind = "exponential"
    if kind == "zero" or (kind in ("constant", "exponential") and not low and not high):
        return {"kind": "constant", "base": 0}
    if kind == "constant":
        return {"kind": "constant", "base": ms_duration(low) if low else 0}
    if kind != "exponential":
        keys.warn(found["kind"], "expected exponential, constant or zero; backoff not mapped")
        return None
    if high < low:
        keys.warn(found.get("max", found["min"]), "maxMs below minMs; max = min")
        high = low
    return {"kind": "exponential", "base": ms_duration(low) if low else 0, "max": ms_duration(high)}
