"""Value forms as go-chassis reads them, and a key's value read in one form with a warning."""

from __future__ import annotations

import re
from typing import Any

from trimesh.mesher.keyspace import Keys


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip() if isinstance(value, str) else ""
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def as_text(value: Any) -> str | None:
    """A scalar as go-chassis reads it into a string field; None for a mapping or list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def ms_duration(ms: int) -> str:
    """Milliseconds as a trimesh duration: whole seconds as `Ns`, else `Nms`."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def host_port(text: Any) -> tuple[str, int] | None:
    """`host:port`, `[v6]:port` or `host:` (any free port) → (host, port)."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port == "" or port.isdigit()) or int(port or 0) > 65535:
        return None
    return host.strip("[]"), int(port or 0)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def whole(keys: Keys, key: str, low: int, high: int | None = None) -> int | None:
    """The whole number at `key` within [low, high], or None with a warning."""
    n = as_int(keys.take(key))
    if n is None or n < low or (high is not None and n > high):
        bound = f"{low}-{high}" if high is not None else f"{low} or more"
        keys.warn(key, f"expected a whole number ({bound}); not mapped")
        return None
    return n


def flag(keys: Keys, key: str) -> bool | None:
    value = as_bool(keys.take(key))
    if value is None:
        keys.warn(key, "expected true or false; not mapped")
    return value
