"""A real Prometheus on loopback for tests, and a small HTTP endpoint for it to scrape.

`PrometheusServer(workdir, jobs)` writes a scrape config (every second) with
one job per ``{name: "host:port/path"}`` entry, launches ``prometheus`` with
a temporary TSDB on a free loopback port, and `start()` returns once
``/-/ready`` answers. `query(expr)` calls ``/api/v1/query``; `stop()` ends the
process it started, by its PID. `find_prometheus()` / `find_promtool()` skip
the test when Debian's ``prometheus`` package is not installed, or fail it
when ``CI=true`` (CI must not silently skip).

`MetricsEndpoint` is the scrape target: an h11 server on 127.0.0.1 port 0
that answers ``GET <path>`` with ``await render(accept)`` (as the admin
listener does with `Metrics.render_off_loop`); ``/metrics/text`` ignores
``Accept`` and always asks for the Prometheus text format.

Resource handling: the process and its data dir belong to the test that
created the server; `stop()` is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import h11
import httpx
import pytest
import trio

from tests.etcd_server import free_ports

START_DEADLINE = 30.0
STOP_DEADLINE = 10.0
POLL = 0.1  # between readiness or query polls, always under a caller's deadline
INTERVAL = "1s"


def _find(name: str) -> str:
    debian = f"/usr/bin/{name}"
    binary = shutil.which(name) or (debian if os.access(debian, os.X_OK) else None)
    if binary is None:
        reason = f"{name} not found (apt-get install -y --no-install-recommends prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def find_prometheus() -> str:
    return _find("prometheus")


def find_promtool() -> str:
    return _find("promtool")


class PrometheusServer:
    """One Prometheus process that this object started, or none."""

    def __init__(self, workdir: Path, jobs: dict[str, str], binary: str | None = None) -> None:
        self.binary = binary or find_prometheus()
        self.workdir = workdir
        self.jobs = jobs
        self.port = free_ports(1)[0]
        self.log_path = workdir / "prometheus.log"
        self._proc: trio.Process | None = None
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc else "stopped"
        return f"<PrometheusServer 127.0.0.1:{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        scrapes = []
        for name, target in self.jobs.items():
            address, _, path = target.partition("/")
            scrapes.append(
                {
                    "job_name": name,
                    "metrics_path": "/" + path,
                    "static_configs": [{"targets": [address]}],
                }
            )
        timing = {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL}
        return {"global": timing, "scrape_configs": scrapes}

    async def start(self) -> None:
        """Launch Prometheus and wait (under the caller's deadline too) until it is ready."""
        assert self._proc is None, "already running"
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self._config()))  # JSON is YAML
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._proc = await trio.lowlevel.open_process(
            args, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            with trio.fail_after(START_DEADLINE):
                await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited early:\n{self.log_tail()}")
                try:
                    if (await client.get(self.url + "/-/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(POLL)

    async def stop(self) -> None:
        """End the process we started, by its PID (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_DEADLINE, shield=True) as patience:
                await proc.wait()
            if patience.cancelled_caught:
                proc.kill()
                with trio.move_on_after(STOP_DEADLINE, shield=True):
                    await proc.wait()
        self._log.close()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(self.url + "/api/v1/query", params={"query": expr})
        body = resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(self, expr: str, by: str, expected: dict[str, float]) -> None:
        """Poll `expr` (a vector labelled by `by`) until it equals `expected`.

        The caller owns the deadline; a mismatch at expiry shows in the
        assertion it then makes with `values`.
        """
        while True:
            if await self.values(expr, by) == expected:
                return
            await trio.sleep(POLL)

    async def values(self, expr: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in await self.query(expr)}

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class MetricsEndpoint:
    """Serves ``await render(accept)`` to every GET; records the content types it answered."""

    def __init__(self, render: Callable[[str | None], Awaitable[tuple[str, bytes]]]) -> None:
        self.render = render
        self.served: list[str] = []

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(int(listeners[0].socket.getsockname()[1]))
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    await self._answer(stream, conn, request)
                    conn.start_next_cycle()
                elif not isinstance(event, h11.Data):
                    return  # ConnectionClosed or PAUSED
        except (h11.ProtocolError, trio.BrokenResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, req: h11.Request
    ) -> None:
        accept = next((v.decode() for k, v in req.headers if k == b"accept"), None)
        content_type, body = await self.render(None if req.target == b"/metrics/text" else accept)
        self.served.append(content_type)
        head = h11.Response(
            status_code=200,
            headers=[("content-type", content_type), ("content-length", str(len(body)))],
        )
        events = (head, h11.Data(data=body), h11.EndOfMessage())
        await stream.send_all(b"".join(conn.send(event) or b"" for event in events))
