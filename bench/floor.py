"""The bench's floor: the least a trio + h11 forward proxy can do per request.

Usage: python -m bench.floor --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT
(or python bench/floor.py ...). Prints the bound port on a line of its own,
then serves until killed.

One task per downstream connection: an h11 SERVER machine downstream and an
h11 CLIENT machine on one kept-alive upstream connection, opened on the first
request to the fixed upstream. The absolute-form target becomes origin-form;
headers pass as they came (h11 regenerates only the framing); bodies pass
with Content-Length or chunked framing either way. Bytes h11 produces are
held until the task is about to wait for input, so a small exchange costs one
write per side, as in trimesh.

Deliberately absent, so the figure is a floor for trimesh's hot path: checks
of any kind, deadlines, routing, pooling, retries, logging, Expect/upgrade/
CONNECT handling. Any error closes both connections of that task.
"""

from __future__ import annotations

import argparse
import functools
import sys

import h11
import trio

RECEIVE_SIZE = 65536
_GONE = (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Leg:
    """One side of the proxy: a stream, its h11 machine, and the bytes not yet written."""

    __slots__ = ("conn", "out", "stream")

    def __init__(self, stream: trio.SocketStream, role: type[h11.SERVER] | type[h11.CLIENT]):
        self.stream = stream
        self.conn = h11.Connection(role)
        self.out = bytearray()

    def put(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.out += data

    async def flush(self) -> None:
        if self.out:
            data = bytes(self.out)
            self.out.clear()
            await self.stream.send_all(data)

    async def next_event(self, other: _Leg | None) -> h11.Event | type[h11.PAUSED]:
        """The next event; before waiting for bytes, write out what `other` holds."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if other is not None:
                await other.flush()
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))


def origin_form(target: bytes) -> bytes:
    """`http://host[:port]/p?q` -> `/p?q`; anything else unchanged."""
    if target[:7].lower() != b"http://":
        return target
    cut = min((i for i in (target.find(b"/", 7), target.find(b"?", 7)) if i >= 0), default=-1)
    if cut < 0:
        return b"/"
    rest = target[cut:]
    return rest if rest[:1] == b"/" else b"/" + rest


class Floor:
    """Serves downstream connections, each relayed to `upstream` by its own task."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream

    async def handle(self, stream: trio.SocketStream) -> None:
        down = _Leg(stream, h11.SERVER)
        up: _Leg | None = None
        try:
            while True:
                request = await down.next_event(None)
                if not isinstance(request, h11.Request):
                    return  # ConnectionClosed, or something this floor does not speak
                if up is None:
                    up = _Leg(await trio.open_tcp_stream(*self.upstream), h11.CLIENT)
                await self._exchange(request, down, up)
                if _reusable(up.conn):
                    up.conn.start_next_cycle()
                else:  # the upstream said close (or closed): open another next time
                    await trio.aclose_forcefully(up.stream)
                    up = None
                if not _reusable(down.conn):
                    return
                down.conn.start_next_cycle()
        except _GONE:
            return
        finally:
            if up is not None:
                await trio.aclose_forcefully(up.stream)
            await trio.aclose_forcefully(stream)

    async def _exchange(self, request: h11.Request, down: _Leg, up: _Leg) -> None:
        """Relay one request upstream, then its response downstream, with their bodies."""
        up.put(
            h11.Request(
                method=request.method,
                target=origin_form(request.target),
                headers=request.headers,
                http_version=request.http_version,
            )
        )
        while True:  # the request body; the head goes out with it or before the next read
            event = await down.next_event(up)
            _forward(event, up)
            if isinstance(event, h11.EndOfMessage):
                break
        await up.flush()
        while True:
            event = await up.next_event(down)
            _forward(event, down)
            if isinstance(event, h11.EndOfMessage):
                break
        await down.flush()


def _forward(event: h11.Event | type[h11.PAUSED], to: _Leg) -> None:
    """Re-emit `event` on `to`'s machine; anything outside a plain exchange ends the task."""
    if isinstance(event, h11.Data):
        to.put(h11.Data(data=event.data))
    elif isinstance(event, h11.EndOfMessage):
        to.put(h11.EndOfMessage(headers=event.headers))
    elif isinstance(event, h11.InformationalResponse | h11.Response):
        to.put(event)
    else:
        raise h11.LocalProtocolError(f"floor does not relay {event!r}")


def _reusable(conn: h11.Connection) -> bool:
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    floor = Floor(upstream)
    async with trio.open_nursery() as nursery:
        serve_tcp = functools.partial(trio.serve_tcp, host=listen[0])
        listeners = await nursery.start(serve_tcp, floor.handle, listen[1])
        print(listeners[0].socket.getsockname()[1], flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    p.add_argument("--upstream", type=_address, required=True, metavar="HOST:PORT")
    args = p.parse_args(argv)
    try:
        trio.run(serve, args.listen, args.upstream)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
