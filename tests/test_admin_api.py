"""The admin API that shows the mesh: effective config (redacted), connections, the task
tree, the runtime log level, and the admin token.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
import trio

from tests.servers import Upstream, sidecar_config, start_sidecar
from trimesh.config.load import ConfigError, build
from trimesh.observe.introspect import JsonFormatter, current_trace
from trimesh.sidecar import Bound


def admin(bound: Bound, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound.admin[1]}", **kw)


async def test_config_is_shown_with_secrets_redacted(nursery: trio.Nursery) -> None:
    raw = sidecar_config(
        registry={"services": {}},
        listen={"admin_token": "s3cret-token"},
        policies={"default": {"timeout": "7s"}},
        observe={
            "access_log": "off",
            "tracing": {"headers": {"Authorization": "Bearer collector-secret"}},
        },
    )
    _, bound = await start_sidecar(nursery, raw)
    async with admin(bound) as http:
        reply = await http.get("/v1/config")
    assert reply.status_code == 200
    body = reply.json()
    assert body["config"]["listen"]["admin_token"] == "<redacted>"
    assert "s3cret-token" not in reply.text and "collector-secret" not in reply.text
    assert body["config"]["policies"]["default"]["timeout"] == 7.0
    assert body["reload"] == {"enabled": False}


async def test_connections_lists_open_downstream_and_upstream(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    raw = sidecar_config(registry={"services": {"orders": [f"127.0.0.1:{upstream.port}"]}})
    _, bound = await start_sidecar(nursery, raw)
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{bound.outbound[1]}") as app:
        assert (await app.get("http://orders/a")).status_code == 200
        async with admin(bound) as http:
            body = (await http.get("/v1/connections")).json()
    (conn,) = body["downstream"]["outbound"]
    assert conn["requests"] == 1 and conn["state"] == "idle" and conn["peer"] == "127.0.0.1"
    pooled = body["upstream"]["outbound"][f"127.0.0.1:{upstream.port}"]
    assert pooled["active"] == 0 and len(pooled["idle"]) == 1
    assert body["downstream"]["inbound"] == []


async def test_debug_tasks_shows_the_named_task_tree(nursery: trio.Nursery) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config())
    held = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    async with held, admin(bound) as http:
        with trio.fail_after(5):
            while True:  # poll the admin API until the accept loop has started the task
                body = (await http.get("/debug/tasks")).json()
                if "connection from 127.0.0.1" in json.dumps(body):
                    break
                await trio.sleep(0.01)
    names = json.dumps(body["tree"])
    assert body["tasks"] > 5
    for part in ("Sidecar.run", "run_admin", "UpstreamPool.reaper", "_accept_loop"):
        assert part in names, part


async def test_log_level_changes_at_runtime_and_the_token_guards_it(
    nursery: trio.Nursery,
) -> None:
    _, bound = await start_sidecar(nursery, sidecar_config(listen={"admin_token": "t0k"}))
    root = logging.getLogger()
    before = root.level
    try:
        async with admin(bound) as http:
            assert (await http.get("/v1/log-level")).status_code == 200  # reading is free
            missing = await http.put("/v1/log-level", json={"level": "debug"})
            wrong = await http.put(
                "/v1/log-level", json={"level": "debug"}, headers={"authorization": "Bearer no"}
            )
            auth = {"authorization": "Bearer t0k"}
            bad = await http.put("/v1/log-level", json={"level": "loud"}, headers=auth)
            ok = await http.post("/v1/log-level?level=error", headers=auth)
            assert root.level == logging.ERROR
            assert (await http.get("/v1/log-level")).json() == {"level": "error"}
            not_here = await http.delete("/v1/log-level", headers=auth)
        assert missing.status_code == 401 and "www-authenticate" in missing.headers
        assert wrong.status_code == 403
        assert bad.status_code == 400 and "debug, info" in bad.json()["error"]
        assert ok.status_code == 200 and ok.json() == {"level": "error"}
        assert not_here.status_code == 405
    finally:
        root.setLevel(before)


def test_an_admin_listener_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError) as caught:
        build({"listen": {"admin": "0.0.0.0:30102"}})
    assert any(p.startswith("listen.admin_token: required") for p in caught.value.problems)
    assert build({"listen": {"admin": "0.0.0.0:30102", "admin_token": "x"}})


async def test_off_loopback_every_endpoint_needs_the_token(nursery: trio.Nursery) -> None:
    raw = sidecar_config(listen={"admin": "0.0.0.0:0", "admin_token": "t0k"})
    _, bound = await start_sidecar(nursery, raw)
    async with admin(bound) as http:
        assert (await http.get("/health")).status_code == 401
        token = {"authorization": "Bearer t0k"}
        assert (await http.get("/health", headers=token)).status_code == 200


def test_json_log_lines_carry_the_trace_of_the_request() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("trimesh.test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        token = current_trace.set(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
        try:
            logger.warning("inside %s", "a request")
        finally:
            current_trace.reset(token)
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "outside" and "trace_id" not in first
    assert second["message"] == "inside a request" and second["level"] == "warning"
    assert second["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert second["span_id"] == "b7ad6b7169203331"
