"""`trimesh route test`: which route rule a request would match, and where it would go.

Operators check a rule before shipping it; nothing is sent anywhere. With a
`static` registry the instances the rule selects are listed too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trimesh.config.model import Config
from trimesh.discovery.base import Instance
from trimesh.policy.match import request_info
from trimesh.policy.routing import ServiceRouter


def add_route_commands(sub: Any) -> None:
    route = sub.add_parser(
        "route",
        help="check route rules",
        description="Check route rules without sending anything.",
    )
    commands = route.add_subparsers(dest="route_command", required=True, metavar="COMMAND")
    test = commands.add_parser(
        "test",
        help="show the rule a request matches and the tags it routes to",
        description="Show which rule of routes.<service> a request matches, the tag set "
        "it would route to, and (static registry) the instances those tags select.",
    )
    test.add_argument(
        "-c", "--config", metavar="FILE", type=Path, required=True, help="YAML config file"
    )
    test.add_argument("--service", required=True, help="the target service")
    test.add_argument("--method", default="GET", help="request method (GET)")
    test.add_argument("--path", default="/", help="request path (/)")
    test.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request header (repeatable)",
    )
    test.add_argument("--source", help="the calling service (default: service.name)")
    test.add_argument(
        "--source-tag", action="append", default=[], metavar="KEY=VALUE", help="a tag of the caller"
    )


def run_route_command(args: argparse.Namespace, config: Config) -> int:
    """Print the explanation as JSON; exit 0, or 2 for a malformed flag."""
    try:
        headers = [_pair(h, lower=True) for h in args.header]
        tags = dict(_pair(t) for t in args.source_tag)
    except ValueError as exc:
        print(f"trimesh route test: {exc}")
        return 2
    rules = config.routes.get(args.service, ())
    policy = config.policies.base(args.service)
    info = request_info(
        args.method.upper().encode(),
        args.path.encode(),
        [(k.encode(), v.encode()) for k, v in headers],
        args.source or config.service.name,
        tags or {"version": config.service.version, "app": config.service.app},
    )
    instances = _static_instances(config, args.service)
    router = ServiceRouter(rules, policy.default_version)
    report: dict[str, Any] = {
        "service": args.service,
        "rules": len(rules),
        **router.explain(info, instances),
    }
    if config.registry.type != "static":
        report["note"] = "instances are listed only with the static registry"
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _pair(text: str, *, lower: bool = False) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return (name.strip().lower() if lower else name.strip()), value.strip()


def _static_instances(config: Config, service: str) -> list[Instance]:
    found = config.registry.services.get(service, ()) if config.registry.type == "static" else ()
    return [
        Instance(
            service=service,
            instance_id=f"{s.host}:{s.port}",
            host=s.host,
            port=s.port,
            version=s.version,
            tags=dict(s.tags),
        )
        for s in found
    ]
