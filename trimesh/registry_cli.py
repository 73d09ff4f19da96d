"""`trimesh registry list | watch`: look at what the configured registry holds.

Exit codes: 0 success (and a `watch` ended by Ctrl-C), 1 registry failure,
2 usage (e.g. listing every service of a backend that cannot enumerate them),
130 a `list` interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

import trio

from trimesh.config.model import Config
from trimesh.discovery.base import Instance, Registry, RegistryError, ServiceKey
from trimesh.discovery.factory import build_registry
from trimesh.discovery.session import Backoff, instance_view

__all__ = [
    "UsageError",
    "add_registry_commands",
    "list_instances",
    "run_registry_command",
    "service_names",
    "watch_instances",
]

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
COLUMNS = ("SERVICE", "VERSION", "INSTANCE", "ENDPOINT", "STATUS", "LEASE_AGE")


class UsageError(Exception):
    """The command cannot run as asked (exit 2)."""


@runtime_checkable
class ServiceLister(Protocol):
    """A backend that can enumerate its services (not part of `Registry`)."""

    async def services(self, app: str) -> Sequence[str]: ...


def add_registry_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `registry list` and `registry watch` to the top-level `trimesh` parser."""
    registry = subparsers.add_parser(
        "registry",
        help="list or watch registered instances",
        description="Look at the instances the configured registry holds.",
    )
    actions = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    for name, summary in (
        ("list", "print the instances of every (or each --service) service, then exit"),
        ("watch", "print one line per change of the instances until Ctrl-C"),
    ):
        p = actions.add_parser(name, help=summary, description=summary[0].upper() + summary[1:])
        p.add_argument(
            "-c", "--config", metavar="FILE", type=Path, help="YAML config naming the registry"
        )
        p.add_argument(
            "--registry",
            metavar="URL",
            help="local:///path.db, etcd://h:p[,h:p], servicecomb://h:p or static:",
        )
        p.add_argument(
            "--service",
            dest="services",
            action="append",
            metavar="NAME",
            help="only this service (repeatable; default: every service, if the backend "
            "can enumerate them)",
        )
        p.add_argument("--app", metavar="APP", help="application scope (default: service.app)")
        p.add_argument("--json", action="store_true", help="JSON instead of text")


