"""The data path end to end over loopback: a real client, the sidecar, a real upstream."""

from __future__ import annotations

import io
import json
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing

from tests.servers import Seen, Upstream, sidecar_config, start_sidecar
from trimesh.observe.accesslog import AccessLog
from trimesh.sidecar import Bound, Sidecar


def static(**services: Any) -> dict[str, Any]:
    return {"services": services}


async def proxied(nursery: trio.Nursery, app: Upstream, **extra: Any) -> tuple[Sidecar, Bound]:
    raw = sidecar_config(
        service={"name": "consumer"},
        registry=static(orders=[{"address": f"127.0.0.1:{app.port}"}], empty=[]),
        app={"ports": {"rest": app.port}},
        **extra,
    )
    return await start_sidecar(nursery, raw)


def client(bound: Bound) -> httpx.AsyncClient:
    return httpx.AsyncClient(proxy=f"http://127.0.0.1:{bound.outbound[1]}", timeout=10)


async def raw_request(port: int, data: bytes, *, limit: float = 5) -> bytes:
    """Send raw bytes, read until the server closes (bounded by `limit`)."""
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
            return b"".join(chunks)


async def test_get_forwards_with_proxy_headers(nursery: trio.Nursery, upstream: Upstream) -> None:
    _, bound = await proxied(nursery, upstream)
    async with client(bound) as c:
        r = await c.get("http://orders/api/1?x=2", headers={"X-Custom": "yes"})
    assert r.status_code == 200
    assert r.json() == {"method": "GET", "target": "/api/1?x=2", "size": 0}
    assert r.headers["x-app"] == "echo"
    assert "trimesh-" in r.headers["via"]
    seen = upstream.seen[0]
    assert seen.header(b"host") == b"orders"
    assert seen.header(b"x-custom") == b"yes"
    assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
    assert seen.header(b"x-forwarded-proto") == b"http"
    assert seen.header(b"x-forwarded-host") == b"orders"
    assert seen.header(b"x-forwarded-port") == b"80"
    assert seen.header(b"x-cse-context") == b'{"x-cse-src-microservice":"consumer"}'
    assert seen.header(b"via").startswith(b"1.1 trimesh-")


