"""Build the configured registry backend, and our own registration, from config."""

from __future__ import annotations

import socket
from typing import assert_never

from trimesh.config.model import Address, Config, RegistryConfig
from trimesh.discovery.base import Registration, Registry
from trimesh.discovery.local import LocalRegistry, default_path
from trimesh.discovery.static import StaticRegistry

__all__ = ["build_registry", "registration_for"]

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
            cfg.endpoints, prefix=cfg.prefix, username=cfg.username, password=cfg.password
        )
    if cfg.type == "servicecomb":
        from trimesh.discovery.servicecomb import ServiceCombRegistry

        return ServiceCombRegistry(
            cfg.endpoints, project=cfg.project, username=cfg.username, password=cfg.password
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
