"""Byte tunnels after a protocol switch (WebSocket 101), and the handshake check."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Sequence

import trio

from trimesh.http.downstream import Downstream
from trimesh.http.headers import connection_tokens, get

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_accept(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value a server must send for `key` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _WS_GUID).digest())


def is_websocket_request(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    upgrade = get(headers, b"upgrade")
    return (
        upgrade is not None
        and upgrade.strip().lower() == b"websocket"
        and b"upgrade" in connection_tokens(headers)
        and get(headers, b"sec-websocket-key") is not None
    )


def valid_websocket_switch(
    request: Sequence[tuple[bytes, bytes]], response: Sequence[tuple[bytes, bytes]]
) -> bool:
    """A 101 is accepted only with `Upgrade: websocket` and the right accept key."""
    key = get(request, b"sec-websocket-key")
    upgrade = get(response, b"upgrade")
    accept = get(response, b"sec-websocket-accept")
    return (
        key is not None
        and upgrade is not None
        and upgrade.strip().lower() == b"websocket"
        and accept is not None
        and accept.strip() == websocket_accept(key)
    )


async def splice(down: Downstream, up: trio.SocketStream, up_prefix: bytes) -> int:
    """Copy bytes both ways until both sides close; return bytes moved.

    When one side sends EOF we half-close the other and give the remaining
    direction `LINGER` seconds to finish (a WebSocket close frame in reply).
    Resource handling: the caller closes both streams.
    """
    moved = 0

    async def to_upstream() -> None:
        nonlocal moved
        while data := await down.receive_raw():
            moved += len(data)
            await up.send_all(data)
        await up.send_eof()

    async def to_downstream() -> None:
        nonlocal moved
        if up_prefix:
            await down.stream.send_all(up_prefix)
        while data := await up.receive_some(65536):
            moved += len(data)
            await down.stream.send_all(data)
        await down.stream.send_eof()

    async with trio.open_nursery() as nursery:
        for pump in (to_upstream, to_downstream):
            nursery.start_soon(_run_pump, pump, nursery.cancel_scope)
    return moved


LINGER = 5.0


async def _run_pump(pump: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    try:
        await pump()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        scope.cancel()
        return
    # This direction ended cleanly: the other gets a bounded grace period.
    scope.deadline = min(scope.deadline, trio.current_time() + LINGER)
