"""What the admin API shows of the running sidecar: config (redacted), tasks, log format.

Pure helpers over objects the sidecar owns; nothing here does I/O.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

REDACTED = "<redacted>"
# Config keys whose values are secrets, wherever they appear.
_SECRET = re.compile(r"password|token|secret|credential|authorization|cookie|(^|_)key$", re.I)

# The trace of the request a task is serving, for log lines written meanwhile.
current_trace: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "trimesh_trace", default=None
)


def jsonable(value: Any, key: str = "") -> Any:
    """`value` as JSON data: attrs classes and mappings as objects, secrets redacted."""
    if key and _SECRET.search(key) and value not in (None, "", ()):
        return REDACTED
    if attrs.has(type(value)):
        return {
            f.name: jsonable(getattr(value, f.name), f.name)
            for f in attrs.fields(type(value))
            if not f.name.startswith("_")
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def task_tree(root: trio.lowlevel.Task | None = None) -> dict[str, Any]:
    """The trio task tree from `root` (default: the run's root task), names only."""
    task = root or trio.lowlevel.current_root_task()
    assert task is not None
    return {
        "name": task.name,
        "nurseries": [
            [task_tree(child) for child in nursery.child_tasks] for nursery in task.child_nurseries
        ],
    }


def count_tasks(tree: Mapping[str, Any]) -> int:
    return 1 + sum(count_tasks(child) for nursery in tree["nurseries"] for child in nursery)


class JsonFormatter(logging.Formatter):
    """`log_format: json`: one object per line, with the request's trace ids when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = current_trace.get()
        if trace is not None:
            out["trace_id"], out["span_id"] = trace
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))
