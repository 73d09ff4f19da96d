"""The servers around the proxy under test: the upstream app, the floor and the nginx proxy.

nginx, when installed, is both the upstream (a fixed 100-byte body from
`return 200`) and, as a second process, the reverse-proxy comparison. Without
nginx the upstream is `pyserver.py`, a one-thread selectors server, and the
nginx path is skipped; results say which was used. The floor (`floor.py`, a
minimal trio + h11 forward proxy) runs whichever upstream it is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import attrs

from bench.procs import HOST, BenchError, Processes, free_port, wait_for_port

BODY = b"trimesh-bench " + b"x" * 85 + b"\n"  # 100 bytes, like a small JSON API answer
assert len(BODY) == 100

_COMMON = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{server}
}}
"""
_UPSTREAM = """\
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}"""
_PROXY = """\
    upstream app {{
        server {host}:{upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}"""


@attrs.frozen
class Server:
    """A started server: where it listens and what it is."""

    port: int
    label: str
    pid: int | None = None


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def _start_nginx(
    procs: Processes, name: str, server_block: str, port: int, cpu: int | None, binary: str
) -> None:
    workdir = procs.logdir / name
    workdir.mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(_COMMON.format(dir=workdir, server=server_block))
    argv = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    proc = procs.start(name, argv, cpu)
    try:
        wait_for_port(port, proc, 10, name)
    except BenchError as exc:
        errors = (workdir / "error.log").read_text(errors="replace") if conf.exists() else ""
        raise BenchError(f"{exc}\n{procs.log_tail(name)}\n{errors}") from exc


def start_upstream(procs: Processes, cpu: int | None, *, use_nginx: bool) -> Server:
    """Start the upstream app: nginx if wanted and it starts, else the Python fallback."""
    binary = nginx_binary() if use_nginx else None
    if binary is not None:
        port = free_port()
        block = _UPSTREAM.format(host=HOST, port=port, body=BODY.decode().strip() + "\\n")
        try:
            _start_nginx(procs, "upstream-nginx", block, port, cpu, binary)
            return Server(port, f"{nginx_version(binary)} `return 200`")
        except BenchError as exc:
            print(
                f"bench: nginx upstream failed, using the Python upstream: {exc}", file=sys.stderr
            )
    port = free_port()
    script = Path(__file__).with_name("pyserver.py")
    proc = procs.start("upstream-python", [sys.executable, str(script), str(port)], cpu)
    wait_for_port(port, proc, 10, "python upstream")
    return Server(port, "python selectors server (FALLBACK: nginx not installed)")


def start_nginx_proxy(procs: Processes, cpu: int | None, upstream_port: int) -> Server | None:
    """Start nginx as a keep-alive reverse proxy to the upstream; `None` if nginx is absent."""
    binary = nginx_binary()
    if binary is None:
        return None
    port = free_port()
    block = _PROXY.format(host=HOST, port=port, upstream=upstream_port)
    try:
        _start_nginx(procs, "proxy-nginx", block, port, cpu, binary)
    except BenchError as exc:
        print(f"bench: nginx reverse proxy failed, skipping that path: {exc}", file=sys.stderr)
        return None
    return Server(port, f"{nginx_version(binary)} proxy_pass, upstream keepalive 64")


def start_floor(procs: Processes, cpu: int | None, upstream_port: int) -> Server:
    """Start `floor.py` on a port of its choosing and read that port from its first line."""
    script = Path(__file__).with_name("floor.py")
    argv = [sys.executable, str(script), "--listen", f"{HOST}:0", "--upstream"]
    proc = procs.start("floor", [*argv, f"{HOST}:{upstream_port}"], cpu)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        first = procs.log_tail("floor", 1)
        if first.isdigit():
            return Server(int(first), "minimal trio + h11 proxy (bench/floor.py)", proc.pid)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"floor did not report its port:\n{procs.log_tail('floor')}")