async def test_hop_by_hop_headers_are_not_forwarded(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    _, bound = await proxied(nursery, upstream)
    request = (
        b"GET http://orders/h HTTP/1.1\r\nHost: orders\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\n"
    )
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
        await stream.send_all(request)
        await upstream.request_arrived.wait()
        await stream.aclose()
    names = {n for n, _ in upstream.seen[0].headers}
    for hop in (
        b"connection",
        b"x-secret",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"proxy-authorization",
        b"upgrade",
    ):
        assert hop not in names
    assert b"x-kept" in names


async def test_post_body_and_keepalive_reuse(nursery: trio.Nursery, upstream: Upstream) -> None:
    sidecar, bound = await proxied(nursery, upstream)
    async with client(bound) as c:
        for size in (0, 1, 70000, 300000):
            r = await c.post("http://orders/p", content=b"z" * size)
            assert r.json()["size"] == size
        chunked = await c.post("http://orders/c", content=_chunks([b"ab", b"", b"cde" * 9000]))
    assert chunked.json()["size"] == 2 + 27000
    assert [s.body for s in upstream.seen[:2]] == [b"", b"z"]
    assert upstream.seen[-1].header(b"transfer-encoding") == b"chunked"
    # Every request went over one pooled upstream connection.
    assert upstream.connections == 1
    assert sidecar.pools[0].idle_count() == 1


async def _chunks(parts: list[bytes]) -> Any:
    for p in parts:
        yield p


@pytest.mark.parametrize(
    ("host", "status", "kind"),
    [("nothere", 502, "service-not-found"), ("empty", 503, "no-instance")],
)
async def test_resolution_errors(
    nursery: trio.Nursery, upstream: Upstream, host: str, status: int, kind: str
) -> None:
    _, bound = await proxied(nursery, upstream)
    async with client(bound) as c:
        r = await c.get(f"http://{host}/x")
        again = await c.get("http://orders/x")  # the connection stays usable
    assert (r.status_code, r.headers["x-trimesh-error"]) == (status, kind)
    assert kind in r.text
    assert again.status_code == 200


async def test_origin_form_on_outbound_explains_http_proxy(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    _, bound = await proxied(nursery, upstream)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{bound.outbound[1]}/api")
    assert r.status_code == 400
    assert "HTTP_PROXY" in r.text
    assert upstream.seen == []


async def test_upstream_connect_failure(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    raw = sidecar_config(registry=static(dead=[{"address": f"127.0.0.1:{dead_port}"}]))
    _, bound = await start_sidecar(nursery, raw)
    async with client(bound) as c:
        r = await c.get("http://dead/")
    assert (r.status_code, r.headers["x-trimesh-error"]) == (502, "upstream-connect")


async def test_upstream_timeout(nursery: trio.Nursery) -> None:
    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep_forever()
        raise AssertionError

    app = Upstream(slow)
    await nursery.start(app.serve)
    _, bound = await proxied(nursery, app, upstream={"response_timeout": "200ms"})
    async with client(bound) as c:
        with trio.fail_after(5):
            r = await c.get("http://orders/slow")
    assert (r.status_code, r.headers["x-trimesh-error"]) == (504, "upstream-timeout")
    with trio.fail_after(2):
        await app.disconnected.wait()  # the timed-out upstream connection is closed


async def test_upstream_reset_is_upstream_protocol(nursery: trio.Nursery) -> None:
    async def drop(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 0, [], b""

    app = Upstream(drop)
    await nursery.start(app.serve)
    _, bound = await proxied(nursery, app)
    async with client(bound) as c:
        r = await c.get("http://orders/x")
    assert (r.status_code, r.headers["x-trimesh-error"]) == (502, "upstream-protocol")


async def test_malformed_upstream_response(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, garbage, 0)
    port = listeners[0].socket.getsockname()[1]
    raw = sidecar_config(registry=static(bad=[{"address": f"127.0.0.1:{port}"}]))
    _, bound = await start_sidecar(nursery, raw)
    async with client(bound) as c:
        r = await c.get("http://bad/")
    assert (r.status_code, r.headers["x-trimesh-error"]) == (502, "upstream-protocol")


async def test_loop_detected(nursery: trio.Nursery) -> None:
    sidecar = None
    # A service whose instance is the sidecar's own outbound port.
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = sidecar_config(
        listen={"outbound": f"127.0.0.1:{port}"},
        registry=static(me=[{"address": f"127.0.0.1:{port}"}]),
    )
    sidecar, _ = await start_sidecar(nursery, raw)
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}") as c:
        r = await c.get("http://me/")
    # A registry row pointing at our own listener is never used at all...
    assert (r.status_code, r.headers["x-trimesh-error"]) == (503, "no-instance")
    # ...and a request that already passed us (our Via token) is a loop.
    r2 = await raw_request(
        port,
        b"GET http://me/ HTTP/1.1\r\nHost: me\r\nVia: 1.1 "
        + sidecar.via_token("outbound")
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert r2.startswith(b"HTTP/1.1 508 ")
    assert b"x-trimesh-error: loop-detected" in r2


async def test_inbound_uses_declared_ports_only(nursery: trio.Nursery) -> None:
    main, other = Upstream(), Upstream()
    await nursery.start(main.serve)
    await nursery.start(other.serve)
    raw = sidecar_config(app={"ports": {"rest": main.port, "admin": other.port}})
    _, bound = await start_sidecar(nursery, raw)
    base = f"http://127.0.0.1:{bound.inbound[1]}"
    async with httpx.AsyncClient() as c:
        await c.get(f"{base}/a")
        await c.get(f"{base}/b", headers={"X-Forwarded-Port": str(other.port)})
        await c.get(f"{base}/c", headers={"X-Forwarded-Port": str(bound.admin[1])})
        await c.get(f"{base}/d", headers={"X-Forwarded-Port": "22"})
    assert [s.target for s in main.seen] == [b"/a", b"/c", b"/d"]
    assert [s.target for s in other.seen] == [b"/b"]


async def test_head_204_304_have_no_body(nursery: trio.Nursery) -> None:
    async def respond(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status = int(seen.target.strip(b"/") or b"200")
        body = b"" if status in (204, 304) else b"hello"
        return status, [], body

    app = Upstream(respond)
    await nursery.start(app.serve)
    _, bound = await proxied(nursery, app)
    out = await raw_request(
        bound.outbound[1],
        b"HEAD http://orders/200 HTTP/1.1\r\nHost: orders\r\n\r\n"
        b"GET http://orders/204 HTTP/1.1\r\nHost: orders\r\n\r\n"
        b"GET http://orders/304 HTTP/1.1\r\nHost: orders\r\n\r\n"
        b"GET http://orders/200 HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    )
    responses = out.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in responses] == [b"200", b"204", b"304", b"200"]
    assert b"content-length: 5" in responses[0]
    assert responses[0].endswith(b"\r\n\r\n")  # HEAD: headers only
    assert responses[1].endswith(b"\r\n\r\n") and responses[2].endswith(b"\r\n\r\n")
    assert responses[3].endswith(b"\r\n\r\nhello")


async def _continue_then_echo(stream: trio.SocketStream) -> None:
    """An upstream that answers `100 Continue` before reading the body, as RFC 9110 asks."""
    conn = h11.Connection(h11.SERVER)
    body = b""
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await stream.send_all(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        response = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=body)))


async def test_expect_100_continue_is_relayed_before_the_body(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(trio.serve_tcp, _continue_then_echo, 0)
    port = listeners[0].socket.getsockname()[1]
    _, bound = await start_sidecar(
        nursery, sidecar_config(registry=static(c=[f"127.0.0.1:{port}"]))
    )
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
        async with stream:
            await stream.send_all(
                b"POST http://c/e HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            # A strict client sends nothing more until it sees the 100.
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"hello")


async def test_trailers_pass_through(nursery: trio.Nursery, upstream: Upstream) -> None:
    _, bound = await proxied(nursery, upstream)
    await raw_request(
        bound.outbound[1],
        b"POST http://orders/t HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n",
    )
    assert upstream.seen[0].body == b"abc"
    assert upstream.seen[0].trailers == [(b"x-checksum", b"42")]


async def test_pipelined_requests_answered_in_order(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    _, bound = await proxied(nursery, upstream)
    reqs = b"".join(b"GET http://orders/%d HTTP/1.1\r\nHost: orders\r\n\r\n" % i for i in range(5))
    out = await raw_request(
        bound.outbound[1],
        reqs + b"GET http://orders/last HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n",
    )
    targets = [part.split(b'"target": "')[1].split(b'"')[0] for part in out.split(b"HTTP/1.1 ")[1:]]
    assert targets == [b"/0", b"/1", b"/2", b"/3", b"/4", b"/last"]


async def test_connection_close_from_upstream_is_not_pooled(nursery: trio.Nursery) -> None:
    async def close_after(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # Answer, then close: the pooled connection is dead when reused.
        return 200, [(b"connection", b"close")] if seen.target == b"/bye" else [], b"ok"

    app = Upstream(close_after)
    await nursery.start(app.serve)
    sidecar, bound = await proxied(nursery, app)
    async with client(bound) as c:
        assert (await c.get("http://orders/one")).status_code == 200
        assert sidecar.pools[0].idle_count() == 1
        # Make the upstream close its idle side: it handles /bye with Connection: close,
        # so the proxy must not pool it, and a later request opens a fresh connection.
        assert (await c.get("http://orders/bye")).status_code == 200
        assert (await c.get("http://orders/two")).status_code == 200
    assert app.connections == 2


async def test_client_disconnect_closes_upstream_promptly(nursery: trio.Nursery) -> None:
    async def hang(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep_forever()
        raise AssertionError

    app = Upstream(hang)
    await nursery.start(app.serve)
    sidecar, bound = await proxied(nursery, app)
    stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
    await stream.send_all(b"GET http://orders/hang HTTP/1.1\r\nHost: orders\r\n\r\n")
    with trio.fail_after(5):
        await app.request_arrived.wait()
    await stream.aclose()
    # Every timeout in play is 30 s or more: only the disconnect itself can end it this soon.
    with trio.fail_after(1):
        await app.disconnected.wait()
    assert sidecar.pools[0].idle_count() == 0


async def test_admin_endpoints(nursery: trio.Nursery, upstream: Upstream) -> None:
    _, bound = await proxied(nursery, upstream)
    base = f"http://127.0.0.1:{bound.admin[1]}"
    async with httpx.AsyncClient() as c:
        health = await c.get(f"{base}/health")
        ready = await c.get(f"{base}/ready")
        mesher = await c.get(f"{base}/v1/mesher/health")
        version = await c.get(f"{base}/v1/mesher/version")
        missing = await c.get(f"{base}/nope")
    assert health.status_code == 200
    assert ready.json()["ready"] is True
    assert mesher.json()["serviceName"] == "consumer"
    assert mesher.json()["status"] == "green"
    assert set(version.json()) == {"version", "commit", "built", "Go-Chassis"}
    assert missing.status_code == 404


async def test_max_connections_per_listener(nursery: trio.Nursery, upstream: Upstream) -> None:
    _, bound = await proxied(nursery, upstream, limits={"max_connections": 2})
    held = [await trio.open_tcp_stream("127.0.0.1", bound.outbound[1]) for _ in range(2)]
    out = await raw_request(bound.outbound[1], b"GET http://orders/ HTTP/1.1\r\nHost: o\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 ")
    assert b"x-trimesh-error: overloaded" in out
    for s in held:
        await s.aclose()


async def test_access_log_is_one_json_line_per_request(
    nursery: trio.Nursery, upstream: Upstream
) -> None:
    sink = io.StringIO()
    log = AccessLog(sink)
    raw = sidecar_config(
        registry=static(orders=[{"address": f"127.0.0.1:{upstream.port}"}]),
    )
    _, bound = await start_sidecar(nursery, raw, access_log=log)
    async with client(bound) as c:
        await c.post("http://orders/a", content=b"12345")
        await c.get("http://missing/b")
    log.flush()  # lines are written in batches; shutdown flushes like this
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(e["method"], e["service"], e["status"], e["error"]) for e in lines] == [
        ("POST", "orders", 200, None),
        ("GET", None, 502, "service-not-found"),
    ]
    assert lines[0]["bytes_in"] == 5 and lines[0]["bytes_out"] > 0
    assert lines[0]["upstream"] == f"127.0.0.1:{upstream.port}"
    assert lines[0]["duration_ms"] >= 0


async def test_responses_during_drain_say_connection_close(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(seen: Seen, up: Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await release.wait()
        return 200, [], b"done"

    app = Upstream(slow)
    await nursery.start(app.serve)
    sidecar, bound = await proxied(nursery, app)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", bound.outbound[1])
        async with stream:
            await stream.send_all(b"GET http://orders/ HTTP/1.1\r\nHost: orders\r\n\r\n")
            await app.request_arrived.wait()
            sidecar.shutdown()
            await trio.testing.wait_all_tasks_blocked()
            assert sidecar.drain.draining
            release.set()
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in reply.lower()
    assert reply.endswith(b"done")
