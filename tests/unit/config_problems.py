"""What config parsers and converters report: problem lines, checked by their start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trimesh.policy.match import ConfigProblems


def problems_raised(parse: Callable[[Any, str], object], raw: Any, where: str) -> list[str]:
    """The problem lines of the `ConfigProblems` that `parse(raw, where)` must raise."""
    with pytest.raises(ConfigProblems) as caught:
        parse(raw, where)
    return caught.value.problems


def assert_starts(problems: list[str], starts: list[str]) -> None:
    """As many problems as `starts`, each starting with its counterpart, in order."""
    assert len(problems) == len(starts), problems
    for line, start in zip(problems, starts, strict=True):
        assert line.startswith(start), problems


def error_of(convert: Callable[[Any], object], value: Any) -> str:
    """The message of the ValueError that `convert(value)` must raise."""
    with pytest.raises(ValueError) as caught:
        convert(value)
    return str(caught.value)
