"""Commit: write the chosen response head downstream and relay its body.

Bytes go out whenever the upstream has nothing more ready, so a streamed
response (SSE, long-poll, progress output) reaches the client event by event,
while a complete small response still leaves in one write. After the head
went out, a failure can only cut the response short: the client sees a
truncated message, never a clean end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import h11
import trio

from trimesh.errors import ProxyError, UpstreamProtocol, UpstreamTimeout
from trimesh.http import headers as hh
from trimesh.http import stream as hs
from trimesh.http.downstream import Downstream
from trimesh.http.pool import UpstreamConnection
from trimesh.observe.accesslog import AccessRecord

if TYPE_CHECKING:
    from trimesh.http.exchange import Policy

# One upstream read; with `out`, what a response may hold in memory for a slow client.
READ_SIZE = 32768


@attrs.frozen
class Tunnel:
    """A switched connection (WebSocket 101): the connection driver splices it."""

    upstream: hs.ByteStream
    prefix: bytes


def response_event(
    resp: h11.Response | h11.InformationalResponse,
    policy: Policy,
    *,
    close: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[h11.Response | h11.InformationalResponse, int | None, int | None]:
    """The head we send for an upstream head: hop-by-hop fields dropped, Via added.

    Returns (event, Content-Length or None, the upstream's Keep-Alive timeout or None).
    """
    kept, length, keepalive = hh.response_headers(
        hh.items(resp.headers),
        b"1.1 " + policy.via_token,
        # Underscore names are dropped on the way to a backend (requests) only.
        allow_underscores=True,
        close=close,
    )
    if extra:
        kept.extend(extra)
    event = type(resp)(status_code=resp.status_code, headers=kept, reason=resp.reason, _parsed=True)
    return event, length, keepalive


def switch_event(resp: h11.InformationalResponse, policy: Policy) -> h11.InformationalResponse:
    """The 101 we send: like any head, but `Upgrade` and `Connection: upgrade` stay."""
    kept, _ = hh.end_to_end(hh.items(resp.headers), keep_upgrade=True, allow_underscores=True)
    hh.append_list(kept, b"via", b"1.1 " + policy.via_token)
    return h11.InformationalResponse(status_code=101, headers=kept, reason=resp.reason)


async def commit(
    down: Downstream,
    conn: UpstreamConnection,
    head: h11.Response,
    policy: Policy,
    rec: AccessRecord,
    body_sent: Callable[[], bool],
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bool:
    """Relay the response; True if the downstream connection may carry another request.

    Error handling: a failure before the first write propagates (the caller
    still answers it); after it, the response is cut and False returned.
    """
    close = not body_sent() or policy.draining()
    event, length, keepalive = response_event(head, policy, close=close, extra=extra)
    conn.keepalive_hint(keepalive)
    out = bytearray(down.h11.send(event))
    rec.status = head.status_code
    written = False
    try:
        while True:
            try:
                ev = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocol(f"malformed response body: {exc}") from exc
            if ev is h11.NEED_DATA:
                if out:
                    await down.send(out)  # no copy: cleared only after the write
                    out.clear()
                    written = True
                await _read_more(conn, policy)
            elif type(ev) is h11.Data:
                rec.bytes_out += len(ev.data)
                out += down.h11.send(ev)
            elif type(ev) is h11.EndOfMessage:
                out += _end(down, ev, length)
                await down.send(out)
                return body_sent() and down.h11.our_state is h11.DONE and not close
            else:
                raise UpstreamProtocol(f"unexpected response event {ev!r}")
    except h11.LocalProtocolError as exc:
        if not written:
            raise UpstreamProtocol(f"cannot relay this response: {exc}") from exc
        _cut(down, rec, UpstreamProtocol(str(exc)), length)
        return False
    except ProxyError as exc:
        if not written:
            raise
        _cut(down, rec, exc, length)
        return False


def _end(down: Downstream, eom: h11.EndOfMessage, length: int | None) -> bytes:
    """The end of the body; trailers only where chunked framing can carry them."""
    trailers = hh.filter_trailers(hh.items(eom.headers)) if eom.headers else []
    if trailers and length is None and down.h11.their_http_version == b"1.1":
        try:
            return down.h11.send(h11.EndOfMessage(headers=trailers))
        except h11.LocalProtocolError:
            pass  # e.g. a HEAD answer or a 304: no body, so no trailers either
    return down.h11.send(h11.EndOfMessage())


async def _read_more(conn: UpstreamConnection, policy: Policy) -> None:
    """Feed h11 the next upstream bytes, within the body idle timeout."""
    with trio.move_on_after(policy.body_idle_timeout):
        try:
            data = await conn.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamProtocol("upstream reset the connection mid-response") from exc
        conn.h11.receive_data(data)
        return
    raise UpstreamTimeout("response body stalled")


def _cut(down: Downstream, rec: AccessRecord, exc: ProxyError, length: int | None) -> None:
    """Make the client see a truncated response: FIN inside a framed body, else RST."""
    rec.error = exc.kind
    down.cut = True
    if length is None and down.h11.their_http_version != b"1.1":
        # Close-delimited to an HTTP/1.0 client: a FIN would read as a clean end.
        hs.abort(down.stream)
