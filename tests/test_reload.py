"""Live reload (trimesh/config/reload.py) and the etcd config centre (trimesh/config/centre.py).

Files are real files in tmp_path; the centre tests run a real etcd (they skip
without the binary, or fail under CI=true, as the registry tests do). The
watcher stats, reads and parses in worker threads, which an autojump clock
would race (it jumps while a thread runs), so only the test whose subject is
timing uses MockClock, and it keeps no deadline open across a reload.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.etcd_server import EtcdServer
from trimesh.config import Config, build
from trimesh.config.centre import ConfigCentre, decode_layer
from trimesh.config.reload import RELOADABLE, ConfigWatcher, fingerprint, local_layers, reconcile
from trimesh.discovery._etcd_api import b64

GUARD = 15.0  # fail_after guard for anything that waits on the watcher or etcd
OUTAGE = "keeping the config in force and retrying"

BASE = """\
listen: {outbound: "127.0.0.1:1", inbound: "127.0.0.1:2", admin: "127.0.0.1:3"}
registry: {type: static}
policies:
  default: {timeout: 5s}
  services:
    a: {timeout: 2s}
"""


class Applied:
    """An `apply` callback that lets a test wait for the next config it receives."""

    def __init__(self) -> None:
        self.configs: list[Config] = []
        self._send, self._receive = trio.open_memory_channel[Config](100)

    def __call__(self, config: Config) -> None:
        self.configs.append(config)
        self._send.send_nowait(config)

    async def next(self, *, guard: bool = True) -> Config:
        with trio.fail_after(GUARD if guard else float("inf")):
            return await self._receive.receive()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll `predicate` until it holds, under the guard deadline."""
    with trio.fail_after(GUARD):
        while not predicate():  # noqa: ASYNC110 - counters and log records; no event to wait on
            await trio.sleep(0.01)


async def write(path: Path, text: str) -> None:
    await trio.Path(path).write_text(text)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


def timeout_of(config: Config, service: str) -> float | None:
    return config.policies.base(service).timeout


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "trimesh.yaml"
    path.write_text(BASE)
    return path


async def start(
    nursery: trio.Nursery, path: Path, apply: Applied, *, poll: bool = True, **kwargs: Any
) -> ConfigWatcher:
    source = local_layers(path, env={})  # the test runner's TRIMESH_* must not leak in
    watcher = ConfigWatcher(
        source,
        build(source()),
        apply,
        path=path if poll else None,
        poll_interval=0.02,
        **kwargs,
    )
    await nursery.start(watcher.run)
    return watcher


# ---------------------------------------------------------------- sans-IO


def test_decode_layer_nests_keys_deeper_ones_last() -> None:
    entries = [
        (b"/p/config/policies/services/b", b"{timeout: 9s}"),
        (b"/p/config/policies", b"services: {b: {timeout: 1s, retry: {attempts: 0}}}"),
        (b"/p/config/log_level", b"debug"),
        (b"/p/config/routes/a", b"   "),  # empty: as if absent
    ]
    layer = decode_layer(entries, b"/p/config/", RELOADABLE)
    assert layer.problems == ()
    assert layer.raw == {
        "log_level": "debug",
        "policies": {"services": {"b": {"timeout": "9s", "retry": {"attempts": 0}}}},
    }
    problem = "policies.services.b.retry.attempts: expected a whole number"
    assert layer.annotate(problem).endswith("(config centre key /p/config/policies/services/b)")
    assert layer.annotate("policies.services.bb: x") == (
        "policies.services.bb: x (config centre key /p/config/policies)"
    )
    assert layer.annotate("listen.admin: x") == "listen.admin: x"


