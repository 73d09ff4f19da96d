"""The documented defaults and error kinds agree with the code.

docs/configuration.md: every table row whose first cell is a backticked key
must name a key of the loader's `SCHEMA`, and its default, read as a user
would write it and run through the loader's own converter, must equal the
attribute default of `Config()`. Every leaf key of `SCHEMA` must be
documented, so a new key without docs fails here.

README.md and docs/*.md: every `x-trimesh-error` kind named next to a status
(503 `overloaded`, or `no-instance` (503)) or in a docs/ table with `kind` and
`status` columns must have that status in the error taxonomy.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from trimesh import errors
from trimesh.config import Config
from trimesh.config.load import SCHEMA, _section

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = ROOT / "docs" / "configuration.md"
KEY = re.compile(r"`([a-z][a-z_]*(?:\.[a-z_]+)*)`")
# Defaults that are not a value a user could write. Keep this list short: each
# entry is the documented text and the model default it stands for.
NON_LITERAL: Mapping[str, tuple[str, Any]] = {
    "listen.advertise": ("inbound host", None),
    "app.health": ("none", None),
    "registry.path": ("`$XDG_STATE_HOME/trimesh/registry.db`", None),
    "registry.endpoints": ("—", ()),
}
# Bare words in the default column and the YAML value a user writes for them.
WORDS: Mapping[str, Any] = {"none": None, "unlimited": "unlimited", "off": "off"}


@attrs.frozen
class Row:
    keys: tuple[str, ...]
    default: str
    text: str
    line: int


def _cells(line: str) -> list[str]:
    # `\|` inside a cell is a literal pipe, not a column break.
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def key_rows() -> list[Row]:
    """Table rows of docs/configuration.md whose first cell is only backticked keys."""
    rows = []
    for n, line in enumerate(CONFIG_DOC.read_text().splitlines(), 1):
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        keys = KEY.findall(cells[0])
        if len(cells) >= 3 and keys and KEY.sub("", cells[0]).strip(" ,") == "":
            rows.append(Row(tuple(keys), cells[1], line, n))
    return rows


def schema_rule(key: str) -> Any:
    rule: Any = SCHEMA
    for part in key.split("."):
        assert isinstance(rule, Mapping) and part in rule, f"{key}: not in the loader's SCHEMA"
        rule = rule[part]
    return rule


def schema_leaves(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, rule in schema.items():
        if isinstance(rule, Mapping):
            yield from schema_leaves(rule, f"{prefix}{name}.")
        else:
            yield prefix + name


def model_default(key: str) -> Any:
    """The default of `key` in `Config()`; a section that defaults to None reads its class's."""
    obj: Any = Config()
    owner: type = Config
    for part in key.split("."):
        if obj is None:
            obj = _attrs_class(owner)()
        owner = typing.get_type_hints(type(obj))[part]
        obj = getattr(obj, part)
    return obj


def _attrs_class(hint: Any) -> type:
    (cls,) = [a for a in typing.get_args(hint) if attrs.has(a)]
    return cls


def cell_value(key: str, cell: str) -> Any:
    """The YAML value a user writes for a documented default cell."""
    if cell in WORDS:
        return WORDS[cell]
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"{key}: default {cell!r} is neither `literal` nor one of {sorted(WORDS)}"
    return yaml.safe_load(match[1])


def parse_default(key: str, cell: str) -> Any:
    """Read a documented default as the loader reads that key's YAML value."""
    raw = cell_value(key, cell)
    section, _, leaf = key.rpartition(".")
    nested: Any = {leaf: raw}
    for part in reversed(section.split(".") if section else []):
        nested = {part: nested}
    problems: list[str] = []
    values = _section(nested, SCHEMA, "", problems)
    assert not problems, f"{key}: documented default {cell!r} does not load: {problems}"
    for part in key.split("."):
        values = values[part]
    return values


ROWS = key_rows()


def test_the_page_has_key_rows() -> None:
    assert len(ROWS) > 40


@pytest.mark.parametrize("row", ROWS, ids=lambda r: ",".join(r.keys))
def test_documented_default_is_the_code_default(row: Row) -> None:
    for key in row.keys:
        schema_rule(key)
        if key in NON_LITERAL:
            text, value = NON_LITERAL[key]
            assert row.default == text, f"line {row.line}: {key} non-literal default changed"
            assert model_default(key) == value
        else:
            assert parse_default(key, row.default) == model_default(key), f"line {row.line}"


def test_non_literal_defaults_are_all_documented() -> None:
    documented = {key for row in ROWS for key in row.keys}
    assert set(NON_LITERAL) <= documented


def test_each_key_is_documented_once() -> None:
    keys = [key for row in ROWS for key in row.keys]
    assert sorted(k for k in set(keys) if keys.count(k) > 1) == []


def test_every_schema_key_is_documented() -> None:
    """A leaf is covered by its own row, or by an ancestor's row naming it as `leaf:`."""
    by_key = {key: row for row in ROWS for key in row.keys}
    missing = []
    for leaf in schema_leaves(SCHEMA):
        parts = leaf.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        if leaf in by_key:
            continue
        named = re.compile(rf"\b{parts[-1]}:")
        if not any(a in by_key and named.search(by_key[a].text) for a in ancestors):
            missing.append(leaf)
    assert missing == [], "config keys with no row in docs/configuration.md"


