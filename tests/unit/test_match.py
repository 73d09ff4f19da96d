"""Request matching (`trimesh.policy.match`): operators, conditions, config errors, request_info."""

from __future__ import annotations

from typing import Any

import pytest

from trimesh.policy.match import (
    ANY,
    ConfigProblems,
    RequestInfo,
    compile_match,
    request_info,
)


def info(
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    source: str | None = None,
    source_tags: dict[str, str] | None = None,
) -> RequestInfo:
    return RequestInfo(method, path, headers or {}, source, source_tags or {})


def header_matches(op: str, operand: Any, value: str | None, fold: bool = False) -> bool:
    ops: dict[str, Any] = {op: operand}
    if fold:
        ops["caseInsensitive"] = True
    match = compile_match({"headers": {"X-User": ops}}, "m")
    return match.matches(info(headers={} if value is None else {"x-user": value}))


# (operator, operand, caseInsensitive, header value or None if absent, matches)
OPERATORS = [
    ("exact", "vip", False, "vip", True),
    ("exact", "vip", False, "VIP", False),
    ("exact", "vip", False, "vip2", False),
    ("exact", "vip", True, "VIP", True),
    ("exact", "VIP", True, "vip", True),
    ("exact", "", False, "", True),
    ("exact", 18, False, "18", True),  # an integer operand is its digits
    ("exact", "vip", False, None, False),
    ("regex", "v.p", False, "vip", True),
    ("regex", "v.p", False, "a vip here", False),  # the whole value must match
    ("regex", "v.p", False, "VIP", False),
    ("regex", "v.p", True, "VIP", True),
    ("regex", r"[a-z]+\d", True, "ABC7", True),
    ("regex", r"^(.*?;)?(user=jason)(;.*)?$", False, "a=1;user=jason;b=2", True),
    ("regex", ".*", False, None, False),
    ("prefix", "vi", False, "vip", True),
    ("prefix", "vi", False, "xvip", False),
    ("prefix", "VI", True, "vip", True),
    ("prefix", "vi", False, "VIP", False),
    ("contains", "ip", False, "a vip user", True),
    ("contains", "IP", False, "a vip user", False),
    ("contains", "IP", True, "a vip user", True),
    ("contains", "x", False, None, False),
    ("noEqu", "vip", False, "guest", True),
    ("noEqu", "vip", False, "vip", False),
    ("noEqu", "vip", False, "VIP", True),
    ("noEqu", "vip", True, "VIP", False),
    ("noEqu", "vip", False, None, False),  # a missing header satisfies no operator
    ("less", 10, False, "9", True),  # numbers, not text: "9" > "10" as text
    ("less", 10, False, "10", False),
    ("less", 10, False, "-3", True),
    ("less", "1.5", False, "1.25", True),
    ("less", 10, False, "abc", False),  # not a number: never matches
    ("less", 10, False, "", False),
    ("less", 10, False, "1e0", False),
    ("less", 10, False, None, False),
    ("noLess", 10, False, "10", True),
    ("noLess", 10, False, "11", True),
    ("noLess", 10, False, "9.99", False),
    ("noLess", 10, False, "x", False),
    ("greater", 2.5, False, "3", True),
    ("greater", 2.5, False, "2.5", False),
    ("greater", "+2", False, ".5", False),
    ("greater", 0, False, "nan", False),
    ("noGreater", 10, False, "10", True),
    ("noGreater", 10, False, "10.0", True),
    ("noGreater", 10, False, "10.01", False),
    ("noGreater", -1, False, "-2", True),
    ("noGreater", 10, True, "5", True),  # caseInsensitive is harmless on numbers
]


@pytest.mark.parametrize(("op", "operand", "fold", "value", "expected"), OPERATORS)
def test_header_operator(
    op: str, operand: Any, fold: bool, value: str | None, expected: bool
) -> None:
    assert header_matches(op, operand, value, fold) is expected


def test_all_operators_of_a_header_and_all_headers_must_hold() -> None:
    match = compile_match(
        {
            "headers": {
                "x-age": {"noLess": 18, "less": 65},
                "x-user": {"prefix": "vip", "noEqu": "vip-banned"},
            }
        },
        "m",
    )
    assert match.matches(info(headers={"x-age": "30", "x-user": "vip-gold"}))
    assert not match.matches(info(headers={"x-age": "70", "x-user": "vip-gold"}))
    assert not match.matches(info(headers={"x-age": "30", "x-user": "vip-banned"}))
    assert not match.matches(info(headers={"x-age": "30"}))


