"""Opening the shared `local` registry file: concurrent first opens, and who may read it.

Before: two sidecars opening a fresh file at once failed about one time in
ten with "database is locked" (both raced to switch it to WAL and create
the schema), and the file was created with the umask's default mode.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trimesh.discovery.base import Registration, ServiceKey
from trimesh.discovery.local import LocalRegistry

ORDERS = ServiceKey("orders")


def register_in_own_run(path: Path, port: int, start: threading.Barrier) -> str:
    """What one sidecar does first: open the file and register (its own trio.run)."""

    async def main() -> str:
        async with LocalRegistry(path) as reg:
            start.wait()  # line the openers up: the file is opened lazily, here
            return await reg.register(Registration("orders", "127.0.0.1", port))

    return trio.run(main)


def test_three_openers_of_a_fresh_file_never_see_it_locked(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def opener(path: Path, port: int, start: threading.Barrier) -> None:
        try:
            register_in_own_run(path, port, start)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    for round_ in range(60):
        path = tmp_path / f"round-{round_}" / "registry.db"
        start = threading.Barrier(3, timeout=10)
        threads = [threading.Thread(target=opener, args=(path, p, start)) for p in (1, 2, 3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, f"round {round_}: {errors!r}"
    assert len(list(tmp_path.glob("round-*/registry.db"))) == 60


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import trio
    from trimesh.discovery.base import Registration
    from trimesh.discovery.local import LocalRegistry

    async def main(folder: Path, rounds: int, port: int) -> None:
        for i in range(rounds):
            go = folder / f"go-{i}"
            while not go.exists():  # the parent starts every round for both children
                await trio.sleep(0.001)
            async with LocalRegistry(folder / f"round-{i}.db") as reg:
                await reg.register(Registration("orders", "127.0.0.1", port))
            (folder / f"done-{i}-{port}").touch()

    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    """
)


async def test_two_processes_open_fresh_files_at_once(tmp_path: Path) -> None:
    rounds = 40
    async with trio.open_nursery() as nursery:
        children = [
            await nursery.start(
                trio.run_process, [sys.executable, "-c", _CHILD, str(tmp_path), str(rounds), port]
            )
            for port in ("1", "2")
        ]
        with trio.fail_after(30):
            for i in range(rounds):
                (tmp_path / f"go-{i}").touch()
                while not all((tmp_path / f"done-{i}-{p}").exists() for p in (1, 2)):
                    if any(child.returncode for child in children):
                        pytest.fail(f"a child failed in round {i}")
                    await trio.sleep(0.005)
    async with LocalRegistry(tmp_path / f"round-{rounds - 1}.db") as reg:
        assert [i.port for i in await reg.instances(ORDERS)] == [1, 2]


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask: the modes we see are exactly the ones trimesh asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_file_and_folder_are_private_to_the_owner(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "state" / "trimesh" / "registry.db"
    async with LocalRegistry(path) as reg:
        await reg.register(Registration("orders", "127.0.0.1", 8080))
        files = [path, *path.parent.glob("registry.db-*")]  # WAL and shared memory too
        assert {p.name for p in files} >= {"registry.db", "registry.db-wal", "registry.db-shm"}
        assert {p.name: mode(p) for p in files} == dict.fromkeys((p.name for p in files), 0o600)
    assert mode(path.parent) == 0o700


async def test_existing_folder_and_file_modes_are_left_alone(
    tmp_path: Path, umask_zero: None
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    path = folder / "registry.db"
    path.touch(mode=0o640)
    async with LocalRegistry(path) as reg:
        assert await reg.instances(ORDERS) == ()
    assert (mode(folder), mode(path)) == (0o750, 0o640)
