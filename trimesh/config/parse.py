"""Value converters for config: each takes raw YAML/env text and returns a typed value.

Each raises `ValueError` with a message fit to follow the key path, e.g.
``limits.header_timeout: expected a duration like 10s or 500ms, got 'soon'``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 10s or 500ms, got {value!r}")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return seconds


def size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"expected a size like 65536 or 64KiB, got {value!r}")
        n = int(match[1]) * _SIZE_UNITS[match[2].lower() if match[2] else None]
    if n <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return n


def optional_size(value: Any) -> int | None:
    return None if value in (None, 0, "0", "none", "unlimited") else size(value)


def non_negative_duration(value: Any) -> float:
    """A duration where 0 (or `off`) means none at all."""
    if value is False or value in (0, "0", "off"):
        return 0.0
    return duration(value)


def optional_duration(value: Any) -> float | None:
    """A duration, or None for `off` / `none` / 0 (YAML's bare `off` is False)."""
    if value is False or value in (None, 0, "0", "off", "none"):
        return None
    return duration(value)


def networks(value: Any) -> tuple[str, ...]:
    """A list (or comma-separated text) of CIDR networks, normalised."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of networks like [10.0.0.0/8], got {value!r}")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"not a network (CIDR): {item!r}") from exc
    return tuple(out)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a whole number, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return n


def port(value: Any) -> int:
    n = positive_int(value)
    if n > 65535:
        raise ValueError(f"port must be 1-65535, got {value!r}")
    return n


def text(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def name(value: Any) -> str:
    s = text(value)
    if not _NAME.match(s):
        raise ValueError(f"expected letters, digits, '.', '_' or '-' (at most 128), got {value!r}")
    return s


def address(value: Any) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, or a bare port (host 127.0.0.1); port 0 picks a free one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("127.0.0.1", _port_or_zero(value))
    s = text(value).strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]:")
    else:
        host, sep, rest = s.rpartition(":")
    if not sep or not host or not rest.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return (host, _port_or_zero(int(rest)))


def _port_or_zero(n: int) -> int:
    if not 0 <= n <= 65535:
        raise ValueError(f"port must be 0-65535, got {n}")
    return n


def str_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {value!r}")
    return {str(k): text(v) for k, v in value.items()}


def port_map(value: Any) -> dict[str, int]:
    """`{rest: 8080}` or Mesher's `rest:8080,grpc:9090`."""
    if isinstance(value, str):
        items: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            proto, sep, num = part.partition(":")
            if not sep:
                raise ValueError(f"expected NAME:PORT[,NAME:PORT], got {value!r}")
            items[proto.strip()] = num.strip()
        value = items
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping like {{rest: 8080}}, got {value!r}")
    return {name(k): port(v) for k, v in value.items()}


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def choice(*options: str) -> Any:
    def convert(value: Any) -> str:
        s = text(value).lower()
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}; got {value!r}")
        return s

    return convert
