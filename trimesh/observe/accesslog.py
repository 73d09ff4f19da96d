"""One JSON object per request, written as a single line, never blocking the loop."""

from __future__ import annotations

import json.encoder
import time
from typing import IO

import attrs
import trio

from trimesh.observe.logsink import LogSink, std_sink

# The C string encoder json.dumps uses: quotes and escapes in one call.
_quote = json.encoder.encode_basestring_ascii
# How long `flush` waits for the access log to reach its stream.
FLUSH_TIMEOUT = 1.0
# `aclose` waits in slices this long, so an abandoned wait ends soon after.
_WAIT_SLICE = 0.1


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
    # Tunnels (WebSocket, CONNECT): "client", "upstream", "idle-timeout" or "error".
    closed_by: str | None = None
    # Attempts made again after a failure or a retryable status (`retry`).
    retries: int = 0
    # Extra copies sent to other instances while an attempt was slow (`hedge`).
    hedges: int = 0
    # The calling service (ours when outbound; x-cse-context's when inbound).
    source: str | None = None
    # The request's trace and its span here (hex), when tracing is on.
    trace_id: str | None = None
    span_id: str | None = None
    # Seconds from the first byte to the end, set when the request ends.
    duration: float | None = None
    started: float = attrs.field(factory=time.monotonic)
    start_wall: float = attrs.field(factory=time.time)


def format_record(rec: AccessRecord) -> str:
    """The JSON line for `rec` (no newline); `duration_ms` is measured now.

    Hand-built rather than `json.dumps` of a dict: this runs once per request
    and costs about a third as much; strings still go through json's encoder.
    """
    tail = "}" if rec.closed_by is None else f',"closed_by":{_quote(rec.closed_by)}}}'
    if rec.retries:
        tail = f',"retries":{rec.retries:d}{tail}'
    if rec.hedges:
        tail = f',"hedges":{rec.hedges:d}{tail}'
    if rec.trace_id is not None:
        tail = f',"trace_id":"{rec.trace_id}","span_id":"{rec.span_id}"{tail}'
    return (
        f'{{"ts":{rec.start_wall:.3f},"conn":{rec.conn:d},"direction":{_quote(rec.direction)},'
        f'"method":{_quote(rec.method)},"path":{_quote(rec.path)},'
        f'"service":{_opt(rec.service)},"instance":{_opt(rec.instance)},'
        f'"upstream":{_opt(rec.upstream)},'
        f'"status":{"null" if rec.status is None else format(rec.status, "d")},'
        f'"bytes_in":{rec.bytes_in:d},"bytes_out":{rec.bytes_out:d},'
        f'"duration_ms":{_duration(rec) * 1000:.3f},'
        f'"error":{_opt(rec.error)}{tail}'
    )


def _duration(rec: AccessRecord) -> float:
    return time.monotonic() - rec.started if rec.duration is None else rec.duration


def _opt(value: str | None) -> str:
    return "null" if value is None else _quote(value)


class AccessLog:
    """Writes `AccessRecord`s as JSON lines through a `LogSink`; `None` means off.

    `write` only formats and appends to a batch on the event loop; a batch
    goes to the sink every `BATCH` lines or every `FLUSH_EVERY` seconds
    (`flusher`). The sink's thread does the blocking writes; lines it cannot
    queue are dropped and counted in `dropped` (see `LogSink`).

    Resource handling: `AccessLog(stream)` and `AccessLog.open(path)` own their
    sink and `aclose`/`flush` is theirs to call; the stderr/stdout sinks are
    shared with the program log and are only flushed here, never closed.
    """

    FLUSH_EVERY = 0.2
    BATCH = 64

    def __init__(self, stream: IO[str] | LogSink | None, *, owned: bool = True) -> None:
        if stream is None or isinstance(stream, LogSink):
            self._sink = stream
        else:
            self._sink = LogSink.to_stream(stream, name="access log")
        self._owned = owned
        self._pending: list[str] = []
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<AccessLog {self._sink!r} pending={len(self._pending)} dropped={self.dropped}>"

    @classmethod
    def open(cls, where: str) -> AccessLog:
        """From the config value: "stderr", "stdout", "off", or a file path (appended to)."""
        if where == "off":
            return cls(None)
        if where in ("stderr", "stdout"):
            return cls(std_sink("stderr" if where == "stderr" else "stdout"), owned=False)
        return cls(LogSink.to_file(where))

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def write(self, rec: AccessRecord) -> None:
        if self._sink is None:
            return
        self._pending.append(format_record(rec))
        if len(self._pending) >= self.BATCH:
            self._hand_off(self._sink)

    def _hand_off(self, sink: LogSink) -> None:
        lines, self._pending = self._pending, []
        self.dropped += len(lines) - sink.put_lines(lines)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Hand pending lines to the sink and wait up to `timeout` s until they are written.

        Blocks the caller (bounded): for tests and the last step of shutdown.
        True if everything reached the stream.
        """
        if self._sink is None:
            return True
        self._hand_off(self._sink)
        return self._sink.flush(timeout)

    async def aclose(self) -> None:
        """Hand off pending lines and wait, off the loop, until the writer wrote them.

        The caller bounds the wait with a cancel scope (a stuck stream would
        hold it forever); an owned sink is then closed, a shared one kept.
        """
        sink, self._sink = self._sink, None
        if sink is None:
            return
        self._hand_off(sink)
        while sink.alive and not await trio.to_thread.run_sync(
            sink.wait_written, _WAIT_SLICE, abandon_on_cancel=True
        ):
            pass
        if self._owned:
            sink.close(0)

    async def flusher(self) -> None:
        """Runs in the root nursery: hand pending lines to the sink periodically."""
        while True:
            await trio.sleep(self.FLUSH_EVERY)
            if self._sink is not None and self._pending:
                self._hand_off(self._sink)
