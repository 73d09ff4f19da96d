"""Fallback upstream when nginx is absent: one thread, selectors, a fixed 100-byte answer.

Usage: python pyserver.py PORT. Serves GET/HEAD without bodies, keep-alive,
pipelining tolerated. Stdlib only, so it runs from any interpreter.
"""

from __future__ import annotations

import selectors
import socket
import sys

BODY = b"trimesh-bench " + b"x" * 85 + b"\n"
# The same header set nginx's `return 200` sends, so trimesh does the same work either way.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: bench-pyserver\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
    % (len(BODY), BODY)
)


def serve(port: int) -> None:
    sel = selectors.DefaultSelector()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                _accept(listener, sel, pending)
            else:
                _read(key.fileobj, sel, pending)  # type: ignore[arg-type]


def _accept(
    listener: socket.socket, sel: selectors.BaseSelector, pending: dict[socket.socket, bytes]
) -> None:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending[conn] = b""
    sel.register(conn, selectors.EVENT_READ, True)


def _read(
    conn: socket.socket, sel: selectors.BaseSelector, pending: dict[socket.socket, bytes]
) -> None:
    try:
        data = conn.recv(65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data = b""
    if not data:
        sel.unregister(conn)
        conn.close()
        del pending[conn]
        return
    buf = pending[conn] + data
    count = buf.count(b"\r\n\r\n")
    pending[conn] = buf[buf.rfind(b"\r\n\r\n") + 4 :] if count else buf
    if count:
        # Responses are tiny; a blocking send on a loopback socket with room is fine.
        conn.setblocking(True)
        conn.sendall(RESPONSE * count)
        conn.setblocking(False)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
