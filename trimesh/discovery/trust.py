"""Which registry entries the request path may use (sans-IO).

Whoever can write the registry could otherwise point a service at this
sidecar's own admin or outbound port (a loop, or a way in to the admin API),
at the cloud metadata service (169.254.169.254) or at any port of the local
machine. `InstanceFilter` decides per instance, from its address alone:

* one of our own listeners: never (a loopback or unspecified listener host
  matches any loopback instance host on the same port);
* unspecified (0.0.0.0, ::), link-local (169.254.0.0/16, fe80::/10) or
  multicast addresses: never;
* loopback (and ``localhost``): only when `allow_loopback` (the `local` and
  `static` registries, or a single-machine deployment);
* when `allow_networks` is non-empty, only IP literals inside one of them;
  hostnames are then refused, since we do not resolve them here.

A hostname that is not an IP literal is otherwise allowed; it may still
resolve to a refused address, which only resolution-time checks could catch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from trimesh.discovery.base import Instance

__all__ = ["BASELINE", "InstanceFilter", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as operators usually intend.
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _own(values: Iterable[tuple[str, int]]) -> frozenset[tuple[str, int]]:
    return frozenset((str(host), int(port)) for host, port in values)


def parse_ip(host: str) -> IPAddress | None:
    """The IP literal `host` names (brackets, zone ids and v4-mapped v6 unwrapped), or None."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_localhost(host: str) -> bool:
    """RFC 6761: "localhost" and every name under it are loopback."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def is_loopback(host: str) -> bool:
    """True if `host` is a loopback name or address (not the unspecified one)."""
    if is_localhost(host):
        return True
    ip = parse_ip(host)
    return ip is not None and ip.is_loopback


def this_machine_only(host: str) -> bool:
    """True if `host` (a listener's or an instance's) is loopback, unspecified or empty.

    Other machines cannot reach an address like that: it means "this machine".
    """
    if not host or is_localhost(host):
        return True
    ip = parse_ip(host)
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


@attrs.frozen
class InstanceFilter:
    """Decides whether the request path may send traffic to an instance.

    `own` holds this sidecar's bound listener addresses; `allow_networks` is
    a tuple of CIDR strings (ValueError when one is not a network).
    """

    own: frozenset[tuple[str, int]] = attrs.field(default=frozenset(), converter=_own)
    allow_loopback: bool = True
    allow_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)

    def usable(self, instance: Instance) -> bool:
        """True when `instance` may be used."""
        return self.rejection(instance) is None

    def rejection(self, instance: Instance) -> str | None:
        """Why `instance` may not be used (for the log), or None when it may."""
        if not 0 < instance.port < 65536:
            return f"port {instance.port} is out of range"
        ip = parse_ip(instance.host)
        if ip is None and is_localhost(instance.host):
            ip = _LOOPBACK_V4
        if self._is_own(instance.host, ip, instance.port):
            return "it is one of this sidecar's own listeners"
        if ip is None:
            if self.allow_networks:
                return "a hostname cannot be checked against registry.allow_networks"
            return None
        return self._address_rejection(ip)

    def _address_rejection(self, ip: IPAddress) -> str | None:
        if ip.is_unspecified:
            return "the unspecified address is not a destination"
        if ip.is_link_local:
            return "link-local addresses (cloud metadata, autoconfiguration) are never used"
        if ip.is_multicast:
            return "multicast addresses are never used"
        if ip.is_loopback and not self.allow_loopback:
            return "loopback addresses are not allowed with this registry"
        if self.allow_networks and not any(ip in net for net in self.allow_networks):
            return "the address is outside registry.allow_networks"
        return None

    def _is_own(self, host: str, ip: IPAddress | None, port: int) -> bool:
        for own_host, own_port in self.own:
            if own_port != port:
                continue
            own_ip = parse_ip(own_host)
            if own_host == host or (own_ip is not None and own_ip == ip):
                return True
            # A wildcard or loopback listener answers on loopback (and on the
            # unspecified address, which connect() treats as loopback).
            if this_machine_only(own_host) and ip is not None and this_machine_only(host):
                return True
        return False


# What a cache applies until the sidecar knows its listeners: the rules that
# need no configuration (no link-local, unspecified or multicast targets).
BASELINE = InstanceFilter()
