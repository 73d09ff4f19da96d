"""An upstream instance that answers every request after a fixed delay: uneven speeds.

Usage: python delayserver.py PORT DELAY_MS. One thread, selectors and a timer
heap; keep-alive, one request at a time per connection (what the load
generators send). Stdlib only, so it runs from any interpreter. `GET /__count`
answers at once with "<received> <answered>" (requests so far), which the
hedging scenario reads.
"""

from __future__ import annotations

import heapq
import selectors
import signal
import socket
import sys
import time

# The same fixed 100-byte answer as the fast upstream, and the same way of accepting.
from pyserver import RESPONSE, _accept


class DelayServer:
    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.buffers: dict[socket.socket, bytes] = {}
        self.due: list[tuple[float, int, socket.socket]] = []
        self.seq = 0
        self.received = 0
        self.answered = 0

    def serve(self) -> None:
        while True:
            timeout = None if not self.due else max(self.due[0][0] - time.monotonic(), 0)
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    _accept(self.listener, self.sel, self.buffers)
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            self._answer_due()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        *heads, self.buffers[conn] = (self.buffers[conn] + data).split(b"\r\n\r\n")
        for head in heads:
            if head.startswith(b"GET /__count "):
                body = b"%d %d\n" % (self.received, self.answered)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                continue
            self.received += 1
            self.seq += 1
            heapq.heappush(self.due, (time.monotonic() + self.delay, self.seq, conn))

    def _answer_due(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, _, conn = heapq.heappop(self.due)
            if conn not in self.buffers:
                continue  # the proxy gave up on it (a hedge won elsewhere)
            try:
                conn.setblocking(True)
                conn.sendall(RESPONSE)
                conn.setblocking(False)
                self.answered += 1
            except OSError:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self.buffers:
            self.sel.unregister(conn)
            del self.buffers[conn]
        conn.close()


def main() -> None:
    server = DelayServer(int(sys.argv[1]), float(sys.argv[2]) / 1000)

    def report(*_: object) -> None:
        print(f"received {server.received} answered {server.answered}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    server.serve()


if __name__ == "__main__":
    main()
