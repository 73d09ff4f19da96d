"""The live dashboard: its packaged files, and the page as a real browser renders it.

The browser tests serve the package's files and a fake `/v1/overview` whose
figures change on every poll from a small trio server on 127.0.0.1 port 0,
and run headless Chromium (`--dump-dom`) against it. Chromium's virtual time
runs the page's 2 s polling timer without the test waiting for it.

`python -m tests.test_dashboard docs/img/dashboard.png` takes the screenshot
in docs/dashboard.md against the same fake server.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trimesh.observe.dashboard import asset

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
HOSTILE = "<img src=x onerror=alert(1)>"
# Chromium's start-up on a busy 2-core machine, with margin. A page that ran the
# hostile name's alert() would block on the dialog and end here as TooSlowError.
BROWSER_DEADLINE = 60.0
PEER_DEADLINE = 5.0


def fake_overview(n: int, *, hostile: bool = True) -> dict[str, Any]:
    """A realistic overview at poll `n`: every figure moves from one poll to the next.

    `hostile` adds a service and an error whose names are markup.
    """
    wave = math.sin(n / 4) * 0.7 + math.sin(n / 1.7) * 0.3
    overview: dict[str, Any] = {
        "identity": {
            "service": "checkout",
            "version": "1.4.2",
            "app": "shop",
            "instance": "checkout-7f9c2d",
            "listeners": {
                "outbound": "127.0.0.1:30101",
                "inbound": "10.0.3.7:30103",
                "admin": "127.0.0.1:30102",
            },
            "registry": {"type": "local", "registered": True, "error": None},
            "draining": False,
        },
        "services": {
            "orders": _service(
                rps=182.4 + 20 * wave,
                success=0.998 - 0.002 * abs(wave),
                p50=3.1 + 0.4 * wave,
                p99=41.0 + 9 * wave,
                breaker={"state": "closed", "error_percentage": 0.4, "retry_after": 0.0},
                instances=[
                    _instance("orders-a1", "10.0.3.11:30103", "2.0.1", "UP", 1.2 + n),
                    _instance("orders-b7", "10.0.3.12:30103", "2.0.1", "UP", 3.9 + n),
                    _instance("orders-c3", "10.0.3.13:30103", "2.1.0", "UP", 0.4 + n),
                ],
                outlier={"10.0.3.13:30103": {"ejected_until": 30 - (2 * n) % 30, "times": 1}},
                in_flight=7 + n % 3,
                max_concurrent=64,
            ),
            "payments": _service(
                rps=41.7 + 5 * wave,
                success=0.62 + 0.05 * wave,
                p50=12.8 + wave,
                p99=2480.0 + 120 * wave,
                breaker={"state": "open", "error_percentage": 38.2, "retry_after": 4.0 - n % 4},
                instances=[
                    _instance("payments-0", "10.0.4.21:30103", "5.3.0", "UP", 2.0 + n),
                    _instance("payments-1", "10.0.4.22:30103", "5.3.0", "DOWN", 28.6 + n),
                ],
                rate_limited=12 + 3 * n,
            ),
            "inventory": _service(
                rps=9.3 + wave,
                success=1.0,
                p50=0.84 + 0.05 * wave,
                p99=7.9 + wave,
                breaker={"state": "half-open", "error_percentage": 12.0, "retry_after": 0.0},
                instances=[_instance("inventory-0", "10.0.5.2:30103", "0.9.4", "UP", 5.5 + n)],
            ),
            "users": _service(
                rps=64.0 - 6 * wave,
                success=0.999,
                p50=1.9 - 0.2 * wave,
                p99=14.5 - 2 * wave,
                breaker={"state": "closed", "error_percentage": 0.0},
                instances=[
                    _instance("users-1", "10.0.6.4:30103", "3.2.0", "UP", 4.1 + n),
                    _instance("users-2", "10.0.6.5:30103", "3.2.0", "UP", 2.6 + n),
                ],
                in_flight=2,
                max_concurrent=32,
            ),
        },
        "errors": _errors(n),
    }
    if hostile:
        overview["services"][HOSTILE] = _service(rps=0.5, success=1, p50=1, p99=2, instances=[])
        overview["errors"].append(
            {"ts": 1_767_225_000.0, "direction": "outbound", "service": HOSTILE, "status": 502,
             "error": "service-not-found", "path": "/<script>alert(2)</script>"}
        )  # fmt: skip
    return overview


def _service(
    *,
    rps: float,
    success: float,
    p50: float,
    p99: float,
    instances: list[dict[str, Any]],
    breaker: dict[str, Any] | None = None,
    outlier: dict[str, Any] | None = None,
    in_flight: int = 0,
    max_concurrent: int | None = None,
    rate_limited: int = 0,
) -> dict[str, Any]:
    return {
        "instances": instances,
        "live": {
            "rps": round(rps, 2),
            "success_rate": round(success, 4),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 1),
            "requests": round(rps * 60),
        },
        "policies": {
            "circuit_breaker": breaker or {"state": "closed"},
            "outlier": outlier or {},
            "in_flight": in_flight,
            "max_concurrent": max_concurrent,
            "rate_limited": rate_limited,
        },
    }


def _instance(id_: str, address: str, version: str, status: str, age: float) -> dict[str, Any]:
    return {"id": id_, "address": address, "version": version, "status": status, "lease_age": age}


def _errors(n: int) -> list[dict[str, Any]]:
    base = 1_767_225_600.0 + 2 * n  # 2026-01-01T00:00:00Z, two seconds per poll
    kinds = [
        ("outbound", "payments", 503, "circuit-open", "/api/charge"),
        ("outbound", "payments", 504, "upstream-timeout", "/api/charge/42?retry=1"),
        ("outbound", "orders", 502, "upstream-connect", "/api/orders/17"),
        ("inbound", "checkout", 429, "rate-limited", "/cart"),
        ("outbound", "payments", 500, "", "/api/refund"),
    ]
    return [
        {"ts": base - 7.3 * i, "direction": d, "service": s, "status": st, "error": k, "path": p}
        for i, (d, s, st, k, p) in enumerate(kinds)
    ]


class FakeAdmin:
    """Serves the dashboard files and a fake `/v1/overview`; records every path asked for.

    `overview(n)` is the answer to poll n. `healthy_polls`: overview answers
    before it starts failing (None: never), alternately with a 503 and by
    closing the connection unanswered.
    """

    def __init__(
        self,
        healthy_polls: int | None = None,
        overview: Callable[[int], object] = fake_overview,
    ) -> None:
        self.paths: list[str] = []
        self.polls = 0
        self.healthy_polls = healthy_polls
        self.overview = overview

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(PEER_DEADLINE):
                path = await _read_path(stream)
                if path is not None:
                    self.paths.append(path)
                    answer = self.answer(path)
                    if answer is not None:
                        await stream.send_all(answer)

    def answer(self, path: str) -> bytes | None:
        if path == "/v1/overview":
            self.polls += 1
            failing = self.healthy_polls is not None and self.polls > self.healthy_polls
            if failing and self.polls % 2:
                return None  # the sidecar went away mid-request
            if failing:
                return _http(503, "application/json", b'{"error": "draining"}')
            body = json.dumps(self.overview(self.polls)).encode()
            return _http(200, "application/json", body)
        found = asset(path)
        if found is None:
            return _http(404, "application/json", b'{"error": "no such endpoint"}')
        return _http(200, *found)


async def _read_path(stream: trio.SocketStream) -> str | None:
    """The path of one request (head only; the browser sends GETs)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    target = data.split(b"\r\n", 1)[0].split(b" ")[1]
    return target.split(b"?", 1)[0].decode("ascii", "replace")


