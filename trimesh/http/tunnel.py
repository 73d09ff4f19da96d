"""Byte tunnels after a protocol switch (WebSocket 101), and the handshake check."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Sequence

import attrs
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


@attrs.define(slots=True)
class TunnelStats:
    """What a tunnel moved, and which side ended it."""

    bytes_up: int = 0
    bytes_down: int = 0
    closed_by: str | None = None


async def splice(
    down: Downstream,
    up: trio.SocketStream,
    up_prefix: bytes,
    *,
    idle_timeout: float,
    stall_timeout: float,
    grace: float = 5.0,
) -> TunnelStats:
    """Copy bytes both ways until both directions end; return what moved.

    Each direction ends on its own EOF and passes the half-close on
    (`send_eof`); the other direction then gets `grace` seconds to finish
    (a WebSocket Close reply). A write that stalls for `stall_timeout`, or
    no byte either way for `idle_timeout`, ends the tunnel.
    Resource handling: the caller closes both streams.
    """
    stats = TunnelStats()
    with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as tunnel:

        def moved() -> None:
            if stats.closed_by is None:  # once one side ended, only the grace period counts
                tunnel.deadline = trio.current_time() + idle_timeout

        async def to_upstream() -> None:
            while data := await down.receive_raw():
                moved()
                await _write(up.send_all, data, stall_timeout)
                stats.bytes_up += len(data)
            await up.send_eof()

        async def to_downstream() -> None:
            data = up_prefix
            while True:
                if data:
                    moved()
                    await _write(down.stream.send_all, data, stall_timeout)
                    stats.bytes_down += len(data)
                data = await up.receive_some(READ_SIZE)
                if not data:
                    break
            await down.stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_direction, to_upstream, "client", stats, tunnel, grace)
            nursery.start_soon(_direction, to_downstream, "upstream", stats, tunnel, grace)
    if tunnel.cancelled_caught and stats.closed_by is None:
        stats.closed_by = "idle-timeout"
    return stats


READ_SIZE = 32768


class _Stalled(Exception):
    pass


async def _write(send: Callable[[bytes], Awaitable[None]], data: bytes, stall: float) -> None:
    with trio.move_on_after(stall) as scope:
        await send(data)
    if scope.cancelled_caught:
        raise _Stalled()


async def _direction(
    pump: Callable[[], Awaitable[None]],
    source: str,
    stats: TunnelStats,
    tunnel: trio.CancelScope,
    grace: float,
) -> None:
    try:
        await pump()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _Stalled):
        stats.closed_by = stats.closed_by or "error"
        tunnel.cancel()
        return
    # This direction ended cleanly: the other gets a bounded grace period.
    stats.closed_by = stats.closed_by or source
    tunnel.deadline = min(tunnel.deadline, trio.current_time() + grace)
