"""`trimesh import-mesher CONF_DIR`: a Mesher / go-chassis conf folder → an equivalent trimesh.yaml.

go-chassis, Mesher's framework, merges every YAML file of the folder into one
key space of dotted keys: `cse: {loadbalance: {strategy: {name: Random}}}` and
a top-level `cse.loadbalance.strategy.name: Random` are the same key. We do
the same (`_merge`), rewrite the older spellings (`cse.protocols`,
`cse.service.registry`, `service_description`, ...) to one canonical key,
map every key we know and warn about every key we do not, naming its file and
key: nothing is dropped without a word. Where Mesher's semantics and ours
differ, the output says what Mesher did (docs/mesher-migration.md).

`read_folder` is the only I/O; `convert` is pure.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from trimesh import convert as parse

Raw = dict[str, Any]

# The order files are merged in, chassis.yaml first as go-chassis loads it first;
# a key set in two files takes the later one's value, with a warning. Other *.yaml
# files follow, by name.
FILE_ORDER = (
    "chassis.yaml",
    "microservice.yaml",
    "mesher.yaml",
    "auth.yaml",
    "circuit_breaker.yaml",
    "load_balancing.yaml",
    "rate_limiting.yaml",
    "fault.yaml",
    "router.yaml",
    "egress.yaml",
    "lager.yaml",
)


class MesherImportError(Exception):
    """The folder or one of its files cannot be read (exit 2)."""


class _Loader(yaml.SafeLoader):
    """YAML as go-chassis reads it into strings: `version: 1.10` stays "1.10", not 1.1."""


def _float_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(node.value)


_Loader.add_constructor("tag:yaml.org,2002:float", _float_as_text)


def load_yaml(text: str) -> Any:
    """Parse YAML the way go-chassis does for our purposes. Raises `yaml.YAMLError`."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def read_folder(folder: Path) -> dict[str, Any]:
    """Every *.yaml / *.yml file of `folder`, parsed: file name → data.

    Error handling: raises `MesherImportError` naming the folder or file and the problem.
    """
    if not folder.is_dir():
        raise MesherImportError(f"{folder}: not a directory")
    try:
        paths = [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError as exc:
        raise MesherImportError(f"{folder}: cannot read: {exc.strerror}") from exc
    if not paths:
        raise MesherImportError(f"{folder}: no *.yaml files (expected chassis.yaml, ...)")
    files: dict[str, Any] = {}
    for path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise MesherImportError(f"{path}: cannot read: {reason}") from exc
        try:
            files[path.name] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise MesherImportError(f"{path}: not valid YAML: {exc}") from exc
    return files


# --- the merged key space ---------------------------------------------------------------

# Older or alternative spellings → the canonical key (first matching prefix wins).
_GOVERNANCE = (
    "loadbalance",
    "isolation",
    "circuitBreaker",
    "fallback",
    "fallbackpolicy",
    "flowcontrol",
    "governance",
)
_ALIASES: tuple[tuple[str, str], ...] = (
    ("servicecomb.service.registry.", "servicecomb.registry."),
    ("cse.service.registry.", "servicecomb.registry."),
    ("service_description.", "servicecomb.service."),
    ("APPLICATION_ID", "servicecomb.service.app"),
    ("cse.protocols.", "servicecomb.protocols."),
    ("cse.handler.", "servicecomb.handler."),
    ("cse.credentials.", "servicecomb.credentials."),
    ("cse.routeRule.", "servicecomb.routeRule."),
    ("routeRule.", "servicecomb.routeRule."),
    *((f"servicecomb.{ns}.", f"cse.{ns}.") for ns in _GOVERNANCE),
)
_SERVICE_ALIASES = (
    ("servicecomb.service.application", "servicecomb.service.app"),
    ("servicecomb.service.instance_properties.", "servicecomb.service.instanceProperties."),
)


def _canonical(key: str) -> str:
    for aliases in (_ALIASES, _SERVICE_ALIASES):
        for old, new in aliases:
            if key == old or (old.endswith(".") and key.startswith(old)):
                key = new + key[len(old) :]
                break
    return key


@attrs.frozen
class _Entry:
    key: str  # as written (flattened), for messages
    file: str
    value: Any


class _Keys:
    """The merged key space: canonical dotted key → entry, and which keys were used."""

    def __init__(self, entries: dict[str, _Entry], warnings: list[str]) -> None:
        self._entries = entries
        self._used: set[str] = set()
        self.warnings = warnings

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def under(self, prefix: str) -> dict[str, str]:
        """Suffix → canonical key, for every key starting with `prefix`."""
        return {k[len(prefix) :]: k for k in self._entries if k.startswith(prefix)}

    def take(self, key: str) -> Any:
        """The value of `key` (None if unset), marking it mapped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._used.add(key)
        return entry.value

    def file(self, key: str) -> str:
        return self._entries[key].file

    def where(self, key: str) -> str:
        """`file: key-as-written`, to start a message with."""
        entry = self._entries[key]
        return f"{entry.file}: {entry.key}"

    def warn(self, key: str, message: str) -> None:
        self._used.add(key)
        self.warnings.append(f"{self.where(key)}: {message}")

    def unused(self) -> Iterator[tuple[str, _Entry]]:
        return ((k, e) for k, e in self._entries.items() if k not in self._used)


def _ordered(names: Mapping[str, Any]) -> list[str]:
    def rank(name: str) -> tuple[int, str]:
        return (FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER), name)

    return sorted(names, key=rank)


def _flatten(data: Mapping[Any, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            _flatten(v, key + ".", out)
        elif v is not None and v != {}:  # `environment:` with no value sets nothing
            out[key] = v


def _merge(files: Mapping[str, Any], warnings: list[str]) -> _Keys:
    entries: dict[str, _Entry] = {}
    for name in _ordered(files):
        data = files[name]
        if data is None:
            continue
        if not isinstance(data, Mapping):
            warnings.append(f"{name}: the top level is not a mapping of keys; file ignored")
            continue
        flat: dict[str, Any] = {}
        _flatten(data, "", flat)
        for key, value in flat.items():
            canon = _canonical(key)
            old = entries.get(canon)
            if old is not None and old.value != value:
                warnings.append(
                    f"{name}: {key}: also set in {old.file} ({old.key}: {old.value!r});"
                    " the later file's value is used"
                )
            entries[canon] = _Entry(key, name, value)
    return _Keys(entries, warnings)


# --- value forms --------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip() if isinstance(value, str) else ""
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _text(value: Any) -> str | None:
    """A scalar as go-chassis reads it into a string field; None for a mapping or list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _ms(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _host_port(text: Any) -> tuple[str, int] | None:
    """`host:port`, `[v6]:port` or `host:` (any free port) → (host, port)."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port == "" or port.isdigit()) or int(port or 0) > 65535:
        return None
    return host.strip("[]"), int(port or 0)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- service, listeners, registry, log level ---------------------------------------------


def _service(keys: _Keys, out: Raw) -> None:
    service: Raw = {}
    for name in ("name", "app", "version", "environment"):
        key = f"servicecomb.service.{name}"
        if key in keys:
            text = _text(keys.take(key))
            if text is None:
                keys.warn(key, "expected text; not mapped")
            else:
                service[name] = text
    metadata: dict[str, str] = {}
    # Service properties, then instance properties (which win): trimesh registers one map.
    for prefix in ("servicecomb.service.properties.", "servicecomb.service.instanceProperties."):
        for name, key in keys.under(prefix).items():
            text = _text(keys.take(key))
            if text is None:
                keys.warn(key, "expected text; not mapped")
            else:
                metadata[name] = text
    if metadata:
        service["metadata"] = metadata
    if service:
        out["service"] = service


def _listen(keys: _Keys, out: Raw) -> None:
    listen: Raw = {}
    http = "servicecomb.protocols.http.listenAddress"
    if http in keys:
        _proxy_listener(keys, http, listen)
    advertise = "servicecomb.protocols.http.advertiseAddress"
    if advertise in keys:
        found = _host_port(keys.take(advertise))
        if found is None:
            keys.warn(advertise, "expected HOST:PORT; not mapped")
        else:
            listen["advertise"] = found[0]
            inbound = _host_port(listen.get("inbound", ""))
            if inbound and found[1] != inbound[1]:
                keys.warn(advertise, "trimesh advertises the inbound port; only the host is mapped")
    admin = "servicecomb.protocols.rest-admin.listenAddress"
    if admin in keys:
        found = _host_port(keys.take(admin))
        if found is None:
            keys.warn(admin, "expected HOST:PORT; not mapped")
        else:
            listen["admin"] = _address(*found)
    if listen:
        out["listen"] = listen


def _proxy_listener(keys: _Keys, key: str, listen: Raw) -> None:
    """Mesher's `http` protocol is both directions: the app's side always on loopback."""
    found = _host_port(keys.take(key))
    if found is None:
        keys.warn(key, "expected HOST:PORT; not mapped")
        return
    host, port = found
    listen["outbound"] = _address("127.0.0.1", port)
    if host in ("127.0.0.1", "localhost", "::1"):
        keys.warn(
            key,
            "Mesher on 127.0.0.1 proxies for the local app only; listen.inbound keeps"
            " trimesh's default (127.0.0.1:30103): set it to the host IP to serve providers",
        )
    elif host in ("0.0.0.0", "", "::"):
        keys.warn(
            key,
            "Mesher refuses 0.0.0.0 in sidecar mode; listen.inbound not set: set it to the"
            " host IP (binding 0.0.0.0 on this port would clash with the outbound listener)",
        )
    else:
        listen["inbound"] = _address(host, port)


def _registry(keys: _Keys, out: Raw) -> None:
    prefix = "servicecomb.registry."
    disabled = prefix + "disabled"
    if disabled in keys and _bool(keys.take(disabled)):
        keys.warn(disabled, "trimesh always uses a registry; registry not mapped (default: local)")
        return
    kind = prefix + "type"
    if kind in keys and keys.take(kind) not in ("servicecenter", "servicecomb"):
        keys.warn(kind, "only Service Center (servicecenter) maps; registry not mapped")
        return
    registry: Raw = {}
    endpoints = _registry_endpoints(keys, prefix)
    if endpoints:
        registry = {"type": "servicecomb", "endpoints": endpoints}
    beat = prefix + "heartbeat.interval"
    if beat in keys:
        _heartbeat(keys, beat, registry)
    for source, target in (
        ("servicecomb.credentials.project", "project"),
        ("servicecomb.credentials.account.name", "username"),
        ("servicecomb.credentials.account.password", "password"),
    ):
        if source in keys and (text := _text(keys.take(source))) is not None:
            registry[target] = text
        elif source in keys:
            keys.warn(source, "expected text; not mapped")
    cipher = "servicecomb.credentials.cipher"
    if cipher in keys and keys.take(cipher) not in ("default", "plain"):
        keys.warn(cipher, "trimesh reads the password as plain text; decrypt it yourself")
    if registry:
        out["registry"] = registry


def _registry_endpoints(keys: _Keys, prefix: str) -> list[str]:
    """`address`, else the older registrator/serviceDiscovery addresses (one list in trimesh)."""
    names = ["address"]
    if prefix + "address" not in keys:
        names = ["registrator.address", "serviceDiscovery.address"]
    endpoints: list[str] = []
    for name in names:
        key = prefix + name
        if key not in keys:
            continue
        for url in str(keys.take(key)).split(","):
            scheme, sep, rest = url.strip().partition("://")
            if sep and scheme.lower() == "https":
                keys.warn(key, f"{url.strip()}: trimesh speaks plain HTTP to Service Center")
            endpoint = (rest if sep else scheme).rstrip("/")
            if endpoint and endpoint not in endpoints:
                endpoints.append(endpoint)
    return endpoints


def _heartbeat(keys: _Keys, key: str, registry: Raw) -> None:
    value = keys.take(key)
    try:
        seconds = parse.duration(value)
    except ValueError as exc:
        keys.warn(key, f"{exc}; not mapped")
        return
    registry["heartbeat_interval"] = value
    if seconds >= 30.0:
        # trimesh's lease (default 30 s) must outlive a heartbeat; Service Center's
        # own default is interval x (3 missed + 1).
        registry["ttl"] = f"{round(seconds * 4)}s"


_LOG_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warning",
    "WARNING": "warning",
    "ERROR": "error",
    "FATAL": "critical",
}


def _log_level(keys: _Keys, out: Raw) -> None:
    for key in ("logLevel", "logger_level", "loggerLevel"):
        if key in keys:
            level = _LOG_LEVELS.get(str(keys.take(key)).strip().upper())
            if level is None:
                keys.warn(key, f"expected one of {', '.join(_LOG_LEVELS)}; not mapped")
            else:
                out["log_level"] = level


# --- policies: load balancing, retries, isolation, circuit breaker, fault, rate limits ------


class _Blocks:
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


def _scoped(keys: _Keys, prefix: str, heads: frozenset[str]) -> dict[str | None, dict[str, str]]:
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


def _whole(keys: _Keys, key: str, low: int, high: int | None = None) -> int | None:
    """The whole number at `key` within [low, high], or None with a warning."""
    n = _int(keys.take(key))
    if n is None or n < low or (high is not None and n > high):
        bound = f"{low}-{high}" if high is not None else f"{low} or more"
        keys.warn(key, f"expected a whole number ({bound}); not mapped")
        return None
    return n


def _flag(keys: _Keys, key: str) -> bool | None:
    value = _bool(keys.take(key))
    if value is None:
        keys.warn(key, "expected true or false; not mapped")
    return value


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


def _load_balancing(keys: _Keys, blocks: _Blocks) -> None:
    """`cse.loadbalance[.<svc>]`: strategy and retries.

    Mesher does not retry unless `retryEnabled`, so the default block always says
    so (trimesh's own default is 2 retries). A service's block replaces the global
    one in Mesher (go-chassis v2 control panel), so the service's block here spells
    out what it does not inherit.
    """
    scopes = _scoped(keys, "cse.loadbalance.", _LB_HEADS)
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


def _lb_block(keys: _Keys, props: dict[str, str]) -> Raw:
    block: Raw = {}
    if "strategy.name" in props:
        key = props["strategy.name"]
        name = keys.take(key)
        if name in _STRATEGIES:
            block["load_balancer"] = {"strategy": _STRATEGIES[name]}
        else:
            keys.warn(key, f"expected one of {', '.join(_STRATEGIES)}; not mapped")
    block["retry"] = _retry(keys, props)
    return block


def _retry(keys: _Keys, props: dict[str, str]) -> Raw:
    enabled = "retryEnabled" in props and _flag(keys, props["retryEnabled"])
    if not enabled:
        for prop in ("retryOnSame", "retryOnNext", *_BACKOFF):
            if prop in props:
                keys.warn(props[prop], "ignored: retryEnabled is not true, Mesher does not retry")
        return dict(_NO_RETRY)
    retry: Raw = {}
    for prop, target in (("retryOnSame", "retry_on_same"), ("retryOnNext", "retry_on_next")):
        if prop in props:
            retry[target] = _whole(keys, props[prop], 0) or 0
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


def _backoff_keys(keys: _Keys, props: dict[str, str]) -> dict[str, str]:
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


def _backoff(keys: _Keys, props: dict[str, str]) -> Raw | None:
    """go-chassis backoff (kind exponential|constant|zero, minMs, maxMs) → trimesh's."""
    found = _backoff_keys(keys, props)
    if not found:
        return None
    kind = str(keys.take(found["kind"])).lower() if "kind" in found else "exponential"
    low, high = ((_whole(keys, found[r], 0) or 0) if r in found else 0 for r in ("min", "max"))
    if kind == "jittered":
        keys.warn(found["kind"], "not a go-chassis v2 kind; mapped to exponential (full jitter)")
        kind = "exponential"
    if kind == "zero" or (kind in ("constant", "exponential") and not low and not high):
        return {"kind": "constant", "base": 0}
    if kind == "constant":
        return {"kind": "constant", "base": _ms(low) if low else 0}
    if kind != "exponential":
        keys.warn(found["kind"], "expected exponential, constant or zero; backoff not mapped")
        return None
    if high < low:
        keys.warn(found.get("max", found["min"]), "maxMs below minMs; max = min")
        high = low
    return {"kind": "exponential", "base": _ms(low) if low else 0, "max": _ms(high)}


_ISOLATION = {"timeoutInMilliseconds": "timeout", "maxConcurrentRequests": "max_concurrent"}
_BREAKER = {
    "enabled": "enabled",
    "forceOpen": "force_open",
    "forceClosed": "force_closed",
    "sleepWindowInMilliseconds": "sleep_window",
    "requestVolumeThreshold": "request_volume_threshold",
    "errorThresholdPercentage": "error_threshold_percentage",
}


def _isolation(keys: _Keys, blocks: _Blocks) -> None:
    """`cse.isolation.Consumer[.<svc>]`: timeout and bulkhead, key by key as go-chassis does."""
    heads = frozenset({*_ISOLATION, "timeout"})
    for scope, props in _scoped(keys, "cse.isolation.Consumer.", heads).items():
        for prop, key in props.items():
            target = _ISOLATION.get(prop)
            n = _whole(keys, key, 1) if target else None
            if target and n is not None:
                blocks.at(scope)[target] = _ms(n) if target == "timeout" else n


def _breaker(keys: _Keys, blocks: _Blocks) -> None:
    """`cse.circuitBreaker.Consumer[.<svc>]` → `circuit_breaker`."""
    for scope, props in _scoped(keys, "cse.circuitBreaker.Consumer.", frozenset(_BREAKER)).items():
        breaker: Raw = {}
        for prop, key in props.items():
            target = _BREAKER.get(prop)
            value: Any = None
            if target in ("enabled", "force_open", "force_closed"):
                value = _flag(keys, key)
            elif target == "sleep_window":
                n = _whole(keys, key, 1)
                value = None if n is None else _ms(n)
            elif target == "request_volume_threshold":
                value = _whole(keys, key, 1)
            elif target == "error_threshold_percentage":
                value = _whole(keys, key, 0, 100)
            if target and value is not None:
                breaker[target] = value
        if breaker:
            blocks.at(scope).setdefault("circuit_breaker", {}).update(breaker)


_FAULT_KEY = re.compile(
    r"([^.]+)\.policy\.fault\.protocols\.rest\.(abort\.percent|abort\.httpStatus"
    r"|delay\.percent|delay\.fixedDelay)"
)


def _faults(keys: _Keys, blocks: _Blocks) -> None:
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
        n = _whole(keys, key, 0)
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


def _fault(keys: _Keys, kind: str, values: dict[str, tuple[str, int]]) -> Raw | None:
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
    return {"percent": percent[1], target: detail[1] if kind == "abort" else _ms(detail[1])}


def _qps_limits(keys: _Keys, prefix: str) -> dict[str | None, Raw]:
    """`<prefix>{enabled, global.limit, limit.<svc>}` → scope → `{qps, burst}`.

    The burst is go-chassis's: a fifth of the rate, or 10 when that is 0.
    """
    enabled = True
    if prefix + "enabled" in keys:
        enabled = _flag(keys, prefix + "enabled") is not False
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
        n = _int(keys.take(key))
        if n is None or n < 1:
            keys.warn(
                key,
                "expected a whole number of requests per second (1 or more)"
                " (Mesher refuses every request below 1); not mapped",
            )
            continue
        limits[scope] = {"qps": n, "burst": n // 5 or 10}
    return limits


def _flow_control(keys: _Keys, blocks: _Blocks) -> Raw:
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


# --- route rules and egress ----------------------------------------------------------------

_OPERATORS = frozenset(
    {"exact", "regex", "noEqu", "less", "noLess", "greater", "noGreater", "contains", "prefix"}
)


def _routes(keys: _Keys, out: Raw) -> None:
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
    precedence = _int(raw.get("precedence") or 0)  # go-chassis: none is 0
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
        if key == "source" and _text(value) is not None:
            out["source"] = _text(value)
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
        text = _text(value)
        if op == "caseInsensitive":
            continue
        if op not in _OPERATORS or text is None:
            warnings.append(f"{where}.{op}: unsupported operator or value; rule not mapped")
            return None
        out[op] = _searching(text) if op == "regex" else text
    if out and _bool(raw.get("caseInsensitive")):
        out["caseInsensitive"] = True
    return out


def _searching(pattern: str) -> str:
    """Mesher's regex searches the value; ours must match all of it, so widen a partial one."""
    if pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern
    return f".*(?:{pattern}).*"


def _text_map(raw: Any, where: str, warnings: list[str]) -> dict[str, str] | None:
    if not isinstance(raw, Mapping) or any(_text(v) is None for v in raw.values()):
        warnings.append(f"{where}: expected a mapping of names to text; rule not mapped")
        return None
    return {str(k): str(_text(v)) for k, v in raw.items()}


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
        weight = _int(item.get("weight") or 0)  # go-chassis: a missing weight is 0
        tags = _text_map(item.get("tags") or {}, f"{at}.tags", warnings)
        if weight is None:
            warnings.append(f"{at}.weight: expected a whole number; rule not mapped")
        if weight is None or tags is None:
            return None
        entries.append({"tags": tags, "weight": weight})
    return entries


def _egress(keys: _Keys, out: Raw) -> None:
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


def _egress_rule(raw: Any, where: str, keys: _Keys) -> Raw | None:
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
        port = _int(item.get("port", 80)) if isinstance(item, Mapping) else None
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


# --- what is left over ---------------------------------------------------------------------

_REASONS: tuple[tuple[str, str], ...] = (
    (r"servicecomb\.handler\.", "the handler chain is fixed: trimesh runs every configured policy"),
    (
        r"cse\.(fallback|fallbackpolicy)\.",
        "no fallbacks: an open circuit is answered with an error",
    ),
    (
        r"cse\.(isolation|circuitBreaker)\.Provider\.",
        "provider-side isolation and breakers are not"
        " supported (inbound.rate_limit limits the provider side)",
    ),
    (r"cse\.circuitBreaker\.scope$", "the breaker's scope is not configurable"),
    (r"cse\.isolation\..*timeout\.enabled$", "go-chassis v2 does not read it; the timeout applies"),
    (
        r"cse\.loadbalance\..*SessionStickinessRule\.",
        "session_sticky keeps the instance in a cookie, with no session timeout or failure count",
    ),
    (r"cse\.loadbalance\.serverListFilters$", "instance filters are not supported"),
    (
        r"cse\.flowcontrol\.[^.]+\.qps\.limit\..*\.",
        "per-schema and per-operation limits are not supported",
    ),
    (
        r"cse\.flowcontrol\.",
        "rate limits are per target service (Consumer) or per source (Provider)",
    ),
    (r"cse\.governance\.", "only the rest protocol's fault for _global or a service maps"),
    (
        r"servicecomb\.(sourceTemplate|match)\.",
        "match templates and traffic markers are not"
        " supported; write the match inline in the route rule",
    ),
    (r"servicecomb\.darklaunch\.", "dark-launch (v1) rules are not converted; write routeRule"),
    (r"servicecomb\.protocols\.rest\.", "not a Mesher proxy listener: Mesher proxies on `http`"),
    (r"servicecomb\.protocols\.(grpc|dubbo|highway)", "trimesh proxies HTTP/1.1 only"),
    (r"servicecomb\.protocols\.", "only listenAddress/advertiseAddress of http and rest-admin map"),
    (r"servicecomb\.registry\.", "a registry client option trimesh does not have"),
    (
        r"servicecomb\.credentials\.(accessKey|secretKey|akskCustomCipher)",
        "AK/SK auth is not supported",
    ),
    (r"servicecomb\.(service\.)?config\.", "the config-centre client settings do not carry over"),
    (r"servicecomb\.service\.", "trimesh registers name, app, version, environment and metadata"),
    (
        r"(ssl|servicecomb\.ssl)\.|.*\.(cipherPlugin|verifyPeer|cipherSuits|protocol|caFile|"
        r"certFile|keyFile|certPwdFile)$",
        "TLS is not supported yet",
    ),
    (
        r"(tracing|servicecomb\.apm|servicecomb\.monitor|servicecomb\.metrics)\.",
        "no exporters yet: trimesh writes a JSON access log (observe.access_log)",
    ),
    (
        r"(writers|logWriters|logFile|logger_file|logFormatText|log_format_text|logColorMode|"
        r"logRotate\w*|log_rotate_\w+|logBackupCount|log_backup_count|rollingPolicy|"
        r"accessLogFile)$",
        "trimesh logs to stderr; rotation is the supervisor's job",
    ),
    (r"admin\.", "trimesh's admin listener always runs (listen.admin, loopback by default)"),
    (
        r"localHealthCheck$",
        "write app.health instead: {protocol: http, path: URI, port: NAME"
        " in app.ports, interval: ..., expect_status: ...}",
    ),
    (r"plugin\.", "the request's host is always the service name (no resolver plugins)"),
)


def _reason(key: str) -> str:
    for pattern, reason in _REASONS:
        if re.match(pattern, key):
            return reason
    return "no trimesh equivalent"


# --- the whole conversion and the command ---------------------------------------------------

_SECTIONS = (
    "service",
    "listen",
    "registry",
    "routes",
    "policies",
    "inbound",
    "egress",
    "log_level",
)


def convert(folder_files: Mapping[str, Any]) -> tuple[Raw, list[str]]:
    """Mesher's parsed files (file name → YAML data) → (trimesh config, warnings).

    Every key that is not mapped, or mapped with a change of meaning, gets one
    warning naming its file and key. Pure: no I/O.
    """
    warnings: list[str] = []
    keys = _merge(folder_files, warnings)
    out: Raw = {}
    _service(keys, out)
    _listen(keys, out)
    _registry(keys, out)
    _routes(keys, out)
    blocks = _Blocks()
    _load_balancing(keys, blocks)
    _isolation(keys, blocks)
    _breaker(keys, blocks)
    _faults(keys, blocks)
    inbound = _flow_control(keys, blocks)
    out["policies"] = blocks.section()
    if inbound:
        out["inbound"] = inbound
    _egress(keys, out)
    _log_level(keys, out)
    for key, entry in keys.unused():
        warnings.append(f"{entry.file}: {entry.key}: not mapped: {_reason(key)}")
    return {k: out[k] for k in _SECTIONS if k in out}, list(dict.fromkeys(warnings))


def render(config: Mapping[str, Any], source: Path) -> str:
    """The config as a trimesh.yaml document, with a header saying where it came from."""
    body = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    return (
        f"# Generated by `trimesh import-mesher {source}`.\n"
        "# Review the warnings it printed, then: trimesh check -c trimesh.yaml\n" + body
    )


def add_import_command(sub: Any) -> None:
    command = sub.add_parser(
        "import-mesher",
        help="convert a Mesher / go-chassis conf folder to trimesh.yaml",
        description="Read a Mesher / go-chassis configuration folder (chassis.yaml,"
        " microservice.yaml, mesher.yaml, ...) and print an equivalent trimesh.yaml on stdout."
        " Every key that is not mapped is named in a warning on stderr.",
    )
    command.add_argument("conf_dir", metavar="CONF_DIR", type=Path, help="Mesher's conf folder")


def run_import_command(args: argparse.Namespace) -> int:
    """Print the converted config; exit 0, or 2 when the folder or a file cannot be read."""
    try:
        files = read_folder(args.conf_dir)
    except MesherImportError as exc:
        print(f"trimesh import-mesher: {exc}", file=sys.stderr)
        return 2
    config, warnings = convert(files)
    for warning in warnings:
        print(f"trimesh import-mesher: warning: {warning}", file=sys.stderr)
    sys.stdout.write(render(config, args.conf_dir))
    return 0
