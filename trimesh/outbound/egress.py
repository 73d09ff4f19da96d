"""Egress: which external hosts an app may reach through the outbound listener.

`egress.allow` lists hosts (exact names, `*.suffix` wildcards or IP
literals) with the ports allowed for them (Mesher's `egressRule`, extended
with CONNECT for HTTPS). Pure decisions here; resolving a name and refusing
addresses that are our own listeners happen in the router, where the I/O is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from trimesh import convert as parse
from trimesh.policy.retry import fail

DEFAULT_PORTS = (80, 443)
# How long resolved addresses of an egress host are reused (Envoy refreshes
# STRICT_DNS clusters every 5 s).
DNS_TTL = 5.0
_RULE_KEYS = ("hosts", "ports")


@attrs.frozen
class EgressRule:
    """Hosts (lower-case; `*.example.com` matches any subdomain, not the apex) and ports."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    ports: frozenset[int]

    def allows(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)


@attrs.frozen
class EgressPolicy:
    rules: tuple[EgressRule, ...] = ()

    def allows(self, host: str, port: int) -> bool:
        """Whether `host:port` (as the app wrote it) is on the allow list."""
        host = host.lower().rstrip(".")
        return any(rule.allows(host, port) for rule in self.rules)

    def knows(self, host: str) -> bool:
        """Whether `host` is listed for any port (a denied port then names the ports)."""
        host = host.lower().rstrip(".")
        return any(rule.allows(host, port) for rule in self.rules for port in rule.ports)

    def view(self) -> list[dict[str, Any]]:
        """The rules as JSON-able data (admin API)."""
        return [
            {
                "hosts": sorted(r.exact) + sorted("*" + s for s in r.suffixes),
                "ports": sorted(r.ports),
            }
            for r in self.rules
        ]


async def resolve(host: str, port: int) -> list[tuple[str, int]]:
    """`host`'s TCP addresses, IPv4 first (the system resolver, in a worker thread).

    Error handling: raises `OSError` (socket.gaierror) when it does not resolve;
    the caller owns the deadline.
    """
    found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    out: list[tuple[str, int]] = []
    for family, *_, sockaddr in sorted(found, key=lambda info: info[0] != trio.socket.AF_INET):
        address = (str(sockaddr[0]), int(sockaddr[1]))
        if family in (trio.socket.AF_INET, trio.socket.AF_INET6) and address not in out:
            out.append(address)
    return out


def looks_external(host: str) -> bool:
    """A dotted name or an IP literal: not a registry service name."""
    return "." in host or ":" in host


def parse_egress(raw: Any, where: str = "egress") -> EgressPolicy:
    """The `egress` section: `{allow: [{hosts: [...], ports: [...]}, "host[:port]", ...]}`.

    Error handling: raises `ConfigProblems` naming every bad key by its path.
    """
    if raw is None:
        return EgressPolicy()
    if not isinstance(raw, Mapping):
        fail([f"{where}: expected a mapping like {{allow: [...]}}"])
    problems = [f"{where}.{k}: unknown key (expected allow)" for k in raw if k != "allow"]
    items = raw.get("allow") or []
    if not isinstance(items, list):
        problems.append(f"{where}.allow: expected a list of rules")
        items = []
    rules = []
    for i, item in enumerate(items):
        at = f"{where}.allow[{i}]"
        rule = _rule(item, at, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        fail(problems)
    return EgressPolicy(tuple(rules))


def _rule(item: Any, at: str, problems: list[str]) -> EgressRule | None:
    if isinstance(item, str):
        host, _, port = item.rpartition(":") if _has_port(item) else (item, "", "")
        item = {"hosts": [host], **({"ports": [port]} if port else {})}
    if not isinstance(item, Mapping):
        problems.append(f"{at}: expected {{hosts: [...], ports: [...]}} or 'host[:port]'")
        return None
    for key in item:
        if key not in _RULE_KEYS:
            problems.append(f"{at}.{key}: unknown key (expected one of {', '.join(_RULE_KEYS)})")
    hosts = item.get("hosts")
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not hosts:
        problems.append(f"{at}.hosts: expected a non-empty list of host names")
        return None
    exact: set[str] = set()
    suffixes: list[str] = []
    for j, host in enumerate(hosts):
        name = _host(host, f"{at}.hosts[{j}]", problems)
        if name is None:
            continue
        if name.startswith("*."):
            suffixes.append(name[1:])
        else:
            exact.add(name)
    ports = _ports(item.get("ports", list(DEFAULT_PORTS)), f"{at}.ports", problems)
    return EgressRule(frozenset(exact), tuple(suffixes), ports)


def _has_port(text: str) -> bool:
    if text.startswith("["):  # [v6]:port
        return "]:" in text
    return text.count(":") == 1


def _host(value: Any, at: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{at}: expected a host name, got {value!r}")
        return None
    name = value.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    if name == "*" or ("*" in name and not (name.startswith("*.") and "*" not in name[2:])):
        problems.append(f"{at}: a wildcard must be a whole first label, like *.example.com")
        return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _ports(value: Any, at: str, problems: list[str]) -> frozenset[int]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        value = [value]
    out = set()
    for port in value:
        try:
            out.add(parse.port(port))
        except ValueError as exc:
            problems.append(f"{at}: {exc}")
    return frozenset(out)
