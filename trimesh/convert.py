"""Value converters for config: each takes raw YAML/env text and returns a typed value.

Each raises `ValueError` with a message fit to follow the key path, e.g.
``limits.header_timeout: expected a duration like 10s or 500ms, got 'soon'``.
The block helpers at the end apply converters to a whole mapping and collect
those messages, with the key paths, as a list of problems.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
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


def non_negative_int(value: Any) -> int:
    """A whole number, 0 or more: an int or its digits (not a bool, not a float)."""
    n = _whole(value)
    if n is None:
        raise ValueError(f"expected a whole number (0 or more), got {value!r}")
    return n


def error_status(value: Any) -> int:
    """An HTTP status code of an error, 400-599."""
    code = _whole(value)
    if code is None:
        raise ValueError(f"expected a status code 400-599, got {value!r}")
    if not 400 <= code <= 599:
        raise ValueError(f"must be a status code 400-599 (an error), got {value!r}")
    return code


def _whole(value: Any) -> int | None:
    """`value` as an int if it is a non-negative int or ASCII digits, else None."""
    digits = str(value).strip() if isinstance(value, int | str) else ""
    if isinstance(value, bool) or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits)


def positive_number(value: Any, *, expected: str = "a number") -> float:
    """A finite number above 0; `expected` names it in the error (e.g. "requests per second")."""
    n = _number(value, expected)
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"must be a positive number, got {value!r}")
    return n


def non_negative_number(value: Any) -> float:
    """A finite number, 0 or more."""
    n = _number(value, "a number")
    if not (math.isfinite(n) and n >= 0):
        raise ValueError(f"must be a non-negative number, got {value!r}")
    return n


def percentage(value: Any, *, allow_zero: bool = False) -> float:
    """A number in (0, 100], or in [0, 100] with `allow_zero`."""
    n = _number(value, "a percentage (0-100)")
    if allow_zero:
        if not 0 <= n <= 100:
            raise ValueError(f"must be within 0-100, got {value!r}")
    elif not 0 < n <= 100:
        raise ValueError(f"must be more than 0 and at most 100, got {value!r}")
    return n


def _number(value: Any, expected: str) -> float:
    """`value` as a float (NaN and infinities included); a bool is not a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {expected}, got {value!r}") from None


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


# --- blocks -------------------------------------------------------------------------------
# A block is one mapping of a config section (a policy, a fault). Its parser reports every
# problem at once, each as "<where>.<key>: <what is wrong>", so these helpers append to a
# `problems` list instead of raising; the caller raises once it has checked everything.


def mapping(raw: Any, where: str, keys: tuple[str, ...], problems: list[str]) -> Mapping[str, Any]:
    """`raw` as a mapping with only `keys`; a non-mapping (then `{}`) or other key is a problem."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return {}
    for key in raw:
        if key not in keys:
            problems.append(f"{where}.{key}: unknown key (expected one of {', '.join(keys)})")
    return raw


def convert_keys(
    values: Mapping[str, Any],
    where: str,
    converters: Mapping[str, Callable[[Any], Any]],
    problems: list[str],
) -> dict[str, Any]:
    """Each key of `values` that `converters` names, converted by its converter, in their order.

    Error handling: a converter's ValueError is appended to `problems` as
    "<where>.<key>: <error>" and its key left out of the result.
    """
    out: dict[str, Any] = {}
    for key, convert in converters.items():
        if key in values:
            try:
                out[key] = convert(values[key])
            except ValueError as exc:
                problems.append(f"{where}.{key}: {exc}")
    return out


def parse_block(
    raw: Any,
    where: str,
    converters: Mapping[str, Callable[[Any], Any]],
    problems: list[str],
    *,
    keys: tuple[str, ...] | None = None,
    required: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keys of block `raw` that `converters` names, each converted by its converter.

    `keys` lists every key the block may have, in the order an unknown-key problem names
    them (default: the converters' keys); the caller reads the others itself. `required`
    maps a key that must be present to what its problem says when it is missing.

    Error handling: appends to `problems` what `mapping` and then `convert_keys` find,
    then each missing required key.
    """
    values = mapping(raw, where, tuple(converters) if keys is None else keys, problems)
    out = convert_keys(values, where, converters, problems)
    for key, missing in (required or {}).items():
        if isinstance(raw, Mapping) and key not in raw:
            problems.append(f"{where}.{key}: {missing}")
    return out


def switch_or_block(
    raw: Any,
    where: str,
    converters: Mapping[str, Callable[[Any], Any]],
    problems: list[str],
    *,
    keys: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """`parse_block`, but None is `{}` (the defaults) and a bare on/off is `{enabled: on/off}`.

    Error handling: a bare value that is not on/off is a problem named `where`.
    """
    if raw is None:
        return {}
    if isinstance(raw, bool | str):
        try:
            return {"enabled": boolean(raw)}
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return {}
    return parse_block(raw, where, converters, problems, keys=keys)
