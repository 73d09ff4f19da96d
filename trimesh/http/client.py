"""A small HTTP/1.1 client on trio + h11 for control-plane calls (registries).

One request per connection (`Connection: close`): control-plane calls are
rare, and a fresh connection can never be a stale pooled one. Deadlines are
the caller's cancel scopes; nothing here takes a timeout.

Error handling: connect failures, resets and malformed responses raise
`HTTPClientError`. Resource handling: every connection is closed before the
call returns or raises, including on cancellation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

MAX_BODY = 64 * 1024 * 1024


class HTTPClientError(Exception):
    """The request could not be completed (connect, reset or protocol error)."""


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _request_event(
    method: str, host: str, port: int, target: str, headers: Mapping[str, str], body: bytes | None
) -> h11.Request:
    hdrs = [("host", f"{host}:{port}"), ("connection", "close")]
    hdrs += [(k, v) for k, v in headers.items()]
    if body is not None:
        hdrs.append(("content-length", str(len(body))))
    return h11.Request(method=method, target=target, headers=hdrs)


class StreamingResponse:
    """Status and headers of a response whose body is read incrementally."""

    def __init__(self, status: int, headers: Mapping[str, str], reader: AsyncIterator[bytes]):
        self.status = status
        self.headers = headers
        self._reader = reader

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._reader

    async def read_all(self, limit: int = MAX_BODY) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self._reader:
            size += len(chunk)
            if size > limit:
                raise HTTPClientError("response body too large")
            parts.append(chunk)
        return b"".join(parts)


@asynccontextmanager
async def stream(
    method: str,
    host: str,
    port: int,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> AsyncIterator[StreamingResponse]:
    """Send one request and yield its response with a lazily read body."""
    try:
        sock = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise HTTPClientError(f"connect to {host}:{port} failed: {exc}") from exc
    conn = h11.Connection(h11.CLIENT)
    try:
        try:
            data = conn.send(_request_event(method, host, port, target, headers or {}, body))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await sock.send_all(data)
            response = await _next_response(conn, sock)
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise HTTPClientError(f"{method} {target} on {host}:{port}: {exc}") from exc
        headers_out = {k.decode().lower(): v.decode("latin-1") for k, v in response.headers}
        yield StreamingResponse(response.status_code, headers_out, _body(conn, sock))
    finally:
        await trio.aclose_forcefully(sock)


async def _next_response(conn: h11.Connection, sock: trio.SocketStream) -> h11.Response:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await sock.receive_some(65536))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            return event
        raise HTTPClientError(f"unexpected event {event!r}")


async def _body(conn: h11.Connection, sock: trio.SocketStream) -> AsyncIterator[bytes]:
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await sock.receive_some(65536))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise HTTPClientError(f"unexpected event {event!r}")
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise HTTPClientError(f"reading response body: {exc}") from exc


async def request(
    method: str,
    host: str,
    port: int,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    json_body: Any = None,
) -> Response:
    """Send one request and return the whole response."""
    hdrs = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        hdrs.setdefault("content-type", "application/json")
    async with stream(method, host, port, target, headers=hdrs, body=body) as resp:
        data = await resp.read_all()
        return Response(resp.status, resp.headers, data)
