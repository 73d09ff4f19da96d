"""Build a `Config` from YAML, then environment variables, then CLI flags.

Each layer is a nested dict of raw values; later layers override earlier
ones key by key. Validation runs once over the merged dict and collects
every problem with its key path, so `trimesh check` can name them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from trimesh import convert as p
from trimesh.config.model import (
    AppConfig,
    Config,
    HealthConfig,
    InboundConfig,
    Limits,
    ListenConfig,
    MetricsConfig,
    ObserveConfig,
    RegistryConfig,
    ServiceConfig,
    StaticInstance,
    UpstreamConfig,
)
from trimesh.config.policies import parse_policies
from trimesh.discovery.trust import is_loopback, this_machine_only
from trimesh.observe.tracing import parse_tracing
from trimesh.outbound.egress import parse_egress
from trimesh.policy.match import ConfigProblems
from trimesh.policy.ratelimit import parse_inbound_rate_limit
from trimesh.policy.routing import parse_routes

Raw = dict[str, Any]
Schema = Mapping[str, "Callable[[Any], Any] | Schema"]


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists `key.path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _static_services(value: Any) -> dict[str, tuple[StaticInstance, ...]]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of service name to a list of instances")
    out: dict[str, tuple[StaticInstance, ...]] = {}
    for svc, items in value.items():
        if not isinstance(items, list):
            raise ValueError(f"{svc}: expected a list of {{address: HOST:PORT}}")
        instances = []
        for i, item in enumerate(items):
            try:
                instances.append(_static_instance(item))
            except ValueError as exc:
                raise ValueError(f"{svc}[{i}]: {exc}") from None
        out[p.name(svc)] = tuple(instances)
    return out


def _static_instance(item: Any) -> StaticInstance:
    if isinstance(item, str):
        item = {"address": item}
    if not isinstance(item, Mapping) or "address" not in item:
        raise ValueError("expected {address: HOST:PORT, version: ..., tags: {...}}")
    unknown = set(item) - {"address", "version", "tags"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    host, port = p.address(item["address"])
    if port == 0:
        raise ValueError("address: port must be 1-65535")
    version = p.text(item.get("version", ""))
    return StaticInstance(host, port, version, p.str_map(item.get("tags")))


def _access_log(value: Any) -> str:
    # YAML 1.1 reads a bare `off`/`no` as false and `on`/`yes` as true.
    if value is False:
        return "off"
    if value is True:
        return "stderr"
    return p.text(value)


def _endpoints(value: Any) -> tuple[tuple[str, int], ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("expected HOST:PORT or a list of them")
    return tuple(p.address(str(v).strip()) for v in items)


SCHEMA: Schema = {
    "service": {
        "name": p.name,
        "app": p.name,
        "version": p.text,
        "environment": p.text,
        "metadata": p.str_map,
    },
    "listen": {
        "outbound": p.address,
        "inbound": p.address,
        "admin": p.address,
        "advertise": p.text,
        "drain_delay": p.non_negative_duration,
        "drain_timeout": p.duration,
        "admin_token": p.text,
    },
    "app": {
        "host": p.text,
        "ports": p.port_map,
        "health": {
            "protocol": p.choice("http", "tcp"),
            "path": p.text,
            "port": p.name,
            "interval": p.duration,
            "timeout": p.duration,
            "expect_status": p.positive_int,
        },
    },
    "limits": {
        "max_header_bytes": p.size,
        "max_headers": p.positive_int,
        "max_request_line": p.size,
        "max_body_bytes": p.optional_size,
        "header_timeout": p.duration,
        "body_idle_timeout": p.duration,
        "keepalive_timeout": p.duration,
        "max_connections": p.positive_int,
        "request_timeout": p.optional_duration,
        "allow_underscores": p.boolean,
        "tunnel_idle_timeout": p.duration,
        "max_response_header_bytes": p.size,
        "admin_max_connections": p.positive_int,
    },
    "upstream": {
        "connect_timeout": p.duration,
        "response_timeout": p.duration,
        "pool_max_idle": p.positive_int,
        "pool_idle_timeout": p.duration,
    },
    "registry": {
        "type": p.choice("static", "local", "etcd", "servicecomb"),
        "services": _static_services,
        "path": lambda v: Path(p.text(v)).expanduser(),
        "endpoints": _endpoints,
        "prefix": p.text,
        "project": p.name,
        "username": p.text,
        "password": p.text,
        "heartbeat_interval": p.duration,
        "ttl": p.duration,
        "call_timeout": p.duration,
        "allow_networks": p.networks,
    },
    "observe": {
        "access_log": _access_log,
        "log_format": p.choice("text", "json"),
        "metrics": {"enabled": p.boolean, "mesher_names": p.boolean},
        "tracing": lambda v: parse_tracing(v, "observe.tracing"),
    },
    # These two validate themselves and name their own key paths.
    "routes": parse_routes,
    "policies": parse_policies,
    "inbound": {"rate_limit": lambda v: parse_inbound_rate_limit(v, "inbound.rate_limit")},
    "egress": parse_egress,
    "log_level": p.choice("debug", "info", "warning", "error", "critical"),
}


def merge(base: Raw, over: Mapping[str, Any]) -> Raw:
    """Deep-merge `over` into a copy of `base`; mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> Raw:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def registry_url(url: str) -> Raw:
    """`local:///path`, `etcd://h:p[,h:p]`, `servicecomb://h:p`, `static:` → registry keys."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = url.rstrip(":"), ""
    scheme = scheme.lower()
    if scheme == "local":
        return {"type": "local", **({"path": rest} if rest else {})}
    if scheme == "static":
        return {"type": "static"}
    if scheme in ("etcd", "servicecomb", "http") and rest:
        kind = "servicecomb" if scheme in ("servicecomb", "http") else "etcd"
        return {"type": kind, "endpoints": rest.rstrip("/")}
    raise ConfigError([f"registry: unsupported registry URL {url!r}"])


def build(raw: Mapping[str, Any]) -> Config:
    """Validate the merged raw dict into a `Config`; raise `ConfigError` with every problem."""
    problems: list[str] = []
    values = _section(raw, SCHEMA, "", problems)
    if problems:
        raise ConfigError(problems)
    return _assemble(values, problems)


def _section(raw: Any, schema: Schema, path: str, problems: list[str]) -> Raw:
    if not isinstance(raw, Mapping):
        problems.append(f"{path.rstrip('.') or '(top level)'}: expected a mapping, got {raw!r}")
        return {}
    out: Raw = {}
    for key, value in raw.items():
        where = f"{path}{key}"
        rule = schema.get(str(key))
        if rule is None:
            problems.append(f"{where}: unknown key (expected one of {', '.join(schema)})")
        elif isinstance(rule, Mapping):
            out[key] = _section(value, rule, where + ".", problems)
        elif value is None and key in (
            "advertise",
            "username",
            "password",
            "max_body_bytes",
            "admin_token",
        ):
            out[key] = None
        else:
            try:
                out[key] = rule(value)
            except ConfigProblems as exc:
                problems.extend(exc.problems)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
    return out


def _assemble(v: Raw, problems: list[str]) -> Config:
    app = dict(v.get("app", {}))
    if "health" in app:
        app["health"] = HealthConfig(**app["health"])
    config = Config(
        service=ServiceConfig(**v.get("service", {})),
        listen=ListenConfig(**v.get("listen", {})),
        app=AppConfig(**app),
        limits=Limits(**v.get("limits", {})),
        upstream=UpstreamConfig(**v.get("upstream", {})),
        registry=RegistryConfig(**v.get("registry", {})),
        observe=_observe(v.get("observe", {})),
        inbound=InboundConfig(**v.get("inbound", {})),
        **({"egress": v["egress"]} if "egress" in v else {}),
        **({"routes": v["routes"]} if "routes" in v else {}),
        **({"policies": v["policies"]} if "policies" in v else {}),
        **({"log_level": v["log_level"]} if "log_level" in v else {}),
    )
    _cross_check(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def serving_problems(c: Config) -> list[str]:
    """Problems that matter only to a sidecar that registers itself (`serve`, `check`).

    What we register must reach us from other machines; an explicit advertise
    is trusted, even loopback (a one-machine setup, tests). `trimesh registry`
    commands never register, so they do not ask this.
    """
    host = c.listen.inbound[0]
    local = this_machine_only(host)
    if c.registry.type in ("etcd", "servicecomb") and not c.listen.advertise and local:
        return [
            f"listen.advertise: required with registry type {c.registry.type} when"
            f" listen.inbound is loopback or unspecified ({host or '*'}): other machines"
            " cannot reach it there; set the address they should use"
        ]
    return []


def _observe(values: Raw) -> ObserveConfig:
    values = dict(values)
    if "metrics" in values:
        values["metrics"] = MetricsConfig(**values["metrics"])
    return ObserveConfig(**values)


def _cross_check(c: Config, problems: list[str]) -> None:
    admin_host = c.listen.admin[0]
    if not is_loopback(admin_host) and not c.listen.admin_token:
        problems.append(
            f"listen.admin_token: required when the admin listener is not on loopback"
            f" ({admin_host}): set a bearer token"
        )
    health = c.app.health
    if health and health.port not in c.app.ports:
        problems.append(f"app.health.port: {health.port!r} is not declared in app.ports")
    if c.registry.type in ("etcd", "servicecomb") and not c.registry.endpoints:
        problems.append(f"registry.endpoints: required for registry type {c.registry.type}")
    if c.registry.ttl <= c.registry.heartbeat_interval:
        problems.append("registry.ttl: must be longer than registry.heartbeat_interval")


ENV_MESHER: Mapping[str, tuple[str, str]] = {
    "CAS_COMPONENT_NAME": ("service", "name"),
    "CAS_APPLICATION_NAME": ("service", "app"),
    "CAS_INSTANCE_VERSION": ("service", "version"),
    "ENVIRONMENT": ("service", "environment"),
    "SERVICE_PORTS": ("app", "ports"),
}


def from_env(env: Mapping[str, str] | None = None) -> Raw:
    """Mesher's variables, then `TRIMESH_<SECTION>_<KEY>` for any of our keys."""
    env = os.environ if env is None else env
    raw: Raw = {}
    for var, (section, key) in ENV_MESHER.items():
        if env.get(var):
            raw = merge(raw, {section: {key: env[var]}})
    if env.get("SPECIFIC_ADDR"):
        host, _, port = env["SPECIFIC_ADDR"].rpartition(":")
        raw = merge(raw, {"app": {"host": host or "127.0.0.1"}})
        if "ports" not in raw.get("app", {}):
            raw = merge(raw, {"app": {"ports": {"rest": port}}})
    if env.get("PAAS_CSE_SC_ENDPOINT"):
        endpoints = ",".join(_strip_scheme(e) for e in env["PAAS_CSE_SC_ENDPOINT"].split(","))
        raw = merge(raw, {"registry": {"type": "servicecomb", "endpoints": endpoints}})
    for var, value in env.items():
        if var.startswith("TRIMESH_") and var != "TRIMESH_CONFIG":
            raw = merge(raw, _trimesh_var(var[len("TRIMESH_") :].lower(), value))
    return raw


def _strip_scheme(endpoint: str) -> str:
    return endpoint.strip().split("://", 1)[-1].rstrip("/")


def _trimesh_var(name: str, value: str) -> Raw:
    if name == "registry":
        return {"registry": registry_url(value)}
    if name == "log_level":
        return {"log_level": value}
    section, _, key = name.partition("_")
    parsed = yaml.safe_load(value) if value else value
    # Durations and names read as YAML scalars; keep strings for everything else.
    return {section: {key: parsed if parsed is not None else value}}


def load(
    path: Path | None, cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """File < environment < CLI. Raises `ConfigError`."""
    raw = read_yaml(path) if path else {}
    raw = merge(raw, from_env(env))
    raw = merge(raw, cli or {})
    return build(raw)
