"""Local app health: probe the app, and mark our registered instance UP or DOWN.

Like Mesher, the instance is registered UP and the first probe runs at once;
its result is always reported, later results only when they change.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from trimesh.config.model import AppConfig, HealthConfig
from trimesh.discovery.base import Status
from trimesh.http.client import HTTPClientError, request

__all__ = ["StatusTarget", "check_app", "health_loop", "health_target"]

log = logging.getLogger("trimesh.health")


class StatusTarget(Protocol):
    """Where health results go: `Discovery.set_status`."""

    async def set_status(self, status: Status) -> None: ...


def health_target(app: AppConfig) -> tuple[str, int] | None:
    """The (host, port) `app.health` probes, or None when no health check is configured."""
    if app.health is None or app.health.port not in app.ports:
        return None
    return app.host, app.ports[app.health.port]


async def check_app(cfg: HealthConfig, host: str, port: int) -> bool:
    """One probe: TCP connect, or `GET cfg.path` answering `cfg.expect_status`.

    A refused connection or a broken answer is False, not an error. The
    caller bounds the probe with its own cancel scope (`cfg.timeout`).
    """
    try:
        if cfg.protocol == "tcp":
            stream = await trio.open_tcp_stream(host, port)
            await trio.aclose_forcefully(stream)
            return True
        response = await request("GET", host, port, cfg.path)
    except (OSError, HTTPClientError) as exc:
        log.debug("health: %s probe of %s:%d failed: %s", cfg.protocol, host, port, exc)
        return False
    return response.status == cfg.expect_status


async def health_loop(cfg: HealthConfig, host: str, port: int, discovery: StatusTarget) -> None:
    """Probe every `cfg.interval` until cancelled; report UP/DOWN on each change."""
    healthy: bool | None = None
    while True:
        ok = False
        with trio.move_on_after(cfg.timeout):
            ok = await check_app(cfg, host, port)
        if ok != healthy:
            _log_transition(cfg, host, port, healthy, ok)
            # Bounded so a hung registry never stops the probing; Discovery
            # keeps the wanted status and applies it with its next heartbeat.
            with trio.move_on_after(max(cfg.interval, cfg.timeout)):
                await discovery.set_status("UP" if ok else "DOWN")
            healthy = ok
        await trio.sleep(cfg.interval)


def _log_transition(cfg: HealthConfig, host: str, port: int, was: bool | None, ok: bool) -> None:
    probe = f"{cfg.protocol}://{host}:{port}" + (cfg.path if cfg.protocol == "http" else "")
    if ok:
        log.info("health: app answers %s: marking our instance UP", probe)
    elif was is None:
        log.warning("health: app does not answer %s: marking our instance DOWN", probe)
    else:
        log.warning("health: app stopped answering %s: marking our instance DOWN", probe)
