"""Tests of `trimesh registry list | watch` on a real LocalRegistry file."""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

from trimesh import registry_cli
from trimesh.config import Config, load, registry_url
from trimesh.discovery.base import Registration
from trimesh.discovery.local import LocalRegistry
from trimesh.discovery.static import StaticRegistry
from trimesh.registry_cli import (
    COLUMNS,
    UsageError,
    add_registry_commands,
    run_registry_command,
    service_names,
    watch_instances,
)

ORDERS_A = Registration("orders", "127.0.0.1", 8081, version="1.0.0")
ORDERS_B = Registration("orders", "127.0.0.1", 8082, version="1.1.0")
USERS = Registration("users", "127.0.0.1", 9090, version="2.0.0")

# What `trimesh registry ...` will run once the lead wires it into `trimesh.cli.main`.
MAIN = textwrap.dedent(
    """
    import argparse, sys
    from trimesh.config import load, registry_url
    from trimesh.registry_cli import add_registry_commands, run_registry_command
    parser = argparse.ArgumentParser(prog="trimesh")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(sys.argv[1:])
    config = load(None, {"registry": registry_url(args.registry)}, env={})
    sys.exit(run_registry_command(args, config))
    """
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trimesh")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace, raw: dict[str, object] | None = None) -> Config:
    cli = {"registry": registry_url(args.registry)} if args.registry else {}
    return load(None, {**(raw or {}), **cli}, env={})


def seed(path: Path, *regs: Registration, down: Sequence[int] = ()) -> list[str]:
    """Register `regs` in the file at `path` (as other sidecars would); mark `down` DOWN."""

    async def main() -> list[str]:
        async with LocalRegistry(path) as registry:
            ids = [await registry.register(r) for r in regs]
            for index in down:
                await registry.set_status(ids[index], "DOWN")
            return ids

    return trio.run(main)


def run(*argv: str, raw: dict[str, object] | None = None) -> int:
    args = parse(*argv)
    return run_registry_command(args, config_for(args, raw))


def test_list_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "registry.db"
    a, b, u = seed(path, ORDERS_A, ORDERS_B, USERS, down=[1])
    url = f"local://{path}"
    assert (
        run("registry", "list", "--registry", url, "--service", "users", "--service", "orders") == 0
    )
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["SERVICE", "VERSION", "INSTANCE", "ENDPOINT", "STATUS", "LEASE_AGE"]
    cells = [row.split() for row in rows]
    assert [c[:5] for c in cells] == [
        ["orders", "1.0.0", a, "rest://127.0.0.1:8081", "UP"],
        ["orders", "1.1.0", b, "rest://127.0.0.1:8082", "DOWN"],
        ["users", "2.0.0", u, "rest://127.0.0.1:9090", "UP"],
    ]
    assert all(c[5].endswith("s") and float(c[5][:-1]) >= 0 for c in cells)
    # Columns line up.
    assert len({row.index("rest://") for row in rows}) == 1


def test_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "registry.db"
    (a,) = seed(path, ORDERS_A)
    assert (
        run("registry", "list", "--registry", f"local://{path}", "--service", "orders", "--json")
        == 0
    )
    (item,) = json.loads(capsys.readouterr().out)
    assert item.pop("lease_age") >= 0
    assert item == {
        "service": "orders",
        "app": "default",
        "instance_id": a,
        "endpoint": "rest://127.0.0.1:8081",
        "version": "1.0.0",
        "status": "UP",
    }


def test_list_without_service_lists_every_live_local_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "registry.db"
    carts = Registration("carts", "127.0.0.1", 7070, app="shop")
    a, b, u, _ = seed(path, ORDERS_A, ORDERS_B, USERS, carts, down=[1])
    assert run("registry", "list", "--registry", f"local://{path}", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["service"], i["instance_id"], i["status"]) for i in listed] == [
        ("orders", a, "UP"),
        ("orders", b, "DOWN"),
        ("users", u, "UP"),
    ]
    assert run("registry", "list", "--registry", f"local://{path}", "--app", "shop") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert (header.split(), row.split()[:2]) == (list(COLUMNS), ["carts", "0.0.1"])
    assert run("registry", "list", "--registry", f"local://{tmp_path / 'empty.db'}") == 0
    assert capsys.readouterr().out.split() == list(COLUMNS)


