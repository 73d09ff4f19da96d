"""Every module imports on its own, first: no import cycle hides behind import order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trimesh

_SCRIPT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "trimesh" or m.startswith("trimesh.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_first_in_a_fresh_process() -> None:
    root = Path(trimesh.__file__).parent
    names = sorted(
        "trimesh." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__main__.py"
    )
    names = [n.removesuffix(".__init__") for n in names]
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *names], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
