"""Run every fuzz/fuzz_*.py harness for SECONDS in total; exit non-zero on a crash.

Usage: `python fuzz/run_all.py SECONDS` (the `nox -s fuzz` smoke run uses 30).
Each harness runs in its own subprocess with its seed corpus, fuzz/corpus/<name>/
(fuzz_guard.py → guard/, fuzz_headers.py → headers/, fuzz_target.py → target/,
fuzz_trace.py → trace/, ...),
copied to a scratch directory so new inputs do not pile up in git. A harness is
registered by its file name alone; one without a seed corpus is refused, so a
new parser cannot be fuzzed from nothing by mistake. Crash reproducers land in
fuzz/crashes/ (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def harnesses() -> list[Path]:
    return sorted(HERE.glob("fuzz_*.py"))


def run(harness: Path, seconds: int, scratch: Path) -> int:
    name = harness.stem.removeprefix("fuzz_")
    corpus = scratch / name
    seeds = HERE / "corpus" / name
    if not seeds.is_dir() or not any(seeds.iterdir()):
        print(f"== {harness.name}: no seed corpus in {seeds}", file=sys.stderr)
        return 1
    shutil.copytree(seeds, corpus)
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        str(harness),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    print(f"== {harness.name}: {seconds}s", flush=True)
    return subprocess.run(argv, cwd=HERE.parent, check=False).returncode


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit() or int(argv[1]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    found = harnesses()
    each = max(1, int(argv[1]) // len(found))
    failed = []
    with tempfile.TemporaryDirectory(prefix="trimesh-fuzz-") as scratch:
        for harness in found:
            if run(harness, each, Path(scratch)) != 0:
                failed.append(harness.name)
    if failed:
        print(f"FAILED: {', '.join(failed)} (reproducers in {HERE / 'crashes'})", file=sys.stderr)
        return 1
    print(f"ok: {len(found)} harnesses, {each}s each")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
