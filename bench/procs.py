"""Child processes for the bench: free loopback ports, CPU pinning, start, wait, stop.

Resource handling: every process started through `Processes.start` is
stopped (SIGTERM, then SIGKILL after a grace period) when the `Processes`
context exits, whatever happened in between.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import attrs

HOST = "127.0.0.1"


class BenchError(Exception):
    """A bench prerequisite failed (a process did not start, a tool misbehaved)."""


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@attrs.frozen
class Cores:
    """Which CPU each role runs on; `None` means unpinned (fewer than two CPUs)."""

    loadgen: int | None
    proxy: int | None
    upstream: int | None

    @classmethod
    def choose(cls, loadgen: int | None, proxy: int | None, upstream: int | None) -> Cores:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            return cls(None, None, None)
        load = cpus[0] if loadgen is None else loadgen
        prox = cpus[1] if proxy is None else proxy
        return cls(load, prox, prox if upstream is None else upstream)

    def describe(self) -> str:
        if self.loadgen is None:
            return "unpinned (fewer than 2 CPUs available)"
        return (
            f"load generator on CPU {self.loadgen}, proxy on CPU {self.proxy}, "
            f"upstream on CPU {self.upstream}"
        )


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    # Runs in the child between fork and exec, so every thread it starts inherits it.
    return lambda: os.sched_setaffinity(0, {cpu})


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline: float, what: str) -> None:
    """Return once `port` accepts; raise `BenchError` if `proc` dies or time runs out."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on {HOST}:{port} within {deadline:.0f} s")


class Processes:
    """Starts pinned child processes and guarantees they are stopped on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], cpu: int | None) -> subprocess.Popen[bytes]:
        """Start `argv` with stdout+stderr to `<logdir>/<name>.log`, pinned to `cpu`."""
        with open(self.log_path(name), "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pin(cpu),
                start_new_session=True,
            )
        self._procs.append((name, proc))
        return proc

    def pid_of(self, name: str) -> int | None:
        return next((p.pid for n, p in self._procs if n == name), None)

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; return the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]
        return proc.returncode

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for _, proc in reversed(self._procs):
            self.stop(proc, grace=5.0)
