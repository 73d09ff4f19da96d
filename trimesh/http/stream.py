"""The one module that touches raw sockets: open, inspect and abort byte streams.

The drivers see `trio.SocketStream` only as a byte stream (`send_all`,
`receive_some`, `send_eof`, `aclose`); everything that needs the socket
object itself lives here, so a TLS stream can slot in later in one place.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct

import trio

Endpoint = tuple[str, int]
ByteStream = trio.SocketStream
_ABORT = struct.pack("ii", 1, 0)


async def open_tcp(endpoint: Endpoint) -> ByteStream:
    """Connect to `endpoint`. Raises `OSError`; the caller owns the deadline."""
    return await trio.open_tcp_stream(*endpoint)


def peer_host(stream: ByteStream) -> str:
    """The peer's address (the identity that travels with a request)."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "unknown"


def local_address(listener: trio.SocketListener) -> Endpoint:
    host, port = listener.socket.getsockname()[:2]
    return str(host), int(port)


def has_input(stream: ByteStream) -> bool:
    """True if the socket is readable right now: bytes, EOF or a reset waiting."""
    try:
        poller = select.poll()
        poller.register(stream.socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def abort(stream: ByteStream) -> None:
    """Make the coming close send RST: the peer must see a cut, never a clean end."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)


def refused(exc: BaseException) -> bool:
    """True if `exc` (or what it wraps) says nothing listens there: no byte was sent."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            return True
        if isinstance(exc, OSError) and "all attempts" in str(exc):
            # trio's happy-eyeballs wraps each failure; look at the causes.
            inner = exc.__cause__
            if isinstance(inner, BaseExceptionGroup):
                return all(refused(e) for e in inner.exceptions)
        exc = exc.__cause__  # type: ignore[assignment]
    return False
