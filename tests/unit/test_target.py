"""Request-target parsing (RFC 9112 3.2), sans-IO."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_target import check
from trimesh.errors import BadRequest
from trimesh.http.target import Target, is_origin_form, parse_absolute, parse_authority

CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus" / "target"


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        (b"http://orders/api/1?x=2", Target("orders", None, b"/api/1?x=2")),
        (b"http://orders", Target("orders", None, b"/")),
        (b"http://orders:8080", Target("orders", 8080, b"/")),
        (b"http://orders?x=1", Target("orders", None, b"/?x=1")),
        (b"http://orders#frag", Target("orders", None, b"/")),
        (b"http://orders/a#frag?no", Target("orders", None, b"/a")),
        (b"HTTP://Orders.v2_x~y-z:80/a", Target("Orders.v2_x~y-z", 80, b"/a")),
        (b"ws://chat:9000/socket", Target("chat", 9000, b"/socket")),
        (b"http://orders:080/", Target("orders", 80, b"/")),
        (b"http://orders/a@b:c", Target("orders", None, b"/a@b:c")),
        (b"http://orders//double", Target("orders", None, b"//double")),
    ],
    ids=["path-query", "no-path", "port", "query-only", "fragment", "fragment-first",
         "scheme-case", "websocket", "leading-zero-port", "at-in-path", "double-slash"],
)  # fmt: skip
def test_parse_absolute(target: bytes, parsed: Target) -> None:
    assert parse_absolute(target) == parsed


@pytest.mark.parametrize(
    "target",
    [
        b"https://orders/", b"ftp://orders/", b"orders/a", b"//orders/a", b"http:/orders",
        b"http://", b"http:///a", b"http://user@orders/", b"http://user:pw@orders/",
        b"http://[::1]:80/", b"http://orders:/", b"http://orders:0/", b"http://orders:65536/",
        b"http://orders:+80/", b"http://orders:000080/", b"http://orders:8o/",
        b"http://or%64ers/", b"http://or\xc3\xa9/", b"http://" + b"a" * 254 + b"/",
    ],
    ids=lambda t: t.decode("latin-1")[:40],
)  # fmt: skip
def test_parse_absolute_rejects(target: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_absolute(target)


@pytest.mark.parametrize(
    ("authority", "parsed"),
    [(b"orders:8080", ("orders", 8080)), (b"a:1", ("a", 1)), (b"b:65535", ("b", 65535))],
)
def test_parse_authority(authority: bytes, parsed: tuple[str, int]) -> None:
    assert parse_authority(authority) == parsed


@pytest.mark.parametrize(
    "authority", [b"orders", b"orders:", b":80", b"a@orders:80", b"orders:80:80", b"[::1]:80"]
)
def test_parse_authority_rejects(authority: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_authority(authority)


@pytest.mark.parametrize("raw", [b"http://orders\n/", b"orders\n:80"])
def test_host_with_trailing_newline_is_rejected(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        if raw.startswith(b"http"):
            parse_absolute(raw)
        else:
            parse_authority(raw)


def test_target_authority_and_port() -> None:
    assert Target("a", None, b"/").authority == b"a"
    assert Target("a", None, b"/").effective_port == 80
    assert Target("a", 8080, b"/").authority == b"a:8080"
    assert Target("a", 8080, b"/").effective_port == 8080


@pytest.mark.parametrize(
    ("target", "origin"), [(b"/", True), (b"/a?b", True), (b"*", True), (b"http://a/", False)]
)
def test_is_origin_form(target: bytes, origin: bool) -> None:
    assert is_origin_form(target) is origin


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=60) | st.from_regex(rb"\A(http|ws)://[a-z0-9.:@\[\]]{0,12}[/?#]\S{0,12}\Z")
)
def test_fuzz_invariant_holds_for_any_bytes(data: bytes) -> None:
    check(data)


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_fuzz_invariant_holds_on_the_seed_corpus(path: Path) -> None:
    check(path.read_bytes())
