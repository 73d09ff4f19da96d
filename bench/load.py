"""Load generators: wrk when installed, else a one-process Python fallback.

Both send `GET <target> HTTP/1.1` on N keep-alive connections, one request
in flight per connection (no pipelining), for a fixed time, and report the
count and latency percentiles in the same `LoadResult`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

from bench.procs import HOST, BenchError

_WRK_DONE = """\
wrk.method = "GET"
wrk.path = "{target}"
wrk.headers["Host"] = "{host}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-JSON {{\\"requests\\": %d, \\"seconds\\": %f, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"errors\\": %d, \\"non_2xx\\": %d}}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@attrs.frozen
class Endpoint:
    """One path under test: where to connect and what request line to send."""

    name: str
    label: str
    port: int
    # Origin-form "/" for the upstream itself, absolute-form for a forward proxy.
    target: str = "/"
    host: str = HOST
    # The server process whose CPU time per request is reported (the proxy, or the upstream).
    pid: int | None = None


@attrs.frozen
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"rps": round(self.rps, 1), **attrs.asdict(self)}


@attrs.frozen
class LoadGenerator:
    """Runs one measurement; `kind` is "wrk" or "python"."""

    kind: str
    label: str
    workdir: Path
    cpu: int | None

    @classmethod
    def choose(cls, workdir: Path, cpu: int | None, *, force_python: bool) -> LoadGenerator:
        wrk = None if force_python else shutil.which("wrk")
        if wrk:
            out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
            version = (out.stdout + out.stderr).split()[1:2]
            return cls("wrk", f"wrk {' '.join(version)} (-t1)", workdir, cpu)
        return cls(
            "python",
            "python selectors client (FALLBACK: wrk not installed; it caps the measurable rate)",
            workdir,
            cpu,
        )

    def run(self, ep: Endpoint, connections: int, seconds: float) -> LoadResult:
        argv = (
            self._wrk(ep, connections, seconds)
            if self.kind == "wrk"
            else self._python(ep, connections, seconds)
        )
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=self._pin,
            timeout=seconds + 60,
        )
        match = re.search(r"^BENCH-JSON (\{.*\})$", out.stdout, re.M)
        if out.returncode != 0 or match is None:
            raise BenchError(
                f"{self.kind} against {ep.name} failed ({out.returncode}):\n"
                f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
            )
        raw = json.loads(match[1])
        return LoadResult(
            raw["requests"],
            raw["seconds"],
            raw["p50_us"] / 1000,
            raw["p99_us"] / 1000,
            raw["errors"],
            raw["non_2xx"],
        )

    def _pin(self) -> None:
        if self.cpu is not None:
            import os

            os.sched_setaffinity(0, {self.cpu})

    def _wrk(self, ep: Endpoint, connections: int, seconds: float) -> list[str]:
        script = self.workdir / f"wrk-{ep.name}.lua"
        script.write_text(_WRK_DONE.format(target=ep.target, host=ep.host))
        duration = max(1, round(seconds))
        return [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://{HOST}:{ep.port}/",
        ]

    def _python(self, ep: Endpoint, connections: int, seconds: float) -> list[str]:
        script = Path(__file__).with_name("pyload.py")
        return [
            sys.executable,
            str(script),
            str(ep.port),
            ep.target,
            ep.host,
            str(connections),
            str(seconds),
        ]
