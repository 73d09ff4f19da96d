"""The `routes` section (Mesher's route rules) and `egress.allow`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from trimesh.mesher.keyspace import Keys, Raw, load_yaml
from trimesh.mesher.values import as_bool, as_int, as_text

_OPERATORS = frozenset(
    {"exact", "regex", "noEqu", "less", "noLess", "greater", "noGreater", "contains", "prefix"}
)


def map_routes(keys: Keys, out: Raw) -> None:
    """`servicecomb.routeRule.<svc>` (a YAML string, or a list in older router.yaml files)."""
    routes: Raw = {}
    for service, key in keys.under("servicecomb.routeRule.").items():
        raw = keys.take(key)
        if isinstance(raw, str):
            try:
                raw = load_yaml(raw)
            except yaml.YAMLError as exc:
                problem = " ".join(str(exc).split())
                keys.warn(key, f"not valid YAML ({problem}); rules not mapped")
                continue
        if not isinstance(raw, list):
            keys.warn(key, "expected a list of rules; not mapped")
            continue
        where = keys.where(key)
        rules = [_rule(rule, f"{where}[{i}]", keys.warnings) for i, rule in enumerate(raw)]
        if kept := [rule for rule in rules if rule is not None]:
            routes[service] = kept
    if routes:
        out["routes"] = routes


def _rule(raw: Any, where: str, warnings: list[str]) -> Raw | None:
    if not isinstance(raw, Mapping):
        warnings.append(f"{where}: expected a mapping; rule not mapped")
        return None
    for key in raw:
        if key not in ("precedence", "match", "route"):
            warnings.append(f"{where}.{key}: not mapped: no trimesh equivalent")
    precedence = as_int(raw.get("precedence") or 0)  # go-chassis: none is 0
    if precedence is None:
        warnings.append(f"{where}.precedence: expected a whole number; rule not mapped")
        return None
    match = _match(raw.get("match") or {}, f"{where}.match", warnings)
    route = _route(raw.get("route"), f"{where}.route", warnings)
    if match is None or route is None:
        return None
    return {"precedence": precedence, **({"match": match} if match else {}), "route": route}


def _match(raw: Any, where: str, warnings: list[str]) -> Raw | None:
    """Mesher's match → ours; None (with a warning) when the rule cannot be kept."""
    if not isinstance(raw, Mapping):
        warnings.append(f"{where}: expected a mapping; rule not mapped")
        return None
    out: Raw = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key == "refer":
            warnings.append(f"{at}: traffic markers are not supported; rule not mapped")
            return None
        if key == "source" and as_text(value) is not None:
            out["source"] = as_text(value)
        elif key == "sourceTags" and (tags := _text_map(value, at, warnings)) is not None:
            out["source_tags"] = tags
        elif key in ("headers", "httpHeaders") and isinstance(value, Mapping):
            for name, condition in value.items():
                converted = _header(condition, f"{at}.{name}", warnings)
                if converted is None:
                    return None
                if converted:  # no operator: Mesher's condition always holds
                    out.setdefault("headers", {})[str(name)] = converted
        elif key in ("source", "sourceTags", "headers", "httpHeaders"):
            warnings.append(f"{at}: malformed; rule not mapped")
            return None
        else:
            warnings.append(f"{at}: ignored (Mesher ignores it too)")
    return out


def _header(raw: Any, where: str, warnings: list[str]) -> Raw | None:
    if not isinstance(raw, Mapping):
        warnings.append(f"{where}: expected {{operator: value}}; rule not mapped")
        return None
    out: Raw = {}
    for op, value in raw.items():
        text = as_text(value)
        if op == "caseInsensitive":
            continue
        if op not in _OPERATORS or text is None:
            warnings.append(f"{where}.{op}: unsupported operator or value; rule not mapped")
            return None
        out[op] = _searching(text) if op == "regex" else text
    if out and as_bool(raw.get("caseInsensitive")):
        out["caseInsensitive"] = True
    return out


def _searching(pattern: str) -> str:
    """Mesher's regex searches the value; ours must match all of it, so widen a partial one."""
    if pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern
    return f".*(?:{pattern}).*"


def _text_map(raw: Any, where: str, warnings: list[str]) -> dict[str, str] | None:
    if not isinstance(raw, Mapping) or any(as_text(v) is None for v in raw.values()):
        warnings.append(f"{where}: expected a mapping of names to text; rule not mapped")
        return None
    return {str(k): str(as_text(v)) for k, v in raw.items()}


def _route(raw: Any, where: str, warnings: list[str]) -> list[Raw] | None:
    if not isinstance(raw, list) or not raw:
        warnings.append(f"{where}: expected a list of {{tags, weight}}; rule not mapped")
        return None
    entries: list[Raw] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            warnings.append(f"{at}: expected {{tags, weight}}; rule not mapped")
            return None
        for key in item:
            if key not in ("tags", "weight"):
                warnings.append(f"{at}.{key}: not mapped: no trimesh equivalent")
        weight = as_int(item.get("weight") or 0)  # go-chassis: a missing weight is 0
        tags = _text_map(item.get("tags") or {}, f"{at}.tags", warnings)
        if weight is None:
            warnings.append(f"{at}.weight: expected a whole number; rule not mapped")
        if weight is None or tags is None:
            return None
        entries.append({"tags": tags, "weight": weight})
    return entries


def map_egress(keys: Keys, out: Raw) -> None:
    """`egressRule.<name>: [{hosts, ports: [{port, protocol}]}]` → `egress.allow`."""
    if "egress.infra" in keys and str(keys.take("egress.infra")).lower() != "cse":
        keys.warn("egress.infra", "only rules written in egress.yaml (infra: cse) map")
    allow: list[Raw] = []
    for _, key in keys.under("egressRule.").items():
        raw = keys.take(key)
        if not isinstance(raw, list):
            keys.warn(key, "expected a list of {hosts, ports}; not mapped")
            continue
        where = keys.where(key)
        allow += [
            e for i, item in enumerate(raw) if (e := _egress_rule(item, f"{where}[{i}]", keys))
        ]
    if allow:
        out["egress"] = {"allow": allow}


def _egress_rule(raw: Any, where: str, keys: Keys) -> Raw | None:
    hosts = raw.get("hosts") if isinstance(raw, Mapping) else None
    hosts = [hosts] if isinstance(hosts, str) else hosts
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        keys.warnings.append(f"{where}: expected {{hosts: [...], ports: [...]}}; not mapped")
        return None
    assert isinstance(raw, Mapping)
    if "ports" not in raw:
        return {"hosts": hosts, "ports": [80]}  # Mesher's default port
    items = raw.get("ports") or []
    if not isinstance(items, list):
        keys.warnings.append(f"{where}.ports: expected a list of {{port, protocol}}; not mapped")
        return None
    ports: list[int] = []
    for i, item in enumerate(items):
        port = as_int(item.get("port", 80)) if isinstance(item, Mapping) else None
        protocol = str(item.get("protocol", "HTTP")).upper() if isinstance(item, Mapping) else ""
        if port is None or not 1 <= port <= 65535 or protocol != "HTTP":
            keys.warnings.append(
                f"{where}.ports[{i}]: Mesher's egress is {{port, protocol: HTTP}} only; not mapped"
            )
        else:
            ports.append(port)
    if not ports:
        keys.warnings.append(f"{where}: no usable port; not mapped")
        return None
    return {"hosts": hosts, "ports": ports}
