"""Fuzz the response side through the real connection code: any upstream bytes.

Input: a flags byte (bit 0 HEAD instead of GET, bit 1 HTTP/1.0 client, bit 2
the upstream resets instead of closing), then the bytes the upstream writes
after reading the request. A real sidecar (in-process, loopback sockets,
port 0) forwards one request to a scripted upstream that writes them.

Invariant, for any upstream bytes:

1. The sidecar never logs an unhandled error (a bug) and never hangs: the
   exchange ends within a few seconds.
2. The client gets either nothing but a cut (the head may have gone out),
   or a well-formed HTTP/1.1 response head; a response trimesh made itself
   carries `x-trimesh-error` and a 4xx/5xx status.
3. Bytes past the upstream's response never reach a second request: a
   second exchange on the same sidecar gets exactly its own answer.

Run: `python fuzz/fuzz_response.py [libFuzzer flags] [corpus dirs]` (atheris).
"""

from __future__ import annotations

import contextlib
import logging
import sys

if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["trimesh"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import trio

    from trimesh.config import build
    from trimesh.observe.accesslog import AccessLog
    from trimesh.sidecar import Sidecar


class _Bugs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


_BUGS = _Bugs()
logging.getLogger("trimesh").addHandler(_BUGS)
GOOD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood"


async def _upstream(payload: bytes, reset: bool, task_status: trio.TaskStatus[int]) -> None:
    calls = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
            while True:  # later connections are a plain keep-alive server answering GOOD
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                await stream.send_all(payload if first else GOOD)
                if first:
                    break
            if reset:
                import socket
                import struct

                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        out = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


async def _one(flags: int, payload: bytes) -> None:
    async with trio.open_nursery() as nursery:
        up = await nursery.start(_upstream, payload, bool(flags & 4))
        raw = {
            "listen": {"outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "registry": {"type": "static", "services": {"u": [{"address": f"127.0.0.1:{up}"}]}},
            "upstream": {"response_timeout": "1s"},
            "limits": {"body_idle_timeout": "1s"},
            "observe": {"access_log": "off"},
        }
        sidecar = Sidecar(build(raw), access_log=AccessLog(None))
        bound = await nursery.start(sidecar.run)
        port = bound.outbound[1]
        method = b"HEAD" if flags & 1 else b"GET"
        version = b"1.0" if flags & 2 else b"1.1"
        request = b"%s http://u/ HTTP/%s\r\nhost: u\r\nconnection: close\r\n\r\n"
        first = await _exchange(port, request % (method, version))
        if first:
            assert first.startswith(b"HTTP/1.1 "), first[:40]
            status = int(first[9:12])
            if b"x-trimesh-error" in first.split(b"\r\n\r\n", 1)[0]:
                assert status >= 400, first[:80]
        second = await _exchange(
            port, b"GET http://u/2 HTTP/1.1\r\nhost: u\r\nconnection: close\r\n\r\n"
        )
        assert second.endswith(b"\r\n\r\ngood"), second[-80:]
        nursery.cancel_scope.cancel()


def check(data: bytes) -> None:
    """The invariant for one input (also used by tests to replay the corpus)."""
    if not data:
        return
    _BUGS.records.clear()
    trio.run(_guarded, data[0], data[1:4096])
    assert not _BUGS.records, [r.getMessage() for r in _BUGS.records]


async def _guarded(flags: int, payload: bytes) -> None:
    with trio.fail_after(10):
        await _one(flags, payload)


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