# (path condition, request path, matches)
PATHS = [
    ({"exact": "/api/orders"}, "/api/orders", True),
    ({"exact": "/api/orders"}, "/api/orders/1", False),
    ({"exact": "/api/orders"}, "/api/Orders", False),
    ({"prefix": "/api"}, "/api/orders", True),
    ({"prefix": "/api"}, "/api", True),
    ({"prefix": "/api"}, "/apix", True),  # a plain string prefix
    ({"prefix": "/api/"}, "/api", False),
    ({"regex": r"/api/orders/\d+"}, "/api/orders/42", True),
    ({"regex": r"/api/orders/\d+"}, "/api/orders/42/items", False),
    ({"regex": r"/api/orders/\d+"}, "/v2/api/orders/42", False),
]


@pytest.mark.parametrize(("condition", "path", "expected"), PATHS)
def test_path(condition: dict[str, str], path: str, expected: bool) -> None:
    assert compile_match({"path": condition}, "m").matches(info(path=path)) is expected


@pytest.mark.parametrize(
    ("method", "request_method", "expected"),
    [
        ("GET", "GET", True),
        ("get", "GET", True),
        ("GET", "get", True),
        ("GET", "POST", False),
        (["get", "HEAD"], "HEAD", True),
        (["get", "HEAD"], "POST", False),
    ],
)
def test_method(method: Any, request_method: str, expected: bool) -> None:
    assert compile_match({"method": method}, "m").matches(info(request_method)) is expected


def test_source_and_source_tags() -> None:
    match = compile_match({"source": "web", "source_tags": {"version": "2", "zone": "a"}}, "m")
    assert match.matches(info(source="web", source_tags={"version": "2", "zone": "a", "x": "y"}))
    assert not match.matches(info(source="web", source_tags={"version": "2"}))
    assert not match.matches(info(source="web", source_tags={"version": "1", "zone": "a"}))
    assert not match.matches(info(source="cli", source_tags={"version": "2", "zone": "a"}))
    assert not match.matches(info(source=None, source_tags={"version": "2", "zone": "a"}))
    assert compile_match({"source_tags": {"version": 2}}, "m").matches(
        info(source_tags={"version": "2"})
    )


@pytest.mark.parametrize("raw", [None, {}])
def test_an_empty_match_matches_everything(raw: Any) -> None:
    assert compile_match(raw, "m") == ANY
    assert ANY.matches(info("DELETE", "/x", {"a": "b"}, "web", {"v": "1"}))


# (raw match block, every problem expected, in order)
PROBLEMS: list[tuple[Any, list[str]]] = [
    ([], ["r.match: expected a mapping, got list"]),
    ({"sourceTags": {}}, ["r.match.sourceTags: unknown key (write source_tags)"]),
    ({"refer": "t"}, ["r.match.refer: unknown key (match templates are not supported; "
                      "write the match inline)"]),
    ({"host": "x"}, ["r.match.host: unknown key (expected one of source, source_tags, "
                     "method, path, headers)"]),
    ({"source": ""}, ["r.match.source: must not be empty"]),
    ({"source": ["a"]}, ["r.match.source: expected a string, got list"]),
    ({"source_tags": {"version": 1.0}},
     ["r.match.source_tags.version: 1.0 is a YAML number; quote it (1.10 reads as 1.1)"]),
    ({"source_tags": {"canary": True}},
     ["r.match.source_tags.canary: True is a YAML boolean; quote it to mean the text"]),
    ({"source_tags": "v1"}, ["r.match.source_tags: expected a mapping of names to strings"]),
    ({"method": []}, ["r.match.method: expected a method or a non-empty list of methods"]),
    ({"method": ["GET", "GE T", 3]}, ["r.match.method[1]: 'GE T' is not an HTTP method",
                                      "r.match.method[2]: 3 is not an HTTP method"]),
    ({"path": "/api"}, ["r.match.path: expected exactly one of exact, prefix, regex"]),
    ({"path": {"exact": "/a", "prefix": "/b"}},
     ["r.match.path: expected exactly one of exact, prefix, regex"]),
    ({"path": {"suffix": "/a"}},
     ["r.match.path.suffix: unknown key (expected one of exact, prefix, regex)"]),
    ({"path": {"prefix": "api"}}, ["r.match.path.prefix: a path starts with '/', got 'api'"]),
    ({"path": {"regex": "/a("}}, ["r.match.path.regex: not a valid regular expression: "
                                 "missing ), unterminated subpattern at position 2"]),
    ({"headers": ["x-user"]},
     ["r.match.headers: expected a mapping of header name to operators"]),
    ({"headers": {"x user": {"exact": "a"}}}, ["r.match.headers: 'x user' is not a header name"]),
    ({"headers": {"x-user": "vip"}},
     ["r.match.headers.x-user: expected a mapping of operator to value"]),
    ({"headers": {"x-user": {"caseInsensitive": True}}},
     ["r.match.headers.x-user: no operator (expected one of exact, noEqu, prefix, contains, "
      "regex, less, noLess, greater, noGreater)"]),
    ({"headers": {"x-user": {"equals": "a"}}},
     ["r.match.headers.x-user.equals: unknown operator (expected one of exact, noEqu, prefix, "
      "contains, regex, less, noLess, greater, noGreater)"]),
    ({"headers": {"x-user": {"exact": "a", "caseInsensitive": "yes"}}},
     ["r.match.headers.x-user.caseInsensitive: expected true or false"]),
    ({"headers": {"x-age": {"less": "ten"}}},
     ["r.match.headers.x-age.less: expected a number, got 'ten'"]),
    ({"headers": {"x-age": {"greater": True}}},
     ["r.match.headers.x-age.greater: expected a number, got True"]),
    ({"headers": {"x-age": {"noLess": None}}},
     ["r.match.headers.x-age.noLess: expected a number, got None"]),
    ({"headers": {"x-user": {"regex": "[a"}}},
     ["r.match.headers.x-user.regex: not a valid regular expression: "
      "unterminated character set at position 0"]),
    ({"headers": {"x-user": {"exact": None}}},
     ["r.match.headers.x-user.exact: expected a string, got NoneType"]),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), PROBLEMS)
