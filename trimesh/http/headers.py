"""Header rules a proxy must apply (RFC 9110 7.6): sans-IO and table-driven.

Input headers are h11's parsed list of (lowercase name, value) byte pairs,
already validated by h11, so nothing here re-validates them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        # Framing is regenerated from our own parse, never copied.
        b"content-length",
    }
)


def items(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """A plain list of (lowercase name, value) pairs.

    h11's `Headers` is a `Sequence` whose iteration goes through
    `Sequence.__iter__` and `__getitem__` per item: a measurable share of the
    hot path. Its backing list is read directly when it is there.
    """
    full = getattr(headers, "_full_items", None)
    if full is not None:
        return [(name, value) for _, name, value in full]
    return list(headers)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lowercased tokens of every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def end_to_end(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    keep_upgrade: bool = False,
    drop: frozenset[bytes] = frozenset(),
) -> tuple[Headers, bytes | None]:
    """Drop hop-by-hop fields; return (kept headers, Content-Length value or None).

    `keep_upgrade` keeps `Upgrade` and a `Connection: upgrade` for a WebSocket
    handshake that is being forwarded. Names in `drop` are removed too (the
    caller sets them anew), so building a request's headers is one pass.
    """
    named = connection_tokens(headers)
    kept: Headers = []
    length: bytes | None = None
    upgrade: bytes | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in named or name in drop:
            if name == b"content-length":
                length = value
            elif name == b"upgrade":
                upgrade = value
            continue
        kept.append((name, value))
    if keep_upgrade and upgrade is not None:
        kept.append((b"connection", b"upgrade"))
        kept.append((b"upgrade", upgrade))
    return kept, length


def get(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def via_has(headers: Sequence[tuple[bytes, bytes]], token: bytes) -> bool:
    """True if any Via entry names `token` as its received-by pseudonym."""
    for name, value in headers:
        if name == b"via":
            for entry in value.split(b","):
                parts = entry.split()
                if len(parts) >= 2 and parts[1] == token:
                    return True
    return False


def append_list(headers: Headers, name: bytes, value: bytes) -> None:
    """Append `value` to the comma list `name`, merging into one field."""
    for i, (n, v) in enumerate(headers):
        if n == name:
            headers[i] = (n, v + b", " + value)
            return
    headers.append((name, value))


def set_default(headers: Headers, name: bytes, value: bytes) -> None:
    for n, _ in headers:
        if n == name:
            return
    headers.append((name, value))


def cse_context(existing: bytes | None, source_service: str) -> bytes:
    """Mesher's `x-cse-context` JSON map, with `x-cse-src-microservice` set to us."""
    context: dict[str, str] = {}
    if existing:
        try:
            parsed = json.loads(existing)
        except (ValueError, RecursionError):
            parsed = None  # not a JSON map we can extend: replace it
        if isinstance(parsed, dict):
            context = {str(k): str(v) for k, v in parsed.items()}
    context["x-cse-src-microservice"] = source_service
    return json.dumps(context, separators=(",", ":")).encode()
