"""The one serializer for responses trimesh makes itself (error answers, overload).

Every synthetic response is built by `event()` and serialized by h11: on a
live connection through its own machine, and before or outside one (a
request h11 never accepted, a refused connection) through a throwaway
machine, so both paths produce the same bytes.
"""

from __future__ import annotations

import h11

from trimesh.errors import ProxyError, Rescue, rescue

REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}
_PROBE = b"GET / HTTP/1.1\r\nhost: trimesh\r\n\r\n"


def event(answer: Rescue, *, close: bool) -> h11.Response:
    headers = answer.headers()
    if close:
        headers.append((b"connection", b"close"))
    reason = REASONS.get(answer.status, b"")
    return h11.Response(status_code=answer.status, headers=headers, reason=reason)


def send(conn: h11.Connection, answer: Rescue, *, close: bool, head_only: bool) -> bytes:
    """The whole answer through `conn` (an h11 SERVER machine in SEND_RESPONSE)."""
    data = conn.send(event(answer, close=close))
    if not head_only:
        data += conn.send(h11.Data(data=answer.body))
    return data + conn.send(h11.EndOfMessage())


def render(error: ProxyError) -> bytes:
    """The bytes of a closing answer to `error`, for a connection without a usable machine."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_PROBE)
    conn.next_event()
    return send(conn, rescue(error), close=True, head_only=False)
