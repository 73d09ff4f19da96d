"""Request matching for route rules and per-API policies (Mesher's `match` block). Sans-IO.

A `match` block is compiled once, at config load, into a `Match`: regexes are
compiled, methods upper-cased, header names lower-cased and numeric operands
parsed, so `Match.matches`, which runs on every request, only compares.

Header operators follow go-chassis/Mesher's router (`exact`, `regex`, `noEqu`,
`less`, `noLess`, `greater`, `noGreater`, plus `prefix` and `contains`; all
of a header's operators must hold), with three deliberate differences: `regex`
must match the whole value (Mesher searches), a missing header satisfies no
operator, not even `noEqu` (Mesher compares ""), and the ordering operators
compare decimal numbers (Mesher: integers); a non-numeric value never matches
them. `caseInsensitive` folds case on both sides (regexes get `re.IGNORECASE`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs


class ConfigProblems(ValueError):
    """A policy section is invalid; `problems` lists every `key.path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class RequestInfo:
    """What a match looks at in one request; built once per request by `request_info`."""

    method: str
    path: str  # without the query
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    source: str | None = None  # the calling service
    source_tags: Mapping[str, str] = attrs.field(factory=dict)
    cookies: Mapping[str, str] = attrs.field(factory=dict)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _number(text: str) -> Decimal | None:
    return Decimal(text) if _NUMBER.fullmatch(text) else None


def _ordered(compare: Callable[[Decimal, Decimal], bool]) -> Callable[[str, Any], bool]:
    def test(value: str, operand: Any) -> bool:
        number = _number(value)
        return number is not None and compare(number, operand)

    return test


# operator name -> test(header value, compiled operand)
_TESTS: dict[str, Callable[[str, Any], bool]] = {
    "exact": operator.eq,
    "noEqu": operator.ne,
    "prefix": str.startswith,
    "contains": operator.contains,
    "regex": lambda value, pattern: pattern.fullmatch(value) is not None,
    "less": _ordered(operator.lt),
    "noLess": _ordered(operator.ge),
    "greater": _ordered(operator.gt),
    "noGreater": _ordered(operator.le),
}
_TEXT_OPS = frozenset({"exact", "noEqu", "prefix", "contains"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@attrs.frozen
class HeaderCondition:
    """One operator on one header field, its operand compiled (str, Decimal or regex)."""

    name: str  # lower-case field name
    op: str
    operand: Any
    case_insensitive: bool = False

    def test(self, value: str) -> bool:
        if self.case_insensitive and self.op in _TEXT_OPS:
            value = value.casefold()
        return _TESTS[self.op](value, self.operand)


@attrs.frozen
class PathCondition:
    """`exact`, `prefix` (plain string prefix) or `regex` (whole path) on the path."""

    kind: str
    value: str
    pattern: re.Pattern[str] | None = None

    def test(self, path: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(path) is not None
        return path == self.value if self.kind == "exact" else path.startswith(self.value)


@attrs.frozen
class Match:
    """A compiled `match` block; every condition it has must hold. Build with `compile_match`."""

    source: str | None = None
    source_tags: tuple[tuple[str, str], ...] = ()
    methods: frozenset[str] | None = None
    path: PathCondition | None = None
    headers: tuple[HeaderCondition, ...] = ()

    def matches(self, info: RequestInfo) -> bool:
        if self.methods is not None and info.method.upper() not in self.methods:
            return False
        if self.source is not None and info.source != self.source:
            return False
        for key, value in self.source_tags:
            if info.source_tags.get(key) != value:
                return False
        if self.path is not None and not self.path.test(info.path):
            return False
        for condition in self.headers:
            field = info.headers.get(condition.name)
            if field is None or not condition.test(field):
                return False
        return True


ANY = Match()

# Mesher spellings a user may copy from its docs, and what to write here instead.
_MESHER_KEYS = {
    "sourceTags": "write source_tags",
    "httpHeaders": "write headers",
    "apiPath": "write path",
    "refer": "match templates are not supported; write the match inline",
}


def compile_match(raw: Any, where: str) -> Match:
    """Validate a `match` block into a `Match`; None (an empty block) matches everything.

    Error handling: raises `ConfigProblems` naming every bad key by its path under `where`.
    """
    if raw is None:
        return ANY
    if not isinstance(raw, Mapping):
        raise ConfigProblems([f"{where}: expected a mapping, got {type(raw).__name__}"])
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        parser = _PARSERS.get(key)
        if parser is None:
            hint = _MESHER_KEYS.get(key, f"expected one of {', '.join(_PARSERS)}")
            problems.append(f"{at}: unknown key ({hint})")
        else:
            field, parse = parser
            fields[field] = parse(value, at, problems)
    if problems:
        raise ConfigProblems(problems)
    return Match(**fields)


def parse_text(value: Any, at: str, problems: list[str]) -> str | None:
    """A string (an integer is taken as its digits); anything else is a problem."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        problems.append(f"{at}: {value!r} is a YAML boolean; quote it to mean the text")
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float):
        problems.append(f"{at}: {value!r} is a YAML number; quote it (1.10 reads as 1.1)")
    else:
        problems.append(f"{at}: expected a string, got {type(value).__name__}")
    return None


def parse_text_map(value: Any, at: str, problems: list[str]) -> dict[str, str] | None:
    """A mapping of string to string (values as `parse_text` takes them)."""
    if not isinstance(value, Mapping):
        problems.append(f"{at}: expected a mapping of names to strings")
        return None
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            problems.append(f"{at}: key {key!r} must be a non-empty string")
            continue
        text = parse_text(item, f"{at}.{key}", problems)
        if text is not None:
            out[key] = text
    return out


def _source(value: Any, at: str, problems: list[str]) -> str | None:
    text = parse_text(value, at, problems)
    if text == "":
        problems.append(f"{at}: must not be empty")
    return text


def _source_tags(value: Any, at: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((parse_text_map(value, at, problems) or {}).items()))


def _methods(value: Any, at: str, problems: list[str]) -> frozenset[str] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        problems.append(f"{at}: expected a method or a non-empty list of methods")
        return None
    methods = set()
    for i, item in enumerate(items):
        if isinstance(item, str) and _TOKEN.fullmatch(item):
            methods.add(item.upper())
        else:
            problems.append(f"{at}[{i}]: {item!r} is not an HTTP method")
    return frozenset(methods)


def _path(value: Any, at: str, problems: list[str]) -> PathCondition | None:
    if not isinstance(value, Mapping) or len(value) != 1:
        problems.append(f"{at}: expected exactly one of exact, prefix, regex")
        return None
    ((kind, raw),) = value.items()
    text = parse_text(raw, f"{at}.{kind}", problems)
    if kind not in ("exact", "prefix", "regex"):
        problems.append(f"{at}.{kind}: unknown key (expected one of exact, prefix, regex)")
    elif text is None:
        pass
    elif kind == "regex":
        pattern = _regex(text, False, f"{at}.{kind}", problems)
        return None if pattern is None else PathCondition(kind, text, pattern)
    elif not text.startswith("/"):
        problems.append(f"{at}.{kind}: a path starts with '/', got {text!r}")
    else:
        return PathCondition(kind, text)
    return None


def _regex(text: str, fold: bool, at: str, problems: list[str]) -> re.Pattern[str] | None:
    try:
        return re.compile(text, re.IGNORECASE if fold else 0)
    except re.error as exc:
        problems.append(f"{at}: not a valid regular expression: {exc}")
        return None


def _headers(value: Any, at: str, problems: list[str]) -> tuple[HeaderCondition, ...]:
    if not isinstance(value, Mapping):
        problems.append(f"{at}: expected a mapping of header name to operators")
        return ()
    out: list[HeaderCondition] = []
    for name, ops in value.items():
        where = f"{at}.{name}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            problems.append(f"{at}: {name!r} is not a header name")
        elif not isinstance(ops, Mapping):
            problems.append(f"{where}: expected a mapping of operator to value")
        else:
            out.extend(_header(name.lower(), ops, where, problems))
    return tuple(out)


def _header(
    name: str, ops: Mapping[Any, Any], at: str, problems: list[str]
) -> list[HeaderCondition]:
    fold = ops.get("caseInsensitive", False)
    if not isinstance(fold, bool):
        problems.append(f"{at}.caseInsensitive: expected true or false")
        fold = False
    out = []
    for op, raw in ops.items():
        if op == "caseInsensitive":
            continue
        operand = _operand(op, raw, fold, f"{at}.{op}", problems)
        if operand is not None:
            out.append(HeaderCondition(name, op, operand, fold))
    if not any(op != "caseInsensitive" for op in ops):
        problems.append(f"{at}: no operator (expected one of {', '.join(_TESTS)})")
    return out


def _operand(op: Any, raw: Any, fold: bool, at: str, problems: list[str]) -> Any:
    if op not in _TESTS:
        problems.append(f"{at}: unknown operator (expected one of {', '.join(_TESTS)})")
        return None
    if op in ("less", "noLess", "greater", "noGreater"):
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        number = _number(raw) if isinstance(raw, str) else None
        if number is None:
            problems.append(f"{at}: expected a number, got {raw!r}")
        return number
    text = parse_text(raw, at, problems)
    if text is None:
        return None
    if op == "regex":
        return _regex(text, fold, at, problems)
    return text.casefold() if fold else text


_Parser = Callable[[Any, str, list[str]], Any]
# match key -> (Match field, parser)
_PARSERS: dict[str, tuple[str, _Parser]] = {
    "source": ("source", _source),
    "source_tags": ("source_tags", _source_tags),
    "method": ("methods", _methods),
    "path": ("path", _path),
    "headers": ("headers", _headers),
}


def request_info(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    source: str | None,
    source_tags: Mapping[str, str],
) -> RequestInfo:
    """Build a `RequestInfo` from h11's request data (origin- or absolute-form target)."""
    fields: dict[str, str] = {}
    cookies: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        seen = fields.get(name)
        fields[name] = value if seen is None else f"{seen}, {value}"
        if name == "cookie":
            _parse_cookies(value, cookies)
    return RequestInfo(
        method.decode("latin-1"), _path_of(target), fields, source, source_tags, cookies
    )


def _path_of(target: bytes) -> str:
    text = target.decode("latin-1").partition("?")[0]
    if text.startswith("/"):
        return text
    _, sep, rest = text.partition("://")
    if not sep:  # "*" (OPTIONS) or authority-form (CONNECT): no path to match
        return text if text == "*" else ""
    # absolute-form: the path starts at the first "/" after the authority
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _parse_cookies(value: str, into: dict[str, str]) -> None:
    # RFC 6265 5.4 shape, leniently; the first cookie of a name wins.
    for piece in value.split(";"):
        name, eq, text = piece.partition("=")
        name = name.strip()
        if eq and name:
            text = text.strip()
            if len(text) >= 2 and text[0] == text[-1] == '"':
                text = text[1:-1]
            into.setdefault(name, text)
