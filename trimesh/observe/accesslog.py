"""One JSON object per request, written as a single line."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

import attrs
import trio


@attrs.define(slots=True)
class AccessRecord:
    """Filled in as a request moves through the pipeline; written once at the end."""

    conn: int
    direction: str
    method: str = ""
    path: str = ""
    service: str | None = None
    instance: str | None = None
    upstream: str | None = None
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None
    started: float = attrs.field(factory=time.monotonic)
    start_wall: float = attrs.field(factory=time.time)


class AccessLog:
    """Writes `AccessRecord`s as JSON lines to a text stream; `None` stream means off.

    Lines are buffered and written in batches (every `FLUSH_EVERY` seconds by
    `flusher`, or when `MAX_PENDING` lines wait): one write syscall per line
    cost more than the rest of the record. `flush` runs on shutdown too.
    """

    FLUSH_EVERY = 0.2
    MAX_PENDING = 512

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self._pending: list[str] = []

    @classmethod
    def open(cls, where: str) -> AccessLog:
        if where == "off":
            return cls(None)
        if where == "stderr":
            return cls(sys.stderr)
        if where == "stdout":
            return cls(sys.stdout)
        return cls(open(where, "a"))

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, rec: AccessRecord) -> None:
        if self._stream is None:
            return
        entry: dict[str, Any] = {
            "ts": round(rec.start_wall, 3),
            "conn": rec.conn,
            "direction": rec.direction,
            "method": rec.method,
            "path": rec.path,
            "service": rec.service,
            "instance": rec.instance,
            "upstream": rec.upstream,
            "status": rec.status,
            "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
            "duration_ms": round((time.monotonic() - rec.started) * 1000, 3),
            "error": rec.error,
        }
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        if len(self._pending) >= self.MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if self._stream is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never break the data path

    async def flusher(self) -> None:
        """Runs in the root nursery: write pending lines periodically.

        The final `flush` is the owner's, on shutdown (`Sidecar.run` does it).
        """
        while True:
            await trio.sleep(self.FLUSH_EVERY)
            self.flush()