def _http(status: int, content_type: str, body: bytes) -> bytes:
    # The strict policy the admin listener can send: the page must work under it.
    head = (
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\ncache-control: no-store\r\n"
        "content-security-policy: default-src 'self'\r\n"
        "x-content-type-options: nosniff\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def chromium(url: str, profile: Path, *mode: str, budget_ms: int = 5000) -> str:
    """Run headless Chromium on `url` for `budget_ms` of virtual time; its stdout."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
        *mode, url,
    ]  # fmt: skip
    with trio.fail_after(BROWSER_DEADLINE):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


async def _render(nursery: trio.Nursery, tmp_path: Path, admin: FakeAdmin) -> str:
    port = await nursery.start(admin.serve)
    dom = await chromium(f"http://127.0.0.1:{port}/", tmp_path / "profile", "--dump-dom")
    nursery.cancel_scope.cancel()
    return dom


def _values(dom: str, unit: str) -> list[float]:
    found = re.findall(r'<div class="value">([0-9.,]+)' + re.escape(unit) + "</div>", dom)
    return [float(v.replace(",", "")) for v in found]


@needs_chromium
async def test_page_renders_live_overview_as_text(nursery: trio.Nursery, tmp_path: Path) -> None:
    admin = FakeAdmin()
    dom = await _render(nursery, tmp_path, admin)

    assert admin.paths[:1] == ["/"]
    assert {"/dashboard.js", "/dashboard.css"} <= set(admin.paths)
    assert admin.polls >= 2, "the page should have polled again after 2 s"
    for name in ("checkout", "orders", "payments", "inventory", "10.0.3.12:30103"):
        assert f">{name}<" in dom
    rates = _values(dom, "/s")
    assert len(rates) == 5 and all(r > 0 for r in rates)
    assert _values(dom, "%") and _values(dom, " ms")
    # Sparklines are drawn from successive polls, so a line needs two of them.
    assert "<polyline" in dom
    assert '<span class="badge badge-bad">breaker open</span>' in dom
    assert '<span class="badge badge-warn">breaker half-open</span>' in dom
    assert '<span class="badge badge-warn">ejected</span>' in dom
    assert '<code class="kind">circuit-open</code>' in dom
    assert '<code class="kind">upstream-timeout</code>' in dom
    assert re.search(r'<div id="banner"[^>]*\shidden[\s>=]', dom), "no disconnect banner"
    assert "could not render" not in dom
    # Text from the network is text: the hostile service name and error path stay inert.
    assert f'<span class="name">{html.escape(HOSTILE, quote=False)}</span>' in dom
    assert html.escape("/<script>alert(2)</script>", quote=False) in dom
    assert "<img" not in dom and "<script>alert" not in dom
    # An <img src=x> that became an element would have fetched /x.
    assert "/x" not in admin.paths


@needs_chromium
async def test_banner_when_polling_fails(nursery: trio.Nursery, tmp_path: Path) -> None:
    admin = FakeAdmin(healthy_polls=1)
    dom = await _render(nursery, tmp_path, admin)

    assert admin.polls >= 3
    banner = re.search(r'<div id="banner"([^>]*)>([^<]*)</div>', dom)
    assert banner is not None and "hidden" not in banner.group(1)
    assert "Disconnected from the sidecar" in banner.group(2)
    assert "last update" in banner.group(2)
    assert '<body class="stale">' in dom
    # What the last good poll showed stays on the page, dimmed.
    assert ">orders<" in dom


SPARSE: list[object] = [
    {},
    {"identity": None, "services": None, "errors": None},
    {
        "identity": {"listeners": None, "registry": {"registered": False, "error": "refused"}},
        "services": {
            "alpha": None,
            "beta": {"instances": [None, {"status": None}], "live": {"rps": "fast"}},
            "gamma": {"live": None, "policies": {"circuit_breaker": None, "outlier": None}},
            "delta": {"policies": {"outlier": {"x": None, "y": {"ejected_until": -1}}}},
        },
        "errors": [None, {"ts": "yesterday"}, {}],
    },
]


@needs_chromium
async def test_missing_and_null_keys_render(nursery: trio.Nursery, tmp_path: Path) -> None:
    admin = FakeAdmin(overview=lambda n: SPARSE[min(n, len(SPARSE)) - 1])
    dom = await _render(nursery, tmp_path, admin)

    assert admin.polls >= 3
    assert "could not render" not in dom and "Disconnected" not in dom
    for name in ("alpha", "beta", "gamma", "delta"):
        assert f'<span class="name">{name}</span>' in dom
    assert "not registered" in dom and "registry: refused" in dom


def test_assets_are_packaged_with_types() -> None:
    page = asset("/")
    assert page is not None and page == asset("index.html") == asset("")
    assert page[0] == "text/html; charset=utf-8"
    assert b'src="dashboard.js"' in page[1] and b'href="dashboard.css"' in page[1]
    script, style = asset("/dashboard.js"), asset("dashboard.css")
    assert script is not None and script[0].startswith("text/javascript")
    assert style is not None and style[0].startswith("text/css")


@pytest.mark.parametrize(
    "name", ["/x", "__init__.py", "/../__init__.py", "dashboard.js/", "/v1/overview", "INDEX.HTML"]
)
def test_other_names_are_not_assets(name: str) -> None:
    assert asset(name) is None


def test_assets_are_self_contained_and_never_build_markup_from_data() -> None:
    files = {name: asset(name) for name in ("index.html", "dashboard.js", "dashboard.css")}
    for name, found in files.items():
        assert found is not None
        text = found[1].decode()
        # No CDN and nothing fetched from elsewhere (the SVG namespace is a name, not a fetch).
        elsewhere = r"(?:https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]"
        assert not re.search(elsewhere, text), name
        assert "<style" not in text and " style=" not in text, name
    page = files["index.html"]
    assert page is not None and "<script>" not in page[1].decode()
    script = files["dashboard.js"]
    assert script is not None
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script[1].decode(), sink


def test_wheel_carries_the_assets() -> None:
    """pyproject.toml's package data names every dashboard file, so a wheel carries them.

    setuptools puts only .py files in a wheel unless told otherwise (there is
    no MANIFEST.in and no setuptools-scm here).
    """
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"].get("package-data", {}).get("trimesh.observe.dashboard")
    assert globs, (
        "add to pyproject.toml: [tool.setuptools.package-data] "
        '"trimesh.observe.dashboard" = ["*.html", "*.js", "*.css"]'
    )
    folder = root / "trimesh" / "observe" / "dashboard"
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert any((folder / name).match(glob) for glob in globs), name


async def _screenshot(out: Path, profile: Path) -> None:
    async with trio.open_nursery() as nursery:
        admin = FakeAdmin(overview=functools.partial(fake_overview, hostile=False))
        port = await nursery.start(admin.serve)
        shot = (f"--screenshot={out}", "--window-size=1280,900")
        # A minute of polls, so the sparklines have a shape.
        await chromium(f"http://127.0.0.1:{port}/", profile, *shot, budget_ms=60_000)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(sys.argv[1] if len(sys.argv) > 1 else "dashboard.png").resolve()
        trio.run(_screenshot, out, Path(tmp))
