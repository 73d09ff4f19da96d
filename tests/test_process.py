"""`trimesh serve` as a real process: signals, drain, bounded memory, CLI exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio
import yaml

from tests.servers import Seen, Upstream

TRIMESH = [sys.executable, "-m", "trimesh.cli"]
_BOUND = re.compile(rb"outbound [\d.]+:(\d+), inbound [\d.]+:(\d+), admin [\d.]+:(\d+)")


class Proc:
    def __init__(self, process: trio.Process, ports: tuple[int, int, int], log: bytearray):
        self.process = process
        self.outbound, self.inbound, self.admin = ports
        self.log = log


async def spawn(nursery: trio.Nursery, tmp_path: Path, config: dict[str, object]) -> Proc:
    """Start `trimesh serve` and wait (by reading its log) until it has bound."""
    path = tmp_path / "trimesh.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await trio.lowlevel.open_process(
        [*TRIMESH, "serve", "-c", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert process.stderr is not None
    log = bytearray()
    with trio.fail_after(10):
        while not (match := _BOUND.search(log)):
            chunk = await process.stderr.receive_some(4096)
            assert chunk, f"trimesh exited early: {log.decode()}"
            log += chunk
    nursery.start_soon(_drain_pipe, process, log)
    ports = (int(match[1]), int(match[2]), int(match[3]))
    return Proc(process, ports, log)


async def _drain_pipe(process: trio.Process, log: bytearray) -> None:
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(4096):
        log += chunk


def base_config(**services: int) -> dict[str, object]:
    return {
        "listen": {
            "outbound": "127.0.0.1:0",
            "inbound": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "drain_timeout": "2s",
            "drain_delay": "10ms",
        },
        "registry": {
            "type": "static",
            "services": {n: [{"address": f"127.0.0.1:{p}"}] for n, p in services.items()},
        },
    }


async def test_sigterm_drains_in_flight_request(
    nursery: trio.Nursery, tmp_path: Path, cleanup: list[trio.Process]
) -> None:
    release = trio.Event()

    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await release.wait()
        return 200, [], b"finished"

    app = Upstream(slow)
    await nursery.start(app.serve)
    config = base_config(orders=app.port)
    config["listen"]["drain_delay"] = "1s"  # type: ignore[index]
    proc = await spawn(nursery, tmp_path, config)
    cleanup.append(proc.process)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proc.outbound)
        async with stream:
            await stream.send_all(b"GET http://orders/slow HTTP/1.1\r\nHost: orders\r\n\r\n")
            await app.request_arrived.wait()
            proc.process.send_signal(signal.SIGTERM)
            while b"still accepting" not in proc.log:  # noqa: ASYNC110 - polling a pipe-fed log under fail_after
                await trio.sleep(0.01)
            # During listen.drain_delay the app may still call out: accepted, then closed.
            late = await trio.open_tcp_stream("127.0.0.1", proc.outbound)
            async with late:
                await late.send_all(b"GET http://orders/late HTTP/1.1\r\nHost: orders\r\n\r\n")
                release.set()
                answer = b""
                while chunk := await late.receive_some(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b"connection: close" in answer.lower()
            while b"listeners closed" not in proc.log:  # noqa: ASYNC110 - polling a pipe-fed log under fail_after
                await trio.sleep(0.01)
            # The listener is closed: new connections are refused.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", proc.outbound)
            response = b""
            while chunk := await stream.receive_some(65536):
                response += chunk
            assert await proc.process.wait() == 0
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"finished")


async def test_drain_deadline_cancels_stuck_requests(
    nursery: trio.Nursery, tmp_path: Path, cleanup: list[trio.Process]
) -> None:
    async def stuck(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep_forever()
        raise AssertionError

    app = Upstream(stuck)
    await nursery.start(app.serve)
    config = base_config(orders=app.port)
    config["listen"]["drain_timeout"] = "300ms"  # type: ignore[index]
    proc = await spawn(nursery, tmp_path, config)
    cleanup.append(proc.process)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", proc.outbound)
        await stream.send_all(b"GET http://orders/ HTTP/1.1\r\nHost: orders\r\n\r\n")
        await app.request_arrived.wait()
        proc.process.send_signal(signal.SIGINT)
        assert await proc.process.wait() == 0
        await app.disconnected.wait()  # the stuck upstream exchange was closed
        await stream.aclose()


GIB = 1 << 30
CHUNK = b"\xab" * (1 << 18)


async def _sink_and_source(stream: trio.SocketStream) -> None:
    """Upstream: count the request body, then answer with a 1 GiB body."""
    conn = h11.Connection(h11.SERVER)
    received = 0
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 18))
            elif isinstance(event, h11.Data):
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        body = GIB if received == 0 else 0
        headers = [("content-length", str(body)), ("x-received", str(received))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        sent = 0
        while sent < body:
            await stream.send_all(CHUNK)
            sent += len(CHUNK)


@pytest.mark.slow
async def test_one_gib_each_way_in_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path, cleanup: list[trio.Process]
) -> None:
    listeners = await nursery.start(trio.serve_tcp, _sink_and_source, 0)
    port = listeners[0].socket.getsockname()[1]
    proc = await spawn(nursery, tmp_path, base_config(big=port))
    cleanup.append(proc.process)
    with trio.fail_after(120):
        up = await trio.open_tcp_stream("127.0.0.1", proc.outbound)
        await up.send_all(
            b"PUT http://big/ HTTP/1.1\r\nHost: big\r\nContent-Length: %d\r\n\r\n" % GIB
        )
        for _ in range(GIB // len(CHUNK)):
            await up.send_all(CHUNK)
        head = await up.receive_some(65536)
        assert b"x-received: %d" % GIB in head
        await up.aclose()
        down = await trio.open_tcp_stream("127.0.0.1", proc.outbound)
        await down.send_all(b"GET http://big/ HTTP/1.1\r\nHost: big\r\nConnection: close\r\n\r\n")
        total = 0
        async with down:
            while chunk := await down.receive_some(1 << 18):
                total += len(chunk)
        assert GIB < total < GIB + 4096  # body plus the response head
    peak_kib = _peak_rss_kib(proc.process.pid)
    assert peak_kib < 120 * 1024, f"sidecar peak RSS {peak_kib} KiB"


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])  # type: ignore[index]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRIMESH, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_check_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "service: {name: 'has space'}\nlisten: {outbound: nowhere}\n"
        "limits: {header_timeout: soon, max_headers: -1}\nbogus: 1\n"
        "registry: {type: static, services: {x: [{address: 'h:99999'}]}}\n"
    )
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 2
    for key in (
        "service.name",
        "listen.outbound",
        "limits.header_timeout",
        "limits.max_headers",
        "bogus: unknown key",
        "registry.services",
    ):
        assert key in result.stderr, result.stderr


def test_check_accepts_a_good_file_and_env_overrides(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("service: {name: orders}\napp: {ports: {rest: 8080}}\n")
    assert run_cli("check", "-c", str(good)).returncode == 0
    broken_env = run_cli("check", "-c", str(good), env={"SERVICE_PORTS": "rest:notaport"})
    assert broken_env.returncode == 2
    assert "app.ports" in broken_env.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [1, 2]\n")
    result = run_cli("serve", "-c", str(bad))
    assert result.returncode == 2
    assert "listen: expected a mapping" in result.stderr


def test_version_and_help() -> None:
    assert run_cli("version").stdout.startswith("trimesh ")
    for sub in ("serve", "check", "version"):
        result = run_cli(sub, "--help")
        assert result.returncode == 0
        assert "usage: trimesh " + sub in result.stdout
