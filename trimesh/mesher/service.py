"""The `service`, `listen`, `registry` and `log_level` sections."""

from __future__ import annotations

from trimesh import convert as parse
from trimesh.mesher.keyspace import Keys, Raw
from trimesh.mesher.values import address, as_bool, as_text, host_port


def map_service(keys: Keys, out: Raw) -> None:
    service: Raw = {}
    for name in ("name", "app", "version", "environment"):
        key = f"servicecomb.service.{name}"
        if key in keys:
            text = as_text(keys.take(key))
            if text is None:
                keys.warn(key, "expected text; not mapped")
            else:
                service[name] = text
    metadata: dict[str, str] = {}
    # Service properties, then instance properties (which win): trimesh registers one map.
    for prefix in ("servicecomb.service.properties.", "servicecomb.service.instanceProperties."):
        for name, key in keys.under(prefix).items():
            text = as_text(keys.take(key))
            if text is None:
                keys.warn(key, "expected text; not mapped")
            else:
                metadata[name] = text
    if metadata:
        service["metadata"] = metadata
    if service:
        out["service"] = service


def map_listen(keys: Keys, out: Raw) -> None:
    listen: Raw = {}
    http = "servicecomb.protocols.http.listenAddress"
    if http in keys:
        _proxy_listener(keys, http, listen)
    advertise = "servicecomb.protocols.http.advertiseAddress"
    if advertise in keys:
        found = host_port(keys.take(advertise))
        if found is None:
            keys.warn(advertise, "expected HOST:PORT; not mapped")
        else:
            listen["advertise"] = found[0]
            inbound = host_port(listen.get("inbound", ""))
            if inbound and found[1] != inbound[1]:
                keys.warn(advertise, "trimesh advertises the inbound port; only the host is mapped")
    admin = "servicecomb.protocols.rest-admin.listenAddress"
    if admin in keys:
        found = host_port(keys.take(admin))
        if found is None:
            keys.warn(admin, "expected HOST:PORT; not mapped")
        else:
            listen["admin"] = address(*found)
    if listen:
        out["listen"] = listen


def _proxy_listener(keys: Keys, key: str, listen: Raw) -> None:
    """Mesher's `http` protocol is both directions: the app's side always on loopback."""
    found = host_port(keys.take(key))
    if found is None:
        keys.warn(key, "expected HOST:PORT; not mapped")
        return
    host, port = found
    listen["outbound"] = address("127.0.0.1", port)
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
        listen["inbound"] = address(host, port)


def map_registry(keys: Keys, out: Raw) -> None:
    prefix = "servicecomb.registry."
    disabled = prefix + "disabled"
    if disabled in keys and as_bool(keys.take(disabled)):
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
        if source in keys and (text := as_text(keys.take(source))) is not None:
            registry[target] = text
        elif source in keys:
            keys.warn(source, "expected text; not mapped")
    cipher = "servicecomb.credentials.cipher"
    if cipher in keys and keys.take(cipher) not in ("default", "plain"):
        keys.warn(cipher, "trimesh reads the password as plain text; decrypt it yourself")
    if registry:
        out["registry"] = registry


def _registry_endpoints(keys: Keys, prefix: str) -> list[str]:
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


def _heartbeat(keys: Keys, key: str, registry: Raw) -> None:
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


def map_log_level(keys: Keys, out: Raw) -> None:
    for key in ("logLevel", "logger_level", "loggerLevel"):
        if key in keys:
            level = _LOG_LEVELS.get(str(keys.take(key)).strip().upper())
            if level is None:
                keys.warn(key, f"expected one of {', '.join(_LOG_LEVELS)}; not mapped")
            else:
                out["log_level"] = level
