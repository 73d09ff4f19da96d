"""Header rules a proxy applies (RFC 9110 7.6), sans-IO."""

from __future__ import annotations

import json
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_headers import check, parse
from trimesh.http import headers as hh

H = list[tuple[bytes, bytes]]
CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus" / "headers"
VIA = b"1.1 trimesh-ab"


@pytest.mark.parametrize(
    ("given_", "kept", "length"),
    [
        ([(b"x-a", b"1"), (b"accept", b"*/*")], [(b"x-a", b"1"), (b"accept", b"*/*")], None),
        (
            [(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
             (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
             (b"proxy-connection", b"keep-alive"), (b"proxy-authorization", b"Basic eDp5"),
             (b"proxy-authenticate", b"Basic"), (b"x-kept", b"1")],
            [(b"x-kept", b"1")],
            None,
        ),
        # RFC 9110 6.6.2: Trailer is end-to-end metadata, not hop-by-hop.
        ([(b"trailer", b"x-sum"), (b"x-a", b"1")], [(b"trailer", b"x-sum"), (b"x-a", b"1")], None),
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
        # A client cannot remove Host or the framing by naming them.
        ([(b"host", b"o"), (b"connection", b"host, Content-Length, transfer-encoding, x-a"),
          (b"content-length", b"3"), (b"x-a", b"1"), (b"x-b", b"2")],
         [(b"host", b"o"), (b"x-b", b"2")], b"3"),
        # Other fields it names go, ours included: the router sets x-cse-context anew.
        ([(b"connection", b"x-cse-context, via, x-forwarded-for"), (b"x-cse-context", b"{}"),
          (b"via", b"1.0 a"), (b"x-forwarded-for", b"10.0.0.1"), (b"x-a", b"1")],
         [(b"x-a", b"1")], None),
        # Underscores: never read as their dashed twins by a backend.
        ([(b"transfer_encoding", b"chunked"), (b"content_length", b"9"),
          (b"x_forwarded_for", b"10.0.0.1"), (b"x_cse_context", b"{}"), (b"x-a", b"1")],
         [(b"x-a", b"1")], None),
        ([(b"connection", b"x_a"), (b"x_a", b"1"), (b"x_b", b"2")], [], None),
    ],
    ids=["end-to-end-kept", "hop-by-hop", "trailer-is-end-to-end", "length", "connection-named",
         "two-connections", "duplicates-in-order", "connection-cannot-name-host-or-framing",
         "connection-names-our-fields", "underscores-dropped", "underscores-named"],
)  # fmt: skip
def test_end_to_end(given_: H, kept: H, length: bytes | None) -> None:
    assert hh.end_to_end(given_) == (kept, length)


def test_end_to_end_keeps_underscores_when_allowed() -> None:
    received = [(b"x_a", b"1"), (b"transfer_encoding", b"chunked"), (b"connection", b"x_b"),
                (b"x_b", b"2"), (b"content-length", b"1")]  # fmt: skip
    assert hh.end_to_end(received, allow_underscores=True) == (
        [(b"x_a", b"1"), (b"transfer_encoding", b"chunked")],
        b"1",
    )


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
    ("given_", "options", "kept", "length", "keepalive"),
    [
        ([(b"content-length", b"5"), (b"server", b"app")], {},
         [(b"content-length", b"5"), (b"server", b"app"), (b"via", VIA)], 5, None),
        ([(b"connection", b"keep-alive, x-a"), (b"keep-alive", b"timeout=5, max=100"),
          (b"transfer-encoding", b"chunked"), (b"x-a", b"1"), (b"trailer", b"x-sum"),
          (b"proxy-authenticate", b"Basic"), (b"upgrade", b"h2c")], {},
         [(b"trailer", b"x-sum"), (b"via", VIA)], None, 5),
        # RFC 9112 6.3: Transfer-Encoding framed the body, so Content-Length is not passed on.
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], {},
         [(b"via", VIA)], None, None),
        ([(b"connection", b"content-length, x-b"), (b"content-length", b"0"), (b"x-b", b"1")],
         {}, [(b"content-length", b"0"), (b"via", VIA)], 0, None),
        ([(b"via", b"1.0 a"), (b"x", b"1"), (b"via", b"1.1 b")], {},
         [(b"via", b"1.0 a"), (b"x", b"1"), (b"via", b"1.1 b, " + VIA)], None, None),
        ([(b"connection", b"via"), (b"via", b"1.0 a")], {}, [(b"via", VIA)], None, None),
        ([(b"x_a", b"1"), (b"set-cookie", b"a=1")], {},
         [(b"set-cookie", b"a=1"), (b"via", VIA)], None, None),
        ([(b"x_a", b"1")], {"allow_underscores": True}, [(b"x_a", b"1"), (b"via", VIA)],
         None, None),
        ([(b"connection", b"close"), (b"content-length", b"2")], {"close": True},
         [(b"content-length", b"2"), (b"via", VIA), (b"connection", b"close")], 2, None),
        ([], {}, [(b"via", VIA)], None, None),
    ],
    ids=["length-kept", "hop-by-hop", "te-overrides-length", "connection-cannot-name-length",
         "via-appended-to-last", "via-nominated", "underscores-dropped", "underscores-allowed",
         "close", "1xx-empty"],
)  # fmt: skip
def test_response_headers(
    given_: H, options: dict[str, bool], kept: H, length: int | None, keepalive: int | None
) -> None:
    assert hh.response_headers(given_, VIA, **options) == (kept, length, keepalive)


