"""What to do with one request: where it goes and with which headers.

A `Router` (outbound or inbound) turns an h11 request into a `Plan`; the
exchange code only executes plans. Pure and synchronous.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import h11

from trimesh.http import headers as hh
from trimesh.http.guard import Framing
from trimesh.http.pool import Endpoint
from trimesh.http.target import Target


@attrs.define(slots=True)
class Plan:
    endpoint: Endpoint
    target: bytes
    headers: hh.Headers
    service: str | None = None
    instance: str | None = None
    websocket: bool = False


class Router(Protocol):
    """Decides where a request goes. Raises `ProxyError` subclasses."""

    direction: str
    via_token: bytes

    def plan(
        self, request: h11.Request, framing: Framing, peer: str, fixed: Target | None
    ) -> Plan: ...


def forward_headers(
    received: hh.Headers,
    framing: Framing,
    *,
    websocket: bool,
    peer: str,
    via_token: bytes,
    drop: frozenset[bytes] = frozenset(),
) -> hh.Headers:
    """End-to-end request headers plus regenerated framing, X-Forwarded-For and Via."""
    kept, length = hh.end_to_end(received, keep_upgrade=websocket, drop=drop)
    if framing.chunked:
        kept.append((b"transfer-encoding", b"chunked"))
    elif length is not None:
        kept.append((b"content-length", b"%d" % (framing.content_length or 0)))
    hh.append_list(kept, b"x-forwarded-for", peer.encode())
    hh.append_list(kept, b"via", b"1.1 " + via_token)
    return kept
