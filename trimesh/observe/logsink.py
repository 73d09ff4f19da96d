"""Log output that can never block the event loop.

A `LogSink` is a bounded queue of lines drained by a daemon writer thread that
does the blocking writes. A reader that stalls (a log shipper, a container
runtime, a full disk) stalls only that thread: producers never wait, and when
the queue is full their lines are dropped and counted. Once the writer gets
through again it reports the loss as one warning on the `trimesh.log` logger,
"N log lines dropped".

stderr and stdout each have one process-wide sink (`std_sink`), so the program
log and an access log on the same stream share a queue and a writer, and
lines never interleave mid-line.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Literal

report_log = logging.getLogger("trimesh.log")

StdName = Literal["stderr", "stdout"]
# Queued characters per sink; the writer holds at most one more batch of this size.
DEFAULT_CAPACITY = 1 << 20
# While lines keep being dropped, the summary warning comes at most this often.
REPORT_EVERY = 1.0


class LogSink:
    """Bounded line queue + writer thread; `put` and `put_lines` never block.

    Lines are given without their trailing newline (a multi-line record, such
    as a traceback, is one line here). The thread starts on the first line.

    Error handling: a write that fails (EPIPE, closed stream) loses its batch,
    counted in `failed`; it is not reported through logging, which may be this
    very sink. Lines refused because the queue was full count in `dropped`.

    Resource handling: `close` stops the thread once the queue is written and
    then runs the `on_close` given at construction (closing an owned fd). If
    the writer is stuck, `close` gives up after its timeout and leaves the
    daemon thread (and the fd it writes to) to process exit.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.dropped = 0
        self.failed = 0
        self._write = write
        self._on_close = on_close
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[str] = []
        self._queued_chars = 0
        self._busy = False  # the writer holds a batch it has not finished writing
        self._closed = False
        self._thread: threading.Thread | None = None
        self._unreported = 0
        self._last_report = 0.0
        self._writes = 0  # batches the writer finished (written or failed)
        self._stuck_at = -1  # `_writes` when a flush last timed out

    def __repr__(self) -> str:
        return (
            f"<LogSink {self.name} queued={len(self._queue)} busy={self._busy} "
            f"dropped={self.dropped} failed={self.failed}>"
        )

    @classmethod
    def to_fd(
        cls, fd: int, *, name: str, owned: bool = False, capacity: int = DEFAULT_CAPACITY
    ) -> LogSink:
        """Write to a file descriptor with `os.write` (never through a Python buffer)."""
        on_close = (lambda: os.close(fd)) if owned else None
        write = lambda text: _write_fd(fd, text)  # noqa: E731
        return cls(write, name=name, capacity=capacity, on_close=on_close)

    @classmethod
    def to_file(cls, path: str) -> LogSink:
        """Append to `path` (created if missing); the sink owns the descriptor."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return cls.to_fd(fd, name=path, owned=True)

    @classmethod
    def to_stream(cls, stream: IO[str], *, name: str) -> LogSink:
        """Write to a text stream (tests use `io.StringIO`); the stream stays open."""

        def write(text: str) -> None:
            stream.write(text)
            stream.flush()

        return cls(write, name=name)

    def put(self, line: str) -> bool:
        """Queue one line; False (and counted in `dropped`) if the queue is full."""
        with self._cond:
            if self._closed or self._queued_chars + len(line) > self.capacity:
                self._drop(1)
                return False
            self._queue.append(line)
            self._queued_chars += len(line)
            self._wake()
        return True

    def put_lines(self, lines: list[str]) -> int:
        """Queue lines in order until one does not fit; returns how many were taken."""
        size = sum(map(len, lines))
        with self._cond:
            room = 0 if self._closed else self.capacity - self._queued_chars
            taken = lines
            if size > room:
                taken, size = _fitting(lines, room)
                self._drop(len(lines) - len(taken))
            if taken:
                self._queue.extend(taken)
                self._queued_chars += size
                self._wake()
        return len(taken)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for everything queued to be written; True if it was.

        Blocks the calling thread: call it off the event loop, or where a
        bounded stall is acceptable (the last step of shutdown, tests). Once a
        flush timed out, later ones return False at once until the writer
        finishes a write: shutdown pays for a stuck stream only once.
        """
        with self._cond:
            if self._stuck_at == self._writes and (self._queue or self._busy):
                return False
            writes = self._writes
        if self.wait_written(timeout):
            return True
        with self._cond:
            self._stuck_at = writes if writes == self._writes else -1
        return False

    def wait_written(self, timeout: float) -> bool:
        """Like `flush` but always waits its full `timeout` (for callers polling in slices)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float) -> bool:
        """Flush (bounded), stop the writer and release the target; True if all was written."""
        flushed = self.flush(timeout)
        with self._cond:
            if self._closed:
                return flushed
            self._closed = True
            self._cond.notify_all()
            # Checked under the lock that set `_closed`: the writer takes no batch after this.
            idle = not self._queue and not self._busy
        if not idle:
            return False  # the writer may be inside a write: leave the target alone
        if self._on_close is not None:
            self._on_close()
        return flushed

    @property
    def alive(self) -> bool:
        """False once the writer thread has ended (after `close`)."""
        return self._thread is None or self._thread.is_alive()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"trimesh-log-{self.name}", daemon=True
            )
            self._thread.start()
        elif not self._busy:
            self._cond.notify_all()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._write("\n".join(batch) + "\n")
            except Exception:  # any failure of the target loses only this batch
                with self._cond:
                    self.failed += len(batch)
            with self._cond:
                self._writes += 1
            self._maybe_report()

    def _next_batch(self) -> list[str] | None:
        with self._cond:
            self._busy = False
            while not self._queue:
                self._cond.notify_all()  # flushers wait for "queue empty and not busy"
                if self._closed:
                    return None
                self._cond.wait()
            batch, self._queue = self._queue, []
            self._queued_chars = 0
            self._busy = True
            return batch

    def _maybe_report(self) -> None:
        now = time.monotonic()
        with self._cond:
            count = self._unreported
            if not count or (self._queue and now - self._last_report < REPORT_EVERY):
                return
            self._unreported = 0
            self._last_report = now
        # Outside the lock: the program log may be this very sink.
        report_log.warning("%d log lines dropped: %s output was blocked", count, self.name)


def _fitting(lines: list[str], room: int) -> tuple[list[str], int]:
    """The longest prefix of `lines` within `room` characters, and its size."""
    size = 0
    for i, line in enumerate(lines):
        if size + len(line) > room:
            return lines[:i], size
        size += len(line)
    return lines, size


def _write_fd(fd: int, text: str) -> None:
    view = memoryview(text.encode("utf-8", "backslashreplace"))
    while view:
        view = view[os.write(fd, view) :]


class SinkHandler(logging.Handler):
    """A logging handler whose `emit` formats the record and queues it, never blocking.

    Formatting happens in the caller's thread, so the line shows the record as
    it was when logged. Records refused by a full sink count in `dropped`.
    """

    def __init__(self, sink: LogSink, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.sink = sink
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's own contract for a bad record
            self.handleError(record)
            return
        if not self.sink.put(line):
            self.dropped += 1


_std: dict[str, LogSink] = {}
_std_lock = threading.Lock()


def std_sink(name: StdName) -> LogSink:
    """The one process-wide sink for stderr or stdout."""
    with _std_lock:
        sink = _std.get(name)
        if sink is None:
            sink = _std[name] = _open_std(name)
        return sink


def _open_std(name: StdName) -> LogSink:
    stream: IO[str] = sys.stderr if name == "stderr" else sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return LogSink.to_stream(stream, name=name)  # replaced by a non-file object
    stream.flush()  # what Python buffered so far goes out before our lines
    return LogSink.to_fd(fd, name=name)


def flush_std_sinks(timeout: float) -> bool:
    """Flush the stderr/stdout sinks within one shared deadline; True if all was written."""
    deadline = time.monotonic() + timeout
    with _std_lock:
        sinks = list(_std.values())
    return all([s.flush(max(0.0, deadline - time.monotonic())) for s in sinks])
