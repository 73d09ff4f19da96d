"""The trimesh benchmark: load through the sidecar vs. straight to the upstream (and nginx).

Run it with ``nox -s bench`` or ``python -m bench --help``; docs/benchmarks.md
explains what it measures and how the processes are pinned to cores.
"""
