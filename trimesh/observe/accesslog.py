"""One JSON object per request, written as a single line."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

import attrs


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
    """Writes `AccessRecord`s to a text stream; `None` stream means off."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    @classmethod
    def open(cls, where: str) -> AccessLog:
        if where == "off":
            return cls(None)
        if where == "stderr":
            return cls(sys.stderr)
        if where == "stdout":
            return cls(sys.stdout)
        return cls(open(where, "a", buffering=1))

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
        self._stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