def run_registry_command(args: argparse.Namespace, config: Config) -> int:
    """Run `trimesh registry <action>` against `config.registry`; return the exit code."""
    app: str = args.app or config.service.app
    registry = build_registry(config.registry, app=app)
    static_names = sorted(config.registry.services) if config.registry.type == "static" else None
    wanted: Sequence[str] = args.services or ()
    out = sys.stdout

    async def list_command() -> None:
        names = await service_names(registry, app, wanted, static_names)
        await list_instances(registry, app, names, out=out, as_json=args.json)

    async def watch_command() -> None:
        names = await service_names(registry, app, wanted, static_names)
        await watch_instances(registry, app, names, out=out, as_json=args.json)

    command = list_command if args.registry_command == "list" else watch_command
    try:
        interrupted = trio.run(_interruptible, registry, command)
    except UsageError as exc:
        print(f"trimesh registry: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"trimesh registry: {config.registry.type} registry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if interrupted and args.registry_command == "list":
        return EXIT_INTERRUPTED
    return 0


async def _interruptible(registry: Registry, command: Callable[[], Awaitable[None]]) -> bool:
    """Run `command` until it returns or SIGINT arrives (→ True); always close `registry`."""
    interrupted = False
    try:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                try:
                    await command()
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Unwrap a lone error so the caller sees UsageError/RegistryError itself.
        raise _sole(group) from None
    finally:
        with trio.move_on_after(2, shield=True):
            await registry.aclose()
    return interrupted


async def service_names(
    registry: Registry, app: str, wanted: Sequence[str], static: Sequence[str] | None = None
) -> list[str]:
    """`wanted`, else every service the backend can enumerate (`services()`), else UsageError."""
    if wanted:
        return sorted(set(wanted))
    if static is not None:
        return list(static)
    if isinstance(registry, ServiceLister):
        return sorted(await registry.services(app))
    kind = type(registry).__name__
    raise UsageError(f"{kind} cannot list its services; name them with --service NAME")


async def list_instances(
    registry: Registry, app: str, names: Sequence[str], *, out: TextIO, as_json: bool
) -> None:
    """Print every instance of `names`: a table, or one JSON list."""
    found: list[Instance] = []
    for name in names:
        found.extend(await registry.instances(ServiceKey(name, app)))
    if as_json:
        out.write(json.dumps([instance_view(i) for i in found], indent=1) + "\n")
        return
    rows = [COLUMNS, *(_row(i) for i in found)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


def _row(i: Instance) -> tuple[str, ...]:
    age = "-" if i.lease_age is None else f"{i.lease_age:.1f}s"
    return (i.service, i.version or "-", i.instance_id, i.endpoint, i.status, age)


async def watch_instances(
    registry: Registry,
    app: str,
    names: Sequence[str],
    *,
    out: TextIO,
    as_json: bool,
    backoff: Callable[[], Backoff] = Backoff,
) -> None:
    """Print each service's instances, then one line per change, until cancelled.

    A watch the registry breaks is restarted with backoff (reported on stderr);
    re-delivered unchanged lists print nothing.
    """
    if not names:
        raise UsageError("no services to watch")
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(_watch_one, registry, ServiceKey(name, app), out, as_json, backoff)


async def _watch_one(
    registry: Registry,
    key: ServiceKey,
    out: TextIO,
    as_json: bool,
    backoff_factory: Callable[[], Backoff],
) -> None:
    shown: dict[str, Instance] | None = None
    backoff = backoff_factory()

    def on_change(snapshot: Sequence[Instance]) -> None:
        nonlocal shown
        backoff.reset()
        fresh = {i.instance_id: i for i in snapshot}
        line = _change_line(key, shown, fresh, as_json)
        shown = fresh
        if line is not None:
            out.write(line + "\n")
            out.flush()

    while True:
        try:
            await registry.watch(key, on_change)
        except RegistryError as exc:
            delay = backoff.delay()
            print(f"trimesh registry: watch {key}: {exc}; retry in {delay:.1f} s", file=sys.stderr)
            await trio.sleep(delay)


def _change_line(
    key: ServiceKey, shown: dict[str, Instance] | None, fresh: dict[str, Instance], as_json: bool
) -> str | None:
    """One line describing how `fresh` differs from `shown` (None: no change worth a line)."""
    before = shown or {}
    added = [i for k, i in fresh.items() if k not in before]
    removed = [k for k in before if k not in fresh]
    changed = [i for k, i in fresh.items() if k in before and _differs(before[k], i)]
    if shown is not None and not (added or removed or changed):
        return None
    if as_json:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "service": key.name,
            "app": key.app,
            "added": [instance_view(i) for i in added],
            "removed": removed,
            "changed": [instance_view(i) for i in changed],
            "instances": [instance_view(i) for i in fresh.values()],
        }
        return json.dumps(doc)
    up = sum(1 for i in fresh.values() if i.status == "UP")
    parts = [f"+{i.instance_id} {i.endpoint} {i.version or '-'} {i.status}" for i in added]
    parts += [f"~{i.instance_id} {i.endpoint} {i.version or '-'} {i.status}" for i in changed]
    parts += [f"-{k}" for k in removed]
    summary = f"{time.strftime('%H:%M:%S')} {key} {len(fresh)} instances, {up} UP"
    return summary + (": " + "; ".join(parts) if parts else "")


def _differs(a: Instance, b: Instance) -> bool:
    # Instance equality ignores tags and the ticking lease age.
    return a != b or dict(a.tags) != dict(b.tags)
