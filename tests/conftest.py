"""Shared fixtures: every test gets a hang guard; servers bind 127.0.0.1 port 0.

`_no_unhandled_errors` (autouse) fails any test during which trimesh logged
an error with a traceback: such a record means an exception escaped the
error taxonomy (a bug), even when the test's own assertions passed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.etcd_server import EtcdServer
from tests.servers import Upstream


class _Unhandled(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.name.startswith("trimesh"):
            self.records.append(record)


@pytest.fixture(autouse=True)
def _no_unhandled_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    handler = _Unhandled()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.records and "allow_unhandled_errors" not in request.keywords:
        lines = [f"{r.name}: {r.getMessage()}" for r in handler.records]
        pytest.fail("unhandled error logged with a traceback:\n  " + "\n  ".join(lines))


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> AsyncIterator[Upstream]:
    app = Upstream()
    await nursery.start(app.serve)
    yield app


@pytest.fixture
async def cleanup() -> AsyncIterator[list[trio.Process]]:
    """Processes a test started; any still running at the end are killed (by PID)."""
    started: list[trio.Process] = []
    yield started
    for p in started:
        if p.returncode is None:
            p.kill()
            await p.wait()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd on loopback, shared by one test module (skips where etcd is absent).

    A module that stops or reconfigures its server defines its own (see
    tests/test_registry_e2e.py).
    """
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()
