"""Mesher's conf folder, read and merged into one key space as go-chassis does.

go-chassis merges every YAML file of the folder into one key space of dotted
keys: `cse: {loadbalance: {strategy: {name: Random}}}` and a top-level
`cse.loadbalance.strategy.name: Random` are the same key. `merge` does the same
and rewrites the older spellings (`cse.protocols`, `cse.service.registry`,
`service_description`, ...) to one canonical key. `Keys` remembers which keys
were mapped and collects the warnings, so every key left over can be named.

`read_folder` is the only I/O of the importer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

# A section of the trimesh config as it is built.
Raw = dict[str, Any]

# The order files are merged in, chassis.yaml first as go-chassis loads it first;
# a key set in two files takes the later one's value, with a warning. Other *.yaml
# files follow, by name.
FILE_ORDER = (
    "chassis.yaml",
    "microservice.yaml",
    "mesher.yaml",
    "auth.yaml",
    "circuit_breaker.yaml",
    "load_balancing.yaml",
    "rate_limiting.yaml",
    "fault.yaml",
    "router.yaml",
    "egress.yaml",
    "lager.yaml",
)


class MesherImportError(Exception):
    """The folder or one of its files cannot be read (exit 2)."""


class _Loader(yaml.SafeLoader):
    """YAML as go-chassis reads it into strings: `version: 1.10` stays "1.10", not 1.1."""


def _float_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(node.value)


_Loader.add_constructor("tag:yaml.org,2002:float", _float_as_text)


def load_yaml(text: str) -> Any:
    """Parse YAML the way go-chassis does for our purposes. Raises `yaml.YAMLError`."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def read_folder(folder: Path) -> dict[str, Any]:
    """Every *.yaml / *.yml file of `folder`, parsed: file name → data.

    Error handling: raises `MesherImportError` naming the folder or file and the problem.
    """
    if not folder.is_dir():
        raise MesherImportError(f"{folder}: not a directory")
    try:
        paths = [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError as exc:
        raise MesherImportError(f"{folder}: cannot read: {exc.strerror}") from exc
    if not paths:
        raise MesherImportError(f"{folder}: no *.yaml files (expected chassis.yaml, ...)")
    files: dict[str, Any] = {}
    for path in sorted(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise MesherImportError(f"{path}: cannot read: {reason}") from exc
        try:
            files[path.name] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise MesherImportError(f"{path}: not valid YAML: {exc}") from exc
    return files


# --- the merged key space -----------------------------------------------------------------

# Older or alternative spellings → the canonical key (first matching prefix wins).
_GOVERNANCE = (
    "loadbalance",
    "isolation",
    "circuitBreaker",
    "fallback",
    "fallbackpolicy",
    "flowcontrol",
    "governance",
)
_ALIASES: tuple[tuple[str, str], ...] = (
    ("servicecomb.service.registry.", "servicecomb.registry."),
    ("cse.service.registry.", "servicecomb.registry."),
    ("service_description.", "servicecomb.service."),
    ("APPLICATION_ID", "servicecomb.service.app"),
    ("cse.protocols.", "servicecomb.protocols."),
    ("cse.handler.", "servicecomb.handler."),
    ("cse.credentials.", "servicecomb.credentials."),
    ("cse.routeRule.", "servicecomb.routeRule."),
    ("routeRule.", "servicecomb.routeRule."),
    *((f"servicecomb.{ns}.", f"cse.{ns}.") for ns in _GOVERNANCE),
)
_SERVICE_ALIASES = (
    ("servicecomb.service.application", "servicecomb.service.app"),
    ("servicecomb.service.instance_properties.", "servicecomb.service.instanceProperties."),
)


def _canonical(key: str) -> str:
    for aliases in (_ALIASES, _SERVICE_ALIASES):
        for old, new in aliases:
            if key == old or (old.endswith(".") and key.startswith(old)):
                key = new + key[len(old) :]
                break
    return key


@attrs.frozen
class _Entry:
    key: str  # as written (flattened), for messages
    file: str
    value: Any


class Keys:
    """The merged key space: canonical dotted key → entry, and which keys were used."""

    def __init__(self, entries: dict[str, _Entry], warnings: list[str]) -> None:
        self._entries = entries
        self._used: set[str] = set()
        self.warnings = warnings

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def under(self, prefix: str) -> dict[str, str]:
        """Suffix → canonical key, for every key starting with `prefix`."""
        return {k[len(prefix) :]: k for k in self._entries if k.startswith(prefix)}

    def take(self, key: str) -> Any:
        """The value of `key` (None if unset), marking it mapped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._used.add(key)
        return entry.value

    def file(self, key: str) -> str:
        return self._entries[key].file

    def where(self, key: str) -> str:
        """`file: key-as-written`, to start a message with."""
        entry = self._entries[key]
        return f"{entry.file}: {entry.key}"

    def warn(self, key: str, message: str) -> None:
        self._used.add(key)
        self.warnings.append(f"{self.where(key)}: {message}")

    def unused(self) -> Iterator[tuple[str, _Entry]]:
        return ((k, e) for k, e in self._entries.items() if k not in self._used)


def _ordered(names: Mapping[str, Any]) -> list[str]:
    def rank(name: str) -> tuple[int, str]:
        return (FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER), name)

    return sorted(names, key=rank)


def _flatten(data: Mapping[Any, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            _flatten(v, key + ".", out)
        elif v is not None and v != {}:  # `environment:` with no value sets nothing
            out[key] = v


def merge(files: Mapping[str, Any], warnings: list[str]) -> Keys:
    entries: dict[str, _Entry] = {}
    for name in _ordered(files):
        data = files[name]
        if data is None:
            continue
        if not isinstance(data, Mapping):
            warnings.append(f"{name}: the top level is not a mapping of keys; file ignored")
            continue
        flat: dict[str, Any] = {}
        _flatten(data, "", flat)
        for key, value in flat.items():
            canon = _canonical(key)
            old = entries.get(canon)
            if old is not None and old.value != value:
                warnings.append(
                    f"{name}: {key}: also set in {old.file} ({old.key}: {old.value!r});"
                    " the later file's value is used"
                )
            entries[canon] = _Entry(key, name, value)
    return Keys(entries, warnings)