def test_decode_layer_names_every_bad_key() -> None:
    entries = [
        (b"/p/config/listen", b"{admin: 1}"),
        (b"/p/config/policies/services/b", b"{timeout: ["),
        (b"/p/config/routes", b"[1, 2]"),
        (b"/p/config/routes/a", b"[]"),
        (b"/p/config//x", b"1"),
        (b"/p/config/policies/\xff", b"1"),
    ]
    problems = decode_layer(entries, b"/p/config/", RELOADABLE).problems
    assert len(problems) == 5, problems
    assert problems[0].startswith("/p/config/listen: 'listen' cannot come from the config centre")
    assert problems[1:3] == (
        "/p/config//x: expected a UTF-8 key /p/config/<section>[/<key>...]",
        "/p/config/policies/\ufffd: expected a UTF-8 key /p/config/<section>[/<key>...]",
    )
    # Shorter keys first, so a conflict is blamed on the deeper key.
    assert problems[3] == "/p/config/routes/a: routes is set to a list by a shorter key"
    assert problems[4].startswith("/p/config/policies/services/b: not valid YAML: line 1, column")


def test_reconcile_keeps_running_sections_that_need_a_restart() -> None:
    running = build({"listen": {"outbound": 1}, "policies": {"default": {"timeout": "5s"}}})
    loaded = build({"listen": {"outbound": 9}, "policies": {"default": {"timeout": "7s"}}})
    result = reconcile(running, loaded, running)
    assert result.changed == ("policies",) and result.restart == ("listen",)
    assert result.config is not None
    assert result.config.listen == running.listen
    assert result.config.policies == loaded.policies
    # Told once: the next load with the same listen change does not repeat it.
    again = reconcile(result.config, loaded, loaded)
    assert again == type(again)(None, (), ())


def test_fingerprint_sees_a_rename_and_a_missing_file(tmp_path: Path) -> None:
    path, other = tmp_path / "a.yaml", tmp_path / "b.yaml"
    path.write_text("x: 1\n")
    before = fingerprint(path)
    other.write_text("x: 2\n")
    os.replace(other, path)
    assert fingerprint(path) not in (None, before)
    path.unlink()
    assert fingerprint(path) is None


# ---------------------------------------------------------------- file and signals


async def test_file_edit_applies_new_policies(nursery: trio.Nursery, config_file: Path) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied)
    assert applied.configs == []  # the startup check found nothing new
    await write(config_file, BASE.replace("timeout: 5s", "timeout: 7.5s"))
    config = await applied.next()
    assert timeout_of(config, "zzz") == 7.5 and timeout_of(config, "a") == 2.0
    assert watcher.current is config
    assert (watcher.reloads, watcher.applied, watcher.rejected) == (2, 1, 0)
    assert watcher.last_reload_at is not None


async def test_write_then_rename_is_detected(nursery: trio.Nursery, config_file: Path) -> None:
    applied = Applied()
    await start(nursery, config_file, applied)
    staged = config_file.with_suffix(".tmp")
    await write(staged, BASE.replace("timeout: 2s", "timeout: 3s"))  # same size as before
    os.replace(staged, config_file)
    assert timeout_of(await applied.next(), "a") == 3.0


async def test_deleted_file_keeps_config_until_it_returns(
    nursery: trio.Nursery, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied)
    await trio.Path(config_file).unlink()
    await until(lambda: logged(caplog, "is gone; keeping the running config") == 1)
    assert watcher.rejected == 0 and applied.configs == []
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 4s"))
    assert timeout_of(await applied.next(), "a") == 4.0


async def test_invalid_edit_keeps_old_config_and_logs_key_path(
    nursery: trio.Nursery, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied)
    old = watcher.current
    await write(config_file, BASE + "    b: {retry: {attempts: -1}, timeout: soon}\n")
    await until(lambda: watcher.rejected == 1)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "config reload rejected: policies.services.b.retry.attempts: expected a whole" in (
        "\n".join(messages)
    )
    assert sum(m.startswith("config reload rejected: policies.services.b.") for m in messages) == 2
    assert watcher.current is old and applied.configs == []
    assert watcher.last_error is not None and "retry.attempts" in watcher.last_error

    await write(config_file, BASE + "    b: {retry: {attempts: 1}}\n")
    config = await applied.next()
    assert config.policies.base("b").retry.attempts == 1
    assert watcher.last_error is None


