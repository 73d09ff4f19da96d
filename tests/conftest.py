"""Shared fixtures: every test gets a hang guard; servers bind 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.servers import Upstream


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> AsyncIterator[Upstream]:
    app = Upstream()
    await nursery.start(app.serve)
    yield app
