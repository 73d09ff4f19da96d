"""`python -m bench`: start the upstream, trimesh (twice), the floor and nginx; run, report.

The HTTP servers are started only when a selected scenario sends HTTP load
(`--scenario registry` alone starts none).

Exit status: 0 when the bench ran (whether or not targets were met), 1 when
a server or the load generator failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trimesh
from bench import sidecar
from bench.load import Endpoint, LoadGenerator
from bench.procs import BenchError, Cores, Processes
from bench.registry import RUNS
from bench.report import print_scenario, print_summary, write_json
from bench.scenarios import SCENARIOS, Rig, ScenarioResult
from bench.servers import start_floor, start_nginx_proxy, start_upstream

HERE = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.help}" for s in SCENARIOS),
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warmup per path (2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat each scenario's paths N times and report medians (1)",
    )
    p.add_argument("--connections", type=int, default=50, help="for throughput/profile (50)")
    p.add_argument(
        "--registry-runs",
        type=_positive,
        default=RUNS,
        metavar="N",
        help=f"repetitions per backend in the registry scenario ({RUNS})",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in SCENARIOS],
        help="run only these (repeatable); default: all enabled",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run a sidecar under cProfile at --connections and print the top "
        "functions by tottime",
    )
    p.add_argument("--profile-out", type=Path, default=HERE / "profile.prof")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument(
        "--no-nginx",
        action="store_true",
        help="act as if nginx were absent (Python upstream, no nginx path)",
    )
    p.add_argument(
        "--python-loadgen",
        action="store_true",
        help="use the Python load generator even if wrk is installed",
    )
    for role, default in [("loadgen", "first"), ("proxy", "second"), ("upstream", "= proxy")]:
        p.add_argument(
            f"--{role}-cpu",
            type=int,
            metavar="N",
            help=f"CPU for the {role} (default: {default} allowed CPU)",
        )
    p.add_argument(
        "--json",
        type=Path,
        default=HERE / "results.json",
        help="where to write the results (bench/results.json)",
    )
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _start_paths(
    procs: Processes, cores: Cores, no_nginx: bool
) -> tuple[list[Endpoint], int, dict[str, sidecar.Sidecar]]:
    up = start_upstream(procs, cores.upstream, use_nginx=not no_nginx)
    up_pid = procs.pid_of("upstream-nginx") or procs.pid_of("upstream-python")
    eps = [Endpoint("direct", up.label, up.port, pid=up_pid)]
    sidecars = {}
    absolute = f"http://{sidecar.SERVICE}/"
    for name, log in [("trimesh", False), ("trimesh-log", True)]:
        sc = sidecars[name] = sidecar.start(procs, name, up.port, cores.proxy, access_log=log)
        label = "trimesh, access log to a file" if log else "trimesh, access log off"
        eps.append(Endpoint(name, label, sc.port, absolute, sidecar.SERVICE, sc.proc.pid))
        if name == "trimesh":  # measured right after trimesh: within a round both see one drift
            fl = start_floor(procs, cores.proxy, up.port)
            eps.append(Endpoint("floor", fl.label, fl.port, absolute, sidecar.SERVICE, fl.pid))
    proxy = None if no_nginx else start_nginx_proxy(procs, cores.proxy, up.port)
    if proxy is not None:
        eps.append(
            Endpoint(
                "nginx", proxy.label, proxy.port, "/", sidecar.SERVICE, procs.pid_of("proxy-nginx")
            )
        )
    return eps, up.port, sidecars


def _meta(args: argparse.Namespace, rig: Rig) -> dict[str, object]:
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        check=False,
    ).stdout.strip()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "trimesh": trimesh.__version__,
        "git": git,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cores": rig.cores.describe(),
        "load_generator": rig.gen.label,
        "paths": {e.name: e.label for e in rig.endpoints},
        "duration_s": rig.duration,
        "warmup_s": rig.warmup,
        "rounds": rig.rounds,
    }


def _header(meta: dict[str, object]) -> None:
    print(
        f"trimesh bench: trimesh {meta['trimesh']} ({meta['git']}), Python {meta['python']}, "
        f"{meta['cpus']} CPUs"
    )
    if not meta["paths"]:
        print("  no HTTP paths started (no selected scenario sends HTTP load)")
        return
    print(f"  load generator: {meta['load_generator']}")
    print(f"  pinning: {meta['cores']}")
    print(
        f"  {meta['duration_s']:g} s per path after {meta['warmup_s']:g} s warmup, "
        f"{meta['rounds']} round(s)"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = set(args.scenario or [s.name for s in SCENARIOS])
    if args.profile:
        wanted.add("profile")
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="trimesh-bench-") as tmp, Processes(Path(tmp)) as procs:
        try:
            cores = Cores.choose(args.loadgen_cpu, args.proxy_cpu, args.upstream_cpu)
            gen = LoadGenerator.choose(Path(tmp), cores.loadgen, force_python=args.python_loadgen)
            if any(s.http for s in SCENARIOS if s.name in wanted):
                endpoints, up_port, sidecars = _start_paths(procs, cores, args.no_nginx)
            else:  # e.g. --scenario registry: no HTTP servers needed
                endpoints, up_port, sidecars = [], 0, {}
            rig = Rig(
                procs,
                cores,
                gen,
                endpoints,
                up_port,
                args.duration,
                args.warmup,
                args.rounds,
                args.connections,
                args.profile_out.resolve() if args.profile else None,
                args.profile_top,
                sidecars,
                args.registry_runs,
            )
            meta = _meta(args, rig)
            _header(meta)
            for scenario in SCENARIOS:
                if scenario.name in wanted and scenario.enabled(rig):
                    results.append(scenario.run(rig))
                    print_scenario(results[-1])
            print_summary(results)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    write_json(args.json, meta, results)
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
