"""Fallback load generator when wrk is absent: one process, selectors, no pipelining.

Usage: python pyload.py PORT TARGET HOST CONNECTIONS SECONDS. Prints one
`BENCH-JSON {...}` line in the same shape as the wrk script. Stdlib only.
Being Python on one core, it tops out at a few ten thousand requests/s, so a
path faster than that is reported at the generator's ceiling, not its own.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import time

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


class Conn:
    __slots__ = ("buf", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.sent_at = 0.0


def _complete(buf: bytes) -> tuple[int, bool] | None:
    """(bytes used by the first full response, is it 2xx), or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    match = _LENGTH.search(buf, 0, end + 2)
    length = int(match[1]) if match else 0
    if len(buf) < end + 4 + length:
        return None
    return end + 4 + length, buf[9:10] == b"2"


def run(port: int, target: str, host: str, n: int, seconds: float) -> dict[str, object]:
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock)
        conns.append(conn)
        sel.register(sock, selectors.EVENT_READ, conn)
    latencies: list[float] = []
    errors = non_2xx = 0
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    for conn in conns:
        conn.sent_at = clock()
        conn.sock.sendall(request)
    while (now := clock()) < deadline:
        for key, _ in sel.select(deadline - now):
            conn = key.data
            data = conn.sock.recv(65536)
            if not data:
                errors += 1
                sel.unregister(conn.sock)
                continue
            conn.buf += data
            while (done := _complete(conn.buf)) is not None:
                used, ok = done
                t = clock()
                latencies.append(t - conn.sent_at)
                non_2xx += not ok
                conn.buf = conn.buf[used:]
                conn.sent_at = t
                conn.sock.sendall(request)
    elapsed = clock() - start
    latencies.sort()

    def pct(p: float) -> int:
        return (
            round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)
            if latencies
            else 0
        )

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "errors": errors,
        "non_2xx": non_2xx,
    }


if __name__ == "__main__":
    port, target, host, n, secs = sys.argv[1:6]
    print("BENCH-JSON " + json.dumps(run(int(port), target, host, int(n), float(secs))))