def test_response_headers_reads_h11_parsed_heads() -> None:
    """The shapes h11 hands over: a final response and a 1xx."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=4\r\n\r\nok"
    )
    early, final = client.next_event(), client.next_event()
    assert isinstance(early, h11.InformationalResponse) and isinstance(final, h11.Response)
    assert hh.response_headers(hh.items(early.headers), VIA) == (
        [(b"link", b"</a.css>; rel=preload"), (b"via", VIA)],
        None,
        None,
    )
    assert hh.response_headers(hh.items(final.headers), VIA) == (
        [(b"content-length", b"2"), (b"via", VIA)],
        2,
        4,
    )


@pytest.mark.parametrize(
    ("value", "timeout"),
    [
        (b"timeout=5", 5), (b"timeout=5, max=100", 5), (b"max=100, Timeout = 30", 30),
        (b'timeout="7"', 7), (b"timeout=0", 0), (b"max=3", None), (b"", None),
        (b"timeout=", None), (b"timeout=-1", None), (b"timeout=1.5", None),
        (b"timeout=abc, timeout=5", None), (b"timeout=99999999999999", None),
        ("timeout=\u0663".encode(), None),
    ],
)  # fmt: skip
def test_keepalive_timeout(value: bytes, timeout: int | None) -> None:
    assert hh.keepalive_timeout(value) == timeout


@pytest.mark.parametrize(
    ("given_", "kept"),
    [
        ([(b"x-checksum", b"42"), (b"server-timing", b"db;dur=5"), (b"grpc-status", b"0")],
         [(b"x-checksum", b"42"), (b"server-timing", b"db;dur=5"), (b"grpc-status", b"0")]),
        ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked"), (b"host", b"x"),
          (b"connection", b"close"), (b"te", b"trailers"), (b"trailer", b"x"),
          (b"keep-alive", b"timeout=1"), (b"upgrade", b"x")], []),
        ([(b"authorization", b"Bearer t"), (b"cookie", b"a=1"), (b"set-cookie", b"b=2"),
          (b"proxy-authorization", b"Basic x"), (b"proxy-foo", b"1"),
          (b"www-authenticate", b"Basic")], []),
        ([(b"expect", b"100-continue"), (b"range", b"bytes=0-1"), (b"content-type", b"a/b"),
          (b"content-encoding", b"gzip"), (b"cache-control", b"no-store"),
          (b"location", b"/x"), (b"if-match", b"*")], []),
        ([(b"via", b"1.0 z"), (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-host", b"h"),
          (b"x-forwarded-proto", b"http"), (b"x-forwarded-port", b"1"),
          (b"x-cse-context", b"{}"), (b"forwarded", b"for=x")], []),
        ([(b"x_checksum", b"1"), (b"x-checksum", b"2")], [(b"x-checksum", b"2")]),
    ],
    ids=["end-to-end", "framing", "authentication", "modifiers-controls-format", "ours",
         "underscores"],
)  # fmt: skip
def test_filter_trailers(given_: H, kept: H) -> None:
    assert hh.filter_trailers(given_) == kept


def test_filter_trailers_keeps_underscores_when_allowed() -> None:
    assert hh.filter_trailers([(b"x_a", b"1"), (b"host", b"x")], allow_underscores=True) == [
        (b"x_a", b"1")
    ]


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
    # Into the last field, so the combined list stays in hop order.
    assert headers[0] == (b"via", b"1.0 a")
    assert headers[2] == (b"via", b"1.0 b, 1.1 c")
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
    [*sorted(hh.HOP_BY_HOP), b"host", b"x-a", b"x-b", b"accept", b"via", b"x-forwarded-for",
     b"trailer", b"x_a", b"transfer_encoding", b"cookie", b"proxy-x", b"x-cse-context"]
)  # fmt: skip
VALUES = st.sampled_from(
    [b"1", b"x-a", b"x-b, close", b"Keep-Alive", b"upgrade", b"websocket", b"host", b"x_a",
     b"timeout=3", b"content-length, via"]
)  # fmt: skip
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)


@settings(max_examples=200, deadline=None)
@given(HEADERS, st.booleans(), st.booleans())
def test_end_to_end_is_idempotent(headers: H, keep_upgrade: bool, allow: bool) -> None:
    once, _ = hh.end_to_end(headers, keep_upgrade=keep_upgrade, allow_underscores=allow)
    twice, length = hh.end_to_end(once, keep_upgrade=keep_upgrade, allow_underscores=allow)
    assert twice == once
    assert length is None


@settings(max_examples=200, deadline=None)
@given(HEADERS, st.booleans())
def test_end_to_end_keeps_exactly_the_end_to_end_fields_in_order(headers: H, allow: bool) -> None:
    named = hh.connection_tokens(headers) - hh.NOT_NOMINABLE
    kept, length = hh.end_to_end(headers, allow_underscores=allow)
    assert kept == [
        (n, v)
        for n, v in headers
        if n not in hh.HOP_BY_HOP and n not in named and (allow or b"_" not in n)
    ]
    lengths = [v for n, v in headers if n == b"content-length"]
    assert length == (lengths[-1] if lengths else None)
    assert [f for f in headers if f[0] == b"host"] == [f for f in kept if f[0] == b"host"]


@settings(max_examples=200, deadline=None)
@given(HEADERS, st.booleans())
def test_filter_trailers_never_passes_a_forbidden_field(headers: H, allow: bool) -> None:
    kept = hh.filter_trailers(headers, allow_underscores=allow)
    assert not any(n in hh.TRAILER_FORBIDDEN or n.startswith(b"proxy-") for n, _ in kept)
    assert allow or not any(b"_" in n for n, _ in kept)
    assert hh.filter_trailers(kept, allow_underscores=allow) == kept


@settings(max_examples=200, deadline=None)
@given(HEADERS, st.booleans(), st.booleans())
def test_response_headers_leave_no_hop_by_hop_field(headers: H, allow: bool, close: bool) -> None:
    # h11 would have merged Content-Length fields into one valid value.
    headers = [(n, b"7" if n == b"content-length" else v) for n, v in headers]
    kept, length, _ = hh.response_headers(headers, VIA, allow_underscores=allow, close=close)
    names = [n for n, _ in kept]
    assert not set(names) & (hh.HOP_BY_HOP - {b"content-length", b"connection"})
    assert names.count(b"connection") == int(close)
    assert [v for n, v in kept if n == b"via"][-1].endswith(VIA)
    assert length == (7 if b"content-length" in names else None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(
    lambda flags, fields: bytes([flags]) + b"\n".join(b"%s: %s" % f for f in fields),
    st.integers(0, 7),
    HEADERS,
))  # fmt: skip
def test_fuzz_invariant_holds_on_header_shaped_noise(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_fuzz_invariant_holds_on_the_seed_corpus(path: Path) -> None:
    assert parse(path.read_bytes()) is not None, "a seed h11 refuses exercises nothing"
    check(path.read_bytes())