async def test_listen_change_needs_a_restart_and_is_not_applied(
    nursery: trio.Nursery, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied)
    old = watcher.current
    moved = BASE.replace("127.0.0.1:1", "127.0.0.1:9")
    await write(config_file, moved)
    await until(lambda: watcher.reloads == 2)
    assert applied.configs == [] and watcher.current is old
    assert logged(caplog, "listen changed: needs a restart to take effect") == 1
    assert watcher.status()["pending_restart"] == ["listen"]

    await write(config_file, moved.replace("timeout: 5s", "timeout: 6s"))
    config = await applied.next()
    assert config.listen == old.listen and timeout_of(config, "x") == 6.0
    assert logged(caplog, "listen changed") == 1  # once per change, not once per reload


async def test_sighup_reloads(nursery: trio.Nursery, config_file: Path) -> None:
    applied = Applied()
    await start(nursery, config_file, applied, poll=False, signals=True)
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 8s"))
    os.kill(os.getpid(), signal.SIGHUP)
    assert timeout_of(await applied.next(), "a") == 8.0


async def test_reload_that_changes_nothing_calls_nothing(
    nursery: trio.Nursery, config_file: Path
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied, poll=False)
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 2000ms"))  # same value
    watcher.trigger()
    await until(lambda: watcher.reloads == 2)
    assert applied.configs == [] and watcher.applied == 0


async def test_burst_of_triggers_is_one_reload(nursery: trio.Nursery, config_file: Path) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied, poll=False)
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 3s"))
    for reason in ("SIGHUP", "file changed", "config centre", "SIGHUP"):
        watcher.trigger(reason)
    assert watcher.pending
    await applied.next()
    assert watcher.reloads == 2 and not watcher.pending


async def test_spaced_burst_waits_for_a_pause(
    nursery: trio.Nursery, config_file: Path, autojump_clock: trio.testing.MockClock
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied, poll=False, debounce=0.1)
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 3s"))
    for _ in range(8):  # a trigger every 50 ms for 400 ms: never a 100 ms pause
        watcher.trigger()
        await trio.sleep(0.05)
        assert watcher.reloads == 1 and applied.configs == []
    last = trio.current_time() - 0.05
    # No deadline here: the autojump clock would fire it while the reload's thread runs.
    await applied.next(guard=False)
    assert trio.current_time() >= last + 0.1
    assert watcher.reloads == 2


async def test_endless_burst_still_reloads(nursery: trio.Nursery, config_file: Path) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied, poll=False, debounce=0.1, max_settle=0.3)
    await write(config_file, BASE.replace("timeout: 2s", "timeout: 3s"))
    began = trio.current_time()
    with trio.fail_after(GUARD):
        while not applied.configs:
            watcher.trigger()  # the burst itself (never a 100 ms pause), not a wait
            await trio.sleep(0.02)
    # It waited for max_settle (not merely one debounce), then reloaded mid-burst.
    assert trio.current_time() - began >= 0.3


# ---------------------------------------------------------------- config centre (real etcd)


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:8]}"


async def put(etcd: EtcdServer, key: str, value: str) -> None:
    body = {"key": b64(key.encode()), "value": b64(value.encode())}
    await trio.to_thread.run_sync(etcd.post, "/v3/kv/put", body)


async def delete(etcd: EtcdServer, key: str) -> None:
    await trio.to_thread.run_sync(etcd.post, "/v3/kv/deleterange", {"key": b64(key.encode())})


def centre_for(etcd: EtcdServer, prefix: str) -> ConfigCentre:
    return ConfigCentre([etcd.endpoint], prefix=prefix, call_timeout=2.0, backoff=(0.05, 0.2))


