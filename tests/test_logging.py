"""Logging never blocks: bounded sinks drop and count, and a stuck stderr freezes nothing."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import trio
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.servers import Upstream
from trimesh.observe.accesslog import AccessLog, AccessRecord, format_record
from trimesh.observe.logsink import LogSink, SinkHandler


class Gate:
    """A write target that blocks until opened, like a pipe whose reader stalled."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.out: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        assert self.opened.wait(10), "gate never opened"
        self.out.append(text)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.opened.set()  # never leave a writer thread parked


def test_a_full_sink_drops_counts_and_reports_once_it_catches_up(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    sink = LogSink(gate.write, name="test", capacity=10)
    assert sink.put("aaaa")
    assert gate.entered.wait(5)  # the writer holds "aaaa" and is stuck in write
    assert sink.put("bbbb") and sink.put("cccc")
    assert not sink.put("dddd")  # 12 characters would not fit in 10
    assert sink.put_lines(["e", "f", "g"]) == 2  # order kept: the tail is dropped
    assert sink.dropped == 2
    assert not sink.flush(0.05)  # bounded, while stuck
    started = time.monotonic()
    assert not sink.flush(10)  # still the same stuck write: no second wait
    assert time.monotonic() - started < 1
    gate.opened.set()
    assert sink.wait_written(5)  # (flush would still answer "stuck" until a write ends)
    assert "".join(gate.out) == "aaaa\nbbbb\ncccc\ne\nf\n"
    reports = [r.getMessage() for r in caplog.records if r.name == "trimesh.log"]
    assert reports == ["2 log lines dropped: test output was blocked"]
    assert sink.close(1)


def test_close_with_a_stuck_writer_gives_up_and_leaves_the_target_open(gate: Gate) -> None:
    closed: list[bool] = []
    sink = LogSink(gate.write, name="test", on_close=lambda: closed.append(True))
    sink.put("line")
    assert gate.entered.wait(5)
    started = time.monotonic()
    assert not sink.close(0.05)
    assert time.monotonic() - started < 1
    assert closed == []  # the writer may still be inside write()
    assert not sink.put("after close")
    gate.opened.set()


def test_a_failing_target_costs_only_its_batch() -> None:
    def broken(text: str) -> None:
        raise BrokenPipeError

    sink = LogSink(broken, name="test")
    sink.put("x")
    assert sink.flush(5)
    assert (sink.failed, sink.dropped) == (1, 0)


def test_the_logging_handler_never_blocks_and_counts_refusals(gate: Gate) -> None:
    handler = SinkHandler(LogSink(gate.write, name="test", capacity=100))
    logger = logging.getLogger("tests.sinkhandler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("first")
        assert gate.entered.wait(5)
        started = time.monotonic()
        for i in range(1000):
            logger.warning("line %d of a stuck log", i)
        assert time.monotonic() - started < 1
        assert handler.dropped == handler.sink.dropped > 900
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    gate.opened.set()
    assert handler.sink.flush(5)
    assert gate.out[0] == "first\n"


async def test_a_real_pipe_nobody_reads(nursery: trio.Nursery) -> None:
    """Lines past the pipe and the queue are dropped; every accepted line arrives whole."""
    read_fd, write_fd = os.pipe()
    sink = LogSink.to_fd(write_fd, name="pipe", capacity=8192, owned=True)
    handler = SinkHandler(sink)
    report = logging.getLogger("trimesh.log")
    report.addHandler(handler)  # as in production: the summary goes to the same stream
    line = "x" * 99
    try:
        started = time.monotonic()
        accepted = sum(sink.put(line) for _ in range(5000))  # 500 kB into a 64 KiB pipe
        assert time.monotonic() - started < 1
        assert sink.dropped == 5000 - accepted > 0
        received: list[bytes] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as reading:
                reading.start_soon(_read_fd, read_fd, received)
                # close() writes the rest (and the drop report), then closes the pipe.
                assert await trio.to_thread.run_sync(sink.close, 5.0)
    finally:
        report.removeHandler(handler)
    lines = b"".join(received).decode().splitlines()
    assert lines.count(line) == accepted
    reports = [r for r in lines if r.endswith(" log lines dropped: pipe output was blocked")]
    assert sum(int(r.split()[0]) for r in reports) == sink.dropped  # each drop told once
    assert len(lines) == accepted + len(reports)


async def _read_fd(fd: int, into: list[bytes]) -> None:
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some(65536):
            into.append(chunk)


def _reference(rec: AccessRecord) -> dict[str, object]:
    """The fields and values json.dumps wrote before format_record."""
    return {
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
        "error": rec.error,
    }


texts = st.text(max_size=30)


@given(
    method=texts,
    path=texts,
    service=st.none() | texts,
    status=st.none() | st.integers(100, 599),
    error=st.none() | texts,
    closed_by=st.none() | st.sampled_from(["client", "upstream", "idle-timeout", "error"]),
    size=st.integers(0, 1 << 40),
)
def test_format_record_is_the_json_of_the_record(
    method: str,
    path: str,
    service: str | None,
    status: int | None,
    error: str | None,
    closed_by: str | None,
    size: int,
) -> None:
    rec = AccessRecord(conn=7, direction="outbound", method=method, path=path, service=service)
    rec.status, rec.error, rec.closed_by, rec.bytes_out = status, error, closed_by, size
    line = format_record(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("duration_ms") >= 0
    assert entry.pop("closed_by", None) == closed_by  # only written when set
    assert entry == _reference(rec)


def test_access_log_lines_appear_after_flush_and_batches_go_on_their_own() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.write(AccessRecord(conn=1, direction="inbound", method="GET", path="/a"))
    assert out.getvalue() == ""  # batched on the loop
    assert log.flush()
    assert json.loads(out.getvalue())["path"] == "/a"
    for i in range(AccessLog.BATCH):
        log.write(AccessRecord(conn=i, direction="inbound"))
    assert log._sink is not None and log._sink.flush(5)  # a full batch was handed off
    assert len(out.getvalue().splitlines()) == 1 + AccessLog.BATCH


def test_access_log_counts_what_a_full_sink_refused(gate: Gate) -> None:
    log = AccessLog(LogSink(gate.write, name="test", capacity=1000))
    rec = AccessRecord(conn=1, direction="outbound")
    log.write(rec)
    log.flush(0)
    assert gate.entered.wait(5)
    for _ in range(AccessLog.BATCH * 3):
        log.write(rec)
    log.flush(0)
    assert 0 < log.dropped < AccessLog.BATCH * 3


async def test_aclose_is_bounded_by_the_callers_scope(gate: Gate) -> None:
    log = AccessLog(LogSink(gate.write, name="test"))
    log.write(AccessRecord(conn=1, direction="outbound"))
    with trio.fail_after(5):
        with trio.move_on_after(0.1):
            await log.aclose()  # the stuck writer would hold this forever
    assert not log.enabled


async def test_access_log_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog.open(str(path))
    log.write(AccessRecord(conn=3, direction="outbound", method="PUT", status=201))
    with trio.fail_after(5):
        await log.aclose()
    assert json.loads(path.read_text())["status"] == 201


# --- a real process whose stderr nobody reads -------------------------------------

_BOUND = re.compile(rb"outbound [\d.]+:(\d+), inbound [\d.]+:(\d+), admin [\d.]+:(\d+)")
REQUESTS = 4000  # each logs at least ~200 bytes: many times a 64 KiB pipe buffer
CONNECTIONS = 4


async def test_stuck_stderr_freezes_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = Upstream()
    await nursery.start(app.serve)
    app_address = f"127.0.0.1:{app.port}"
    config = {
        "log_level": "debug",
        "listen": {
            "outbound": "127.0.0.1:0",
            "inbound": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "drain_delay": "10ms",
            "drain_timeout": "1s",
        },
        "registry": {"type": "static", "services": {"orders": [{"address": app_address}]}},
        "observe": {"access_log": "stderr"},
    }
    path = tmp_path / "trimesh.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trimesh.cli", "serve", "-c", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        outbound, admin = await _wait_bound(process)
        # From here on nobody reads stderr.
        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for i in range(CONNECTIONS):
                    clients.start_soon(_requests, outbound, i, REQUESTS // CONNECTIONS)
        with trio.fail_after(2):
            assert await _health(admin) == 200
        # Shutdown waits for log lines a bounded time (access log, then program log).
        with trio.fail_after(6):
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        assert process.stderr is not None
        with trio.fail_after(5):
            left = await _read_all(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # What reached the pipe is its buffer's worth, not the megabytes logged: the rest
    # was dropped rather than waited for.
    assert len(left) < REQUESTS * 200 // 4


async def _wait_bound(process: trio.Process) -> tuple[int, int]:
    assert process.stderr is not None
    log = b""
    with trio.fail_after(10):
        while not (match := _BOUND.search(log)):
            chunk = await process.stderr.receive_some(4096)
            assert chunk, f"trimesh exited early: {log.decode()}"
            log += chunk
    return int(match[1]), int(match[3])


async def _requests(port: int, worker: int, count: int) -> None:
    """`count` requests on one keep-alive connection; every other one to an unknown service."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        for i in range(count):
            service = "orders" if i % 2 else "nowhere"
            target = f"http://{service}/w{worker}/{i}".encode()
            request = h11.Request(method="GET", target=target, headers=[("host", service)])
            data = (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            await stream.send_all(data)
            status = 0
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
            assert status == (200 if service == "orders" else 502)
            conn.start_next_cycle()


async def _health(port: int) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        request = h11.Request(method="GET", target="/health", headers=[("host", "127.0.0.1")])
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        while not isinstance(event := conn.next_event(), h11.Response):
            assert event is h11.NEED_DATA
            conn.receive_data(await stream.receive_some(65536))
        return event.status_code


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data