def test_config_problems_name_the_key_path(raw: Any, expected: list[str]) -> None:
    with pytest.raises(ConfigProblems) as caught:
        compile_match(raw, "r.match")
    assert caught.value.problems == expected
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "\n".join(expected)


def test_every_problem_is_collected() -> None:
    raw = {
        "method": 7,
        "path": {"prefix": "x"},
        "headers": {"X-Age": {"less": "old", "regex": "(", "bogus": 1}, "ok": {"exact": "1"}},
        "colour": "red",
    }
    with pytest.raises(ConfigProblems) as caught:
        compile_match(raw, "routes.orders[3].match")
    assert caught.value.problems == [
        "routes.orders[3].match.method: expected a method or a non-empty list of methods",
        "routes.orders[3].match.path.prefix: a path starts with '/', got 'x'",
        "routes.orders[3].match.headers.X-Age.less: expected a number, got 'old'",
        "routes.orders[3].match.headers.X-Age.regex: not a valid regular expression: "
        "missing ), unterminated subpattern at position 0",
        "routes.orders[3].match.headers.X-Age.bogus: unknown operator (expected one of exact, "
        "noEqu, prefix, contains, regex, less, noLess, greater, noGreater)",
        "routes.orders[3].match.colour: unknown key (expected one of source, source_tags, "
        "method, path, headers)",
    ]


def test_match_is_precompiled() -> None:
    match = compile_match(
        {
            "method": ["get", "Post"],
            "headers": {"X-User": {"regex": "v.p", "caseInsensitive": True}, "x-n": {"less": 3}},
        },
        "m",
    )
    assert match.methods == frozenset({"GET", "POST"})
    regex, less = match.headers
    assert (regex.name, less.name) == ("x-user", "x-n")
    assert regex.operand.pattern == "v.p"  # a compiled pattern, not text
    assert str(less.operand) == "3"


# (request target, path seen by matches)
TARGETS = [
    (b"/api/orders", "/api/orders"),
    (b"/api/orders?id=1&x=/y", "/api/orders"),
    (b"/", "/"),
    (b"http://orders/api/1", "/api/1"),
    (b"http://orders:8080/api/1?q=/z", "/api/1"),
    (b"http://orders", "/"),
    (b"http://orders?q=/z", "/"),
    (b"*", "*"),
    (b"orders:443", ""),
]


@pytest.mark.parametrize(("target", "path"), TARGETS)
def test_request_info_path(target: bytes, path: str) -> None:
    assert request_info(b"GET", target, [], None, {}).path == path


def test_request_info_headers_source_and_cookies() -> None:
    got = request_info(
        b"POST",
        b"/pay?x=1",
        [
            (b"x-user", b"vip"),
            (b"Accept", b"a/b"),
            (b"accept", b"c/d"),
            (b"cookie", b'sid=abc; theme="dark"; novalue; =x; sid2 = z '),
            (b"cookie", b"sid=later; extra=1"),
        ],
        "web",
        {"version": "2"},
    )
    assert got.method == "POST"
    assert got.path == "/pay"
    assert got.source == "web"
    assert got.source_tags == {"version": "2"}
    assert got.headers["x-user"] == "vip"
    assert got.headers["accept"] == "a/b, c/d"
    assert got.cookies == {"sid": "abc", "theme": "dark", "sid2": "z", "extra": "1"}


def test_request_info_feeds_a_match() -> None:
    match = compile_match(
        {"method": "GET", "path": {"prefix": "/api"}, "headers": {"X-User": {"exact": "vip"}}},
        "m",
    )
    headers = [(b"x-user", b"vip")]
    assert match.matches(request_info(b"GET", b"http://orders/api/1", headers, None, {}))
    assert not match.matches(request_info(b"GET", b"http://orders/web/1", headers, None, {}))
    assert not match.matches(request_info(b"GET", b"/api/1", [], None, {}))
