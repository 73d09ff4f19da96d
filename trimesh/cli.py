"""`trimesh serve | check | registry | version`: the console script.

Exit codes: 0 success, 2 invalid configuration or usage, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from trimesh import __version__
from trimesh.config import Config, ConfigError, load, registry_url
from trimesh.config.load import merge, serving_problems
from trimesh.config.reload import RawSource, local_layers
from trimesh.mesher import add_import_command, run_import_command
from trimesh.observe.introspect import JsonFormatter
from trimesh.observe.logsink import SinkHandler, flush_std_sinks, std_sink
from trimesh.registry_cli import add_registry_commands, run_registry_command
from trimesh.route_cli import add_route_commands, run_route_command

EXIT_CONFIG = 2
# How long exit waits for queued log lines to reach stderr.
LOG_FLUSH_TIMEOUT = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimesh",
        description="A service-mesh sidecar proxy: set HTTP_PROXY=http://127.0.0.1:30101 "
        "in your app and call http://<service-name>/path.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the sidecar",
        description="Run the sidecar until SIGTERM/SIGINT, then drain.",
    )
    _config_flags(serve)
    serve.add_argument("--service", metavar="NAME", help="our service name (service.name)")
    serve.add_argument(
        "--service-ports",
        metavar="rest:8080",
        help="the local app's ports, NAME:PORT[,NAME:PORT] (app.ports)",
    )
    serve.add_argument("--outbound", metavar="HOST:PORT", help="outbound listener")
    serve.add_argument("--inbound", metavar="HOST:PORT", help="inbound listener")
    serve.add_argument("--admin", metavar="HOST:PORT", help="admin listener")
    serve.add_argument(
        "--registry",
        metavar="URL",
        help="local:///path.db, etcd://h:p[,h:p], servicecomb://h:p or static:",
    )
    serve.add_argument(
        "--log-level", metavar="LEVEL", help="debug, info, warning, error (default info)"
    )
    check = sub.add_parser(
        "check",
        help="validate a config file",
        description="Validate the configuration; exit 0, or 2 listing "
        "every problem by its key path.",
    )
    _config_flags(check, required=True)
    add_registry_commands(sub)
    add_route_commands(sub)
    add_import_command(sub)
    sub.add_parser("version", help="print the version", description="Print the version.")
    return parser


def _config_flags(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        type=Path,
        required=required,
        help="YAML config file (environment variables and flags override it)",
    )


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    paths = {
        "service": ("service", "name"),
        "service_ports": ("app", "ports"),
        "outbound": ("listen", "outbound"),
        "inbound": ("listen", "inbound"),
        "admin": ("listen", "admin"),
    }
    for attr, (section, key) in paths.items():
        if getattr(args, attr, None) is not None:
            raw = merge(raw, {section: {key: getattr(args, attr)}})
    if getattr(args, "log_level", None):
        raw["log_level"] = args.log_level
    if getattr(args, "registry", None):
        raw = merge(raw, {"registry": registry_url(args.registry)})
    return raw


def _load(args: argparse.Namespace) -> Config:
    return load(args.config, _cli_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"trimesh {__version__}")
        return 0
    if args.command == "import-mesher":
        return run_import_command(args)  # reads a Mesher folder, not a trimesh config
    try:
        config = _load(args)
        if args.command in ("serve", "check") and (problems := serving_problems(config)):
            raise ConfigError(problems)
    except ConfigError as exc:
        print("trimesh: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{args.config}: ok")
        return 0
    if args.command == "registry":
        return run_registry_command(args, config)
    if args.command == "route":
        return run_route_command(args, config)
    return _serve(config, local_layers(args.config, _cli_overrides(args)), args.config)


def _serve(config: Config, source: RawSource, path: Path | None) -> int:
    """Run the sidecar; it re-reads `source` (file < env < CLI) on SIGHUP or a file change."""
    from trimesh.sidecar import Sidecar

    _log_to_stderr(config.log_level, config.observe.log_format)
    try:
        trio.run(_run, Sidecar(config, reload_source=source, config_path=path))
    except (OSError, BaseExceptionGroup) as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        flush_std_sinks(LOG_FLUSH_TIMEOUT)  # our log lines first, then this one
        print(f"trimesh: cannot start: {cause}", file=sys.stderr)
        return 1
    finally:
        # Bounded: a stderr pipe nobody reads must not keep the process alive.
        flush_std_sinks(LOG_FLUSH_TIMEOUT)
    return 0


def _log_to_stderr(level: str, log_format: str = "text") -> None:
    """The program log goes to stderr through a queue and a writer thread, never blocking.

    The access log on stderr shares that queue (`std_sink`), see trimesh/observe/logsink.py.
    """
    handler = SinkHandler(std_sink("stderr"))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # else `warnings` would write to stderr directly


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError (e.g. address in use) at the root of a startup failure, if any."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if found := _os_error(inner):
                return found
    return None


async def _run(sidecar: Any) -> None:
    await sidecar.run(signals=True)


if __name__ == "__main__":
    sys.exit(main())
