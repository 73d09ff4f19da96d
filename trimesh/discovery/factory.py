"""Build the configured registry backend, and our own registration, from config."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import assert_never

from trimesh.config.model import Address, Config, RegistryConfig
from trimesh.discovery.base import Registration, Registry
from trimesh.discovery.local import LocalRegistry, default_path
from trimesh.discovery.static import StaticRegistry
from trimesh.discovery.trust import InstanceFilter, parse_ip

__all__ = ["build_registry", "instance_filter", "registration_for"]

_WILDCARDS = ("", "0.0.0.0", "::")


def build_registry(cfg: RegistryConfig, *, app: str) -> Registry:
    """The backend `cfg.type` names; network backends are imported only when used."""
    if cfg.type == "static":
        return StaticRegistry(cfg.services, app)
    if cfg.type == "local":
        return LocalRegistry(cfg.path or default_path())
    if cfg.type == "etcd":
        from trimesh.discovery.etcd import EtcdRegistry

        return EtcdRegistry(
            cfg.endpoints,
            prefix=cfg.prefix,
            username=cfg.username,
            password=cfg.password,
            call_timeout=cfg.call_timeout,
        )
    if cfg.type == "servicecomb":
        from trimesh.discovery.servicecomb import ServiceCombRegistry

        return ServiceCombRegistry(
            cfg.endpoints,
            project=cfg.project,
            username=cfg.username,
            password=cfg.password,
            call_timeout=cfg.call_timeout,
        )
    assert_never(cfg.type)


def registration_for(config: Config, inbound: Address) -> Registration:
    """What we register: our service at the bound inbound address (or `listen.advertise`)."""
    host = config.listen.advertise or inbound[0]
    if host in _WILDCARDS:
        host = _primary_address(ipv6=host == "::")
    s = config.service
    return Registration(
        service=s.name,
        host=host,
        port=inbound[1],
        app=s.app,
        version=s.version,
        environment=s.environment,
        metadata=s.metadata,
        heartbeat_interval=config.registry.heartbeat_interval,
        lease_ttl=config.registry.ttl,
    )


def _primary_address(*, ipv6: bool) -> str:
    """The address of the interface the default route uses; no packet is sent."""
    if ipv6:
        family, probe, fallback = socket.AF_INET6, "2001:db8::1", "::1"
    else:
        family, probe, fallback = socket.AF_INET, "192.0.2.1", "127.0.0.1"
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return fallback


def instance_filter(
    cfg: RegistryConfig, own: Iterable[Address], *, advertised: str
) -> InstanceFilter:
    """The trust filter for instances from `cfg`'s registry.

    `own` is our bound listeners that must never be a target (outbound and
    admin); `advertised` is the host we register. Loopback instances are
    allowed with the `local` and `static` registries, and with any registry
    when we ourselves register a loopback address: such a deployment is one
    machine, where every peer is on loopback too. A wildcard listener is also
    matched on `advertised`, the address others reach it by.
    """
    # "" binds like 0.0.0.0; the filter knows wildcards by their IP literal.
    listeners = [(host or "0.0.0.0", port) for host, port in own]
    extra = [(advertised, port) for host, port in listeners if host in _WILDCARDS]
    ip = parse_ip(advertised)
    single_machine = advertised == "localhost" or (ip is not None and ip.is_loopback)
    return InstanceFilter(
        own=frozenset(listeners + extra),
        allow_loopback=cfg.type in ("local", "static") or single_machine,
        allow_networks=cfg.allow_networks,
    )
