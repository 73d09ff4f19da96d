"""Replay the response-side fuzz corpus through the real sidecar (fuzz/fuzz_response.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent.parent / "fuzz"
SEEDS = sorted((HERE / "corpus" / "response").iterdir())


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_response", HERE / "fuzz_response.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", SEEDS, ids=[s.name for s in SEEDS])
def test_response_corpus_holds_the_invariant(seed: Path) -> None:
    check = _harness().check
    payload = seed.read_bytes()[1:]
    for flags in range(8):  # HEAD or GET, HTTP/1.0 or 1.1, FIN or RST after the bytes
        check(bytes([flags]) + payload)
