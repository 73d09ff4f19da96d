"""The proxy under test: `trimesh serve` as a real subprocess, optionally under cProfile.

Resource handling: the process belongs to the `Processes` it was started
with; `Sidecar.stop` ends it early (SIGTERM → graceful drain, which is also
what makes cProfile write its file).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import attrs

from bench.procs import HOST, BenchError, Processes, free_port

SERVICE = "bench-app"  # the service name requests address: GET http://bench-app/ HTTP/1.1
READY_DEADLINE = 30.0  # cProfile makes startup slow


@attrs.define
class Sidecar:
    name: str
    port: int
    admin: int
    proc: subprocess.Popen[bytes]
    access_log: Path | None
    profile: Path | None

    def stop(self, procs: Processes) -> None:
        status = procs.stop(self.proc, grace=15.0)
        if status not in (0, -15):
            print(
                f"bench: {self.name} exited with status {status}:\n{procs.log_tail(self.name)}",
                file=sys.stderr,
            )

    def access_log_lines(self) -> int | None:
        if self.access_log is None or not self.access_log.exists():
            return None
        with open(self.access_log, "rb") as f:
            return sum(1 for _ in f)


def config(
    upstream_port: int,
    access_log: str,
    instances: list[dict[str, object]] | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """A trimesh config (JSON is YAML) on fresh loopback ports with one static service.

    The service has one instance, the upstream, unless `instances` are given;
    `extra` adds top-level sections (e.g. `policies`, `routes`).
    """
    if instances is None:
        instances = [{"address": f"{HOST}:{upstream_port}"}]
    extra = dict(extra or {})
    observe = {**extra.pop("observe", {}), "access_log": access_log}
    return {
        "listen": {
            "outbound": f"{HOST}:{free_port()}",
            "inbound": f"{HOST}:{free_port()}",
            "admin": f"{HOST}:{free_port()}",
            "drain_timeout": "5s",
        },
        "registry": {
            "type": "static",
            "services": {SERVICE: instances},
        },
        **extra,
        "observe": observe,
    }


def start(
    procs: Processes,
    name: str,
    upstream_port: int,
    cpu: int | None,
    *,
    access_log: bool = False,
    profile: Path | None = None,
    instances: list[dict[str, object]] | None = None,
    extra: dict[str, object] | None = None,
) -> Sidecar:
    """Start `trimesh serve` and wait until its admin `/ready` answers 200."""
    log_path = procs.logdir / f"{name}.access.jsonl" if access_log else None
    cfg = config(upstream_port, str(log_path) if log_path else "off", instances, extra)
    cfg_path = procs.logdir / f"{name}.yaml"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "trimesh.cli", "serve", "-c", str(cfg_path)]
    proc = procs.start(name, argv, cpu)
    listen = cfg["listen"]
    assert isinstance(listen, dict)
    port = int(listen["outbound"].rsplit(":", 1)[1])
    admin = int(listen["admin"].rsplit(":", 1)[1])
    _wait_ready(proc, admin, name, procs)
    return Sidecar(name, port, admin, proc, log_path, profile)


def _wait_ready(proc: subprocess.Popen[bytes], admin: int, name: str, procs: Processes) -> None:
    end = time.monotonic() + READY_DEADLINE
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} before ready:\n{procs.log_tail(name)}"
            )
        if _ready(admin):
            return
        time.sleep(0.1)
    raise BenchError(
        f"{name}: admin /ready not 200 within {READY_DEADLINE:.0f} s:\n{procs.log_tail(name)}"
    )


def _ready(admin: int) -> bool:
    conn = http.client.HTTPConnection(HOST, admin, timeout=1)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