async def test_centre_key_is_merged_over_the_file(
    nursery: trio.Nursery, config_file: Path, etcd: EtcdServer, prefix: str
) -> None:
    applied = Applied()
    centre = centre_for(etcd, prefix)
    await start(nursery, config_file, applied, centre=centre)
    await put(etcd, f"{prefix}/config/policies/services/b", "{timeout: 9s}")
    config = await applied.next()
    assert (timeout_of(config, "a"), timeout_of(config, "b"), timeout_of(config, "x")) == (2, 9, 5)

    # Key by key over the file's block for `a`: its timeout stays, the retry is the centre's.
    await put(etcd, f"{prefix}/config/policies/services/a", '{"retry": {"attempts": 0}}')
    config = await applied.next()
    assert timeout_of(config, "a") == 2.0 and config.policies.base("a").retry.attempts == 0

    await delete(etcd, f"{prefix}/config/policies/services/a")
    config = await applied.next()
    assert config.policies.base("a").retry.attempts == 2  # the file's (default) again


async def test_centre_keys_present_at_start_apply_before_started(
    nursery: trio.Nursery, config_file: Path, etcd: EtcdServer, prefix: str
) -> None:
    await put(etcd, f"{prefix}/config/log_level", "debug")
    applied = Applied()
    watcher = await start(nursery, config_file, applied, centre=centre_for(etcd, prefix))
    assert [c.log_level for c in applied.configs] == ["debug"]
    assert watcher.current.log_level == "debug"


async def test_bad_centre_values_are_rejected_with_their_key(
    nursery: trio.Nursery,
    config_file: Path,
    etcd: EtcdServer,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied = Applied()
    watcher = await start(nursery, config_file, applied, centre=centre_for(etcd, prefix))
    key = f"{prefix}/config/policies/services/b"
    await put(etcd, key, "{timeout: [")
    await until(lambda: watcher.rejected == 1)
    assert logged(caplog, f"config reload rejected: {key}: not valid YAML: line 1") == 1

    await put(etcd, key, "{retry: {attempts: -1}}")
    await until(lambda: watcher.rejected == 2)
    expected = f"attempts: expected a whole number (0 or more), got -1 (config centre key {key})"
    assert logged(caplog, expected) == 1

    await put(etcd, f"{prefix}/config/listen", "{outbound: 9}")
    await until(lambda: watcher.rejected == 3)
    assert logged(caplog, f"{prefix}/config/listen: 'listen' cannot come from the config") >= 1
    assert applied.configs == []

    await delete(etcd, f"{prefix}/config/listen")
    await put(etcd, key, "{retry: {attempts: 1}}")
    config = await applied.next()
    assert config.policies.base("b").retry.attempts == 1 and watcher.last_error is None


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of the test's own, not started yet; stopped at the end."""
    (tmp_path / "own").mkdir()
    server = EtcdServer(tmp_path / "own")
    yield server
    server.stop()


async def test_centre_outage_keeps_config_and_recovers(
    nursery: trio.Nursery,
    config_file: Path,
    own_etcd: EtcdServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trimesh.config.centre")
    applied = Applied()
    centre = centre_for(own_etcd, "/trimesh")
    # etcd is not up yet: the watcher starts anyway, on the file config.
    watcher = await start(nursery, config_file, applied, centre=centre)
    assert centre.reachable is False and timeout_of(watcher.current, "a") == 2.0
    assert logged(caplog, OUTAGE) == 1 and applied.configs == []

    await trio.to_thread.run_sync(own_etcd.start)
    await put(own_etcd, "/trimesh/config/policies/services/b", "{timeout: 9s}")
    assert timeout_of(await applied.next(), "b") == 9.0
    assert centre.reachable is True
    # Retried every 0.05-0.2 s while etcd started, but said once per outage.
    assert logged(caplog, OUTAGE) == 1
    assert logged(caplog, "config centre /trimesh/config/ reachable again") == 1

    await trio.to_thread.run_sync(own_etcd.stop)
    await until(lambda: centre.reachable is False)
    assert logged(caplog, OUTAGE) == 2
    assert timeout_of(watcher.current, "b") == 9.0  # the last keys read stay in force

    await trio.to_thread.run_sync(own_etcd.start)
    await put(own_etcd, "/trimesh/config/policies/services/b", "{timeout: 8s}")
    assert timeout_of(await applied.next(), "b") == 8.0
    assert centre.reachable is True
    assert logged(caplog, "reachable again") == 2