def test_composite_rows_give_the_leaf_defaults() -> None:
    """`app.health`'s `{interval: 5s, ...}` lists the defaults of each leaf."""
    checked = 0
    for row in ROWS:
        for key in row.keys:
            if not isinstance(schema_rule(key), Mapping):
                continue
            for leaf, value in re.findall(r"(\w+): ([^,}|]+)(?=[,}])", row.text):
                full = f"{key}.{leaf}"
                assert parse_default(full, f"`{value.strip()}`") == model_default(full), full
                checked += 1
    assert checked >= 4


# --- x-trimesh-error kinds -------------------------------------------------

KIND = r"[a-z]+(?:-[a-z]+)*"
MENTIONS = (
    re.compile(rf"(?<![\w`])(?P<status>[1-5]\d\d)\s+`(?P<kind>{KIND})`"),  # 503 `overloaded`
    re.compile(rf"`(?P<kind>{KIND})`\s+\((?P<status>[1-5]\d\d)\)"),  # `no-instance` (503)
)


def taxonomy() -> dict[str, int]:
    """Kind → status of every `ProxyError` subclass."""
    kinds: dict[str, int] = {}
    pending: list[type[errors.ProxyError]] = [errors.ProxyError]
    while pending:
        cls = pending.pop()
        assert kinds.setdefault(cls.kind, cls.status) == cls.status, f"{cls.kind} used twice"
        pending.extend(cls.__subclasses__())
    return kinds


def kind_mentions() -> list[tuple[str, int, str, int]]:
    """(file, line, kind, status) for each kind named next to a status."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for pattern in MENTIONS:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append((path.name, line, m["kind"], int(m["status"])))
    return found


def kind_table_rows() -> list[tuple[str, int, str, int]]:
    """(file, line, kind, status) from docs/ tables with a `kind` and a `status` column."""
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        columns: list[str] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.startswith("|"):
                columns = []
                continue
            cells = _cells(line)
            if not columns:
                columns = [c.strip("`").lower() for c in cells]
            elif "kind" in columns and "status" in columns and not set(line) <= set("|-: "):
                kind = cells[columns.index("kind")].strip("`")
                found.append((path.name, n, kind, int(cells[columns.index("status")])))
    return found


def test_documented_kinds_have_their_status() -> None:
    kinds = taxonomy()
    mentions = kind_mentions() + kind_table_rows()
    assert len(mentions) >= 5
    wrong = [(f, n, kind, s, kinds.get(kind)) for f, n, kind, s in mentions if kinds.get(kind) != s]
    assert wrong == [], "(file, line, kind, documented status, code status)"


def test_an_error_table_lists_every_kind() -> None:
    rows = kind_table_rows()
    if not rows:
        pytest.skip("docs/ has no table of x-trimesh-error kinds yet")
    assert sorted(set(taxonomy()) - {kind for _, _, kind, _ in rows}) == []


# --- the `policies` block table -------------------------------------------------------

POLICY_ROW = re.compile(r"^\| policy `([a-z_.]+)` \| ([^|]+) \|")


def policy_rows(pattern: re.Pattern[str] = POLICY_ROW) -> list[tuple[str, str]]:
    """(key, default cell) of each docs/configuration.md table row `pattern` matches."""
    rows = []
    for line in CONFIG_DOC.read_text().splitlines():
        if found := pattern.match(line):
            rows.append((found[1], found[2].strip()))
    return rows


def test_the_policy_table_has_rows() -> None:
    assert len(policy_rows()) >= 15


@pytest.mark.parametrize(("key", "cell"), policy_rows(), ids=lambda v: str(v))
def test_documented_policy_default_is_the_code_default(key: str, cell: str) -> None:
    """Writing a block key's documented default changes nothing about the default policy."""
    from trimesh.config.policies import ServicePolicy, parse_policies

    nested: Any = cell_value(key, cell)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    assert parse_policies({"default": nested}).default == ServicePolicy()


HEDGE_ROW = re.compile(r"^\| hedge `([a-z_]+)` \| ([^|]+) \|")


def hedge_rows() -> list[tuple[str, str]]:
    return policy_rows(HEDGE_ROW)


def test_the_hedge_table_names_every_key() -> None:
    from trimesh.policy.hedge import HedgePolicy

    assert [key for key, _ in hedge_rows()] == [f.name for f in attrs.fields(HedgePolicy)]


@pytest.mark.parametrize(("key", "cell"), [r for r in hedge_rows() if r[0] != "delay"])
def test_documented_hedge_default_is_the_code_default(key: str, cell: str) -> None:
    from trimesh.policy.hedge import HedgePolicy, parse_hedge

    written = parse_hedge({"delay": "1s", key: cell_value(key, cell)}, "hedge")
    assert written == HedgePolicy(delay=1.0)
