"""Slow readers against a real `trimesh serve`: bounded per connection, no ratchet.

Each round opens many clients that ask for a large response and never read
it, waits until the sidecar holds what it will hold for them, then drops
them all. What one connection may cost is bounded (our buffers are at most
64 KiB per direction beyond the kernel's), and repeated rounds must not move
the resident size up: memory freed when the readers leave is reused.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import trio

from tests.test_process import base_config, spawn

READERS = 150
ROUNDS = 4
BODY = b"x" * (4 * 1024 * 1024)


class BigUpstream:
    """Answers every GET with a 4 MiB body; counts who is being served."""

    def __init__(self) -> None:
        self.serving = 0
        self.served = 0
        self.changed = trio.Condition()

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            await self._bump(+1)
            try:
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY))
                await stream.send_all(BODY)
            finally:
                await self._bump(-1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _bump(self, by: int) -> None:
        self.serving += by
        async with self.changed:
            self.changed.notify_all()

    async def wait(self, predicate: object) -> None:
        async with self.changed:
            while not predicate():  # type: ignore[operator]
                await self.changed.wait()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])  # type: ignore[index]


async def settled_rss(pid: int) -> int:
    """The resident size once it stops moving (polled under the caller's deadline)."""
    last = -1
    while (now := rss_kib(pid)) != last:
        last = now
        await trio.sleep(0.2)
    return now


async def slow_reader(port: int, opened: list[trio.SocketStream]) -> None:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"GET http://big/ HTTP/1.1\r\nHost: big\r\n\r\n")
    opened.append(stream)


@pytest.mark.slow
async def test_slow_readers_are_bounded_and_do_not_ratchet(
    nursery: trio.Nursery, tmp_path: Path, cleanup: list[trio.Process]
) -> None:
    big = BigUpstream()
    listeners = await nursery.start(trio.serve_tcp, big.handle, 0)
    port = listeners[0].socket.getsockname()[1]
    proc = await spawn(nursery, tmp_path, base_config(big=port))
    cleanup.append(proc.process)
    pid = proc.process.pid
    with trio.fail_after(120):
        baseline = await settled_rss(pid)
        after: list[int] = []
        held: list[int] = []
        for _ in range(ROUNDS):
            opened: list[trio.SocketStream] = []
            async with trio.open_nursery() as clients:
                for _ in range(READERS):
                    clients.start_soon(slow_reader, proc.outbound, opened)
            await big.wait(lambda: big.serving == READERS)
            held.append(await settled_rss(pid))
            for stream in opened:
                await stream.aclose()
            await big.wait(lambda: big.serving == 0)
            after.append(await settled_rss(pid))
    per_reader = (held[0] - baseline) / READERS

    assert per_reader < 110, f"{per_reader:.0f} KiB per slow reader"
    assert after[-1] - after[0] < 4096, f"RSS ratchets: {after}"
    assert held[-1] - held[0] < 4096, f"RSS ratchets: {held}"
