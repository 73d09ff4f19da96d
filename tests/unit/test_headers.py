"""Header rules a proxy applies (RFC 9110 7.6), sans-IO."""

from __future__ import annotations

import json

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimesh.http import headers as hh

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(
    ("given_", "kept", "length"),
    [
        ([(b"x-a", b"1"), (b"accept", b"*/*")], [(b"x-a", b"1"), (b"accept", b"*/*")], None),
        (
            [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
             (b"trailer", b"x-sum"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
             (b"proxy-connection", b"keep-alive"), (b"proxy-authorization", b"Basic eDp5"),
             (b"proxy-authenticate", b"Basic"), (b"x-kept", b"1")],
            [(b"x-kept", b"1")],
            None,
        ),
        ([(b"content-length", b"12"), (b"x-a", b"1")], [(b"x-a", b"1")], b"12"),
        (
            [(b"connection", b"X-Secret , x-other"), (b"x-secret", b"s"), (b"x-other", b"o"),
             (b"x-kept", b"k")],
            [(b"x-kept", b"k")],
            None,
        ),
        ([(b"connection", b"close"), (b"connection", b"x-b"), (b"x-b", b"1")], [], None),
        ([(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b"3")],
         [(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b"3")], None),
    ],
    ids=["end-to-end-kept", "hop-by-hop", "length", "connection-named", "two-connections",
         "duplicates-in-order"],
)  # fmt: skip
def test_end_to_end(given_: H, kept: H, length: bytes | None) -> None:
    assert hh.end_to_end(given_) == (kept, length)


def test_end_to_end_keeps_a_websocket_upgrade() -> None:
    received = [(b"connection", b"Upgrade, x-a"), (b"upgrade", b"websocket"), (b"x-a", b"1"),
                (b"sec-websocket-key", b"k")]  # fmt: skip
    kept, _ = hh.end_to_end(received, keep_upgrade=True)
    assert kept == [(b"sec-websocket-key", b"k"), (b"connection", b"upgrade"),
                    (b"upgrade", b"websocket")]  # fmt: skip


def test_end_to_end_drops_names_the_caller_replaces() -> None:
    received = [(b"host", b"a"), (b"x-cse-context", b"{}"), (b"x-a", b"1")]
    assert hh.end_to_end(received, drop=frozenset({b"host", b"x-cse-context"})) == (
        [(b"x-a", b"1")],
        None,
    )


@pytest.mark.parametrize(
    ("value", "tokens"),
    [(b"close", {b"close"}), (b" Keep-Alive ,X-A,, ", {b"keep-alive", b"x-a"}), (b"", set())],
)
def test_connection_tokens(value: bytes, tokens: set[bytes]) -> None:
    assert hh.connection_tokens([(b"connection", value), (b"x", b"close")]) == tokens


def test_items_reads_h11_headers_as_a_plain_list() -> None:
    request = h11.Request(method=b"GET", target=b"/", headers=[("Host", "a"), ("X-A", "1")])
    assert hh.items(request.headers) == [(b"host", b"a"), (b"x-a", b"1")]
    assert hh.items([(b"x", b"1")]) == [(b"x", b"1")]


@pytest.mark.parametrize(
    ("via", "found"),
    [
        (b"1.1 trimesh-ab", True),
        (b"1.0 fred, 1.1 trimesh-ab (trimesh)", True),
        (b"1.1 trimesh-abc", False),
        (b"trimesh-ab", False),
        (b"1.1 other", False),
    ],
)
def test_via_has(via: bytes, found: bool) -> None:
    assert hh.via_has([(b"via", via)], b"trimesh-ab") is found


def test_list_helpers() -> None:
    headers: H = [(b"via", b"1.0 a"), (b"x", b"1"), (b"via", b"1.0 b")]
    hh.append_list(headers, b"via", b"1.1 c")
    assert headers[0] == (b"via", b"1.0 a, 1.1 c")
    hh.append_list(headers, b"x-forwarded-for", b"10.0.0.1")
    assert headers[-1] == (b"x-forwarded-for", b"10.0.0.1")
    hh.set_default(headers, b"x", b"2")
    hh.set_default(headers, b"y", b"3")
    assert hh.get(headers, b"x") == b"1" and hh.get(headers, b"y") == b"3"
    kept, _ = hh.end_to_end(headers, drop=frozenset({b"via"}))
    kept.append((b"via", b"only"))
    assert [v for n, v in kept if n == b"via"] == [b"only"]
    assert hh.get(headers, b"nope") is None


@pytest.mark.parametrize(
    ("existing", "context"),
    [
        (None, {"x-cse-src-microservice": "me"}),
        (b"", {"x-cse-src-microservice": "me"}),
        (b'{"k": "v", "n": 1}', {"k": "v", "n": "1", "x-cse-src-microservice": "me"}),
        (b'{"x-cse-src-microservice": "spoofed"}', {"x-cse-src-microservice": "me"}),
        (b"not json", {"x-cse-src-microservice": "me"}),
        (b"[1, 2]", {"x-cse-src-microservice": "me"}),
        (b"\xff\xfe", {"x-cse-src-microservice": "me"}),
        (b"1" * 5000, {"x-cse-src-microservice": "me"}),
    ],
    ids=["none", "empty", "merged", "source-overridden", "not-json", "not-a-map", "not-utf8",
         "int-too-long"],
)  # fmt: skip
def test_cse_context(existing: bytes | None, context: dict[str, str]) -> None:
    assert json.loads(hh.cse_context(existing, "me")) == context


def test_cse_context_survives_deeply_nested_json() -> None:
    assert json.loads(hh.cse_context(b"[" * 100_000, "me")) == {"x-cse-src-microservice": "me"}


# ---------------------------------------------------------------- properties

NAMES = st.sampled_from(
    [*sorted(hh.HOP_BY_HOP), b"host", b"x-a", b"x-b", b"accept", b"via", b"x-forwarded-for"]
)
VALUES = st.sampled_from([b"1", b"x-a", b"x-b, close", b"Keep-Alive", b"upgrade", b"websocket"])
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)


@settings(max_examples=200, deadline=None)
@given(HEADERS, st.booleans())
def test_end_to_end_is_idempotent(headers: H, keep_upgrade: bool) -> None:
    once, _ = hh.end_to_end(headers, keep_upgrade=keep_upgrade)
    twice, length = hh.end_to_end(once, keep_upgrade=keep_upgrade)
    assert twice == once
    assert length is None


@settings(max_examples=200, deadline=None)
@given(HEADERS)
def test_end_to_end_keeps_exactly_the_end_to_end_fields_in_order(headers: H) -> None:
    named = hh.connection_tokens(headers)
    kept, length = hh.end_to_end(headers)
    assert kept == [(n, v) for n, v in headers if n not in hh.HOP_BY_HOP and n not in named]
    lengths = [v for n, v in headers if n == b"content-length"]
    assert length == (lengths[-1] if lengths else None)