def test_list_everything_needs_a_backend_that_enumerates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_cli, "build_registry", lambda cfg, app: StaticRegistry({}, app))
    assert run("registry", "list", "--registry", f"local://{tmp_path / 'r.db'}") == 2
    assert "StaticRegistry cannot list its services; name them with --service NAME" in (
        capsys.readouterr().err
    )


def test_list_static_lists_every_configured_service(capsys: pytest.CaptureFixture[str]) -> None:
    raw: dict[str, object] = {
        "registry": {
            "type": "static",
            "services": {"users": ["10.0.0.2:80"], "orders": ["10.0.0.1:80"]},
        }
    }
    assert run("registry", "list", "--json", raw=raw) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["service"], i["endpoint"], i["lease_age"]) for i in listed] == [
        ("orders", "rest://10.0.0.1:80", None),
        ("users", "rest://10.0.0.2:80", None),
    ]


def test_list_on_an_unusable_registry_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    url = f"local://{blocker / 'registry.db'}"
    assert run("registry", "list", "--registry", url, "--service", "orders") == 1
    assert "trimesh registry: local registry:" in capsys.readouterr().err


async def test_service_names_uses_a_backend_services_method(tmp_path: Path) -> None:
    class Enumerating(LocalRegistry):
        async def services(self, app: str) -> Sequence[str]:
            return ["users", "orders"] if app == "shop" else []

    async with Enumerating(tmp_path / "r.db") as registry:
        assert await service_names(registry, "shop", ()) == ["orders", "users"]
        assert await service_names(registry, "shop", ["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(UsageError, match="--service NAME"):
        await service_names(StaticRegistry({}, "shop"), "shop", ())


class Lines(io.StringIO):
    """Output a test can wait on, line by line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._partial = ""
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        if done:
            self._changed.set()
            self._changed = trio.Event()
        return len(text)

    async def line(self, index: int) -> str:
        while len(self.lines) <= index:
            await self._changed.wait()
        return self.lines[index]


async def test_watch_prints_one_line_per_change(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    out = Lines()
    watch = partial(watch_instances, out=out, as_json=False)
    async with (
        LocalRegistry(path, poll_interval=0.01) as watched,
        LocalRegistry(path) as provider,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(watch, watched, "default", ["orders"])
        with trio.fail_after(10):
            assert (await out.line(0)).endswith("default/orders 0 instances, 0 UP")
            a = await provider.register(ORDERS_A)
            assert (await out.line(1)).endswith(
                f"default/orders 1 instances, 1 UP: +{a} rest://127.0.0.1:8081 1.0.0 UP"
            )
            await provider.set_status(a, "DOWN")
            assert (await out.line(2)).endswith(
                f"1 instances, 0 UP: ~{a} rest://127.0.0.1:8081 1.0.0 DOWN"
            )
            await provider.deregister(a)
            assert (await out.line(3)).endswith(f"0 instances, 0 UP: -{a}")
            assert len(out.lines) == 4
        nursery.cancel_scope.cancel()


async def test_watch_json(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    out = Lines()
    watch = partial(watch_instances, out=out, as_json=True)
    async with (
        LocalRegistry(path, poll_interval=0.01) as watched,
        LocalRegistry(path) as provider,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(watch, watched, "default", ["orders"])
        with trio.fail_after(10):
            first = json.loads(await out.line(0))
            assert (first["service"], first["instances"], first["added"]) == ("orders", [], [])
            a = await provider.register(ORDERS_A)
            change = json.loads(await out.line(1))
            assert [i["instance_id"] for i in change["added"]] == [a]
            assert [i["status"] for i in change["instances"]] == ["UP"]
            assert (change["removed"], change["changed"]) == ([], [])
        nursery.cancel_scope.cancel()


async def test_watch_command_streams_until_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    argv = ["registry", "watch", "--registry", f"local://{path}", "--service", "orders", "--json"]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", MAIN, *argv], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    buffer = b""

    async def next_line() -> dict[str, object]:
        nonlocal buffer
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
            assert chunk, "watch exited early"
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        result: dict[str, object] = json.loads(line)
        return result

    try:
        with trio.fail_after(30):
            assert (await next_line())["instances"] == []
            async with LocalRegistry(path) as provider:
                a = await provider.register(ORDERS_A)
            added = (await next_line())["added"]
            assert [i["instance_id"] for i in added] == [a]  # type: ignore[attr-defined]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    finally:
        process.kill()
        await process.wait()
