"""Why a key left over is not mapped: one reason per family of keys."""

from __future__ import annotations

import re

_REASONS: tuple[tuple[str, str], ...] = (
    (r"servicecomb\.handler\.", "the handler chain is fixed: trimesh runs every configured policy"),
    (
        r"cse\.(fallback|fallbackpolicy)\.",
        "no fallbacks: an open circuit is answered with an error",
    ),
    (
        r"cse\.(isolation|circuitBreaker)\.Provider\.",
        "provider-side isolation and breakers are not"
        " supported (inbound.rate_limit limits the provider side)",
    ),
    (r"cse\.circuitBreaker\.scope$", "the breaker's scope is not configurable"),
    (r"cse\.isolation\..*timeout\.enabled$", "go-chassis v2 does not read it; the timeout applies"),
    (
        r"cse\.loadbalance\..*SessionStickinessRule\.",
        "session_sticky keeps the instance in a cookie, with no session timeout or failure count",
    ),
    (r"cse\.loadbalance\.serverListFilters$", "instance filters are not supported"),
    (
        r"cse\.flowcontrol\.[^.]+\.qps\.limit\..*\.",
        "per-schema and per-operation limits are not supported",
    ),
    (
        r"cse\.flowcontrol\.",
        "rate limits are per target service (Consumer) or per source (Provider)",
    ),
    (r"cse\.governance\.", "only the rest protocol's fault for _global or a service maps"),
    (
        r"servicecomb\.(sourceTemplate|match)\.",
        "match templates and traffic markers are not"
        " supported; write the match inline in the route rule",
    ),
    (r"servicecomb\.darklaunch\.", "dark-launch (v1) rules are not converted; write routeRule"),
    (r"servicecomb\.protocols\.rest\.", "not a Mesher proxy listener: Mesher proxies on `http`"),
    (r"servicecomb\.protocols\.(grpc|dubbo|highway)", "trimesh proxies HTTP/1.1 only"),
    (r"servicecomb\.protocols\.", "only listenAddress/advertiseAddress of http and rest-admin map"),
    (r"servicecomb\.registry\.", "a registry client option trimesh does not have"),
    (
        r"servicecomb\.credentials\.(accessKey|secretKey|akskCustomCipher)",
        "AK/SK auth is not supported",
    ),
    (r"servicecomb\.(service\.)?config\.", "the config-centre client settings do not carry over"),
    (r"servicecomb\.service\.", "trimesh registers name, app, version, environment and metadata"),
    (
        r"(ssl|servicecomb\.ssl)\.|.*\.(cipherPlugin|verifyPeer|cipherSuits|protocol|caFile|"
        r"certFile|keyFile|certPwdFile)$",
        "TLS is not supported yet",
    ),
    (
        r"(tracing|servicecomb\.apm|servicecomb\.monitor|servicecomb\.metrics)\.",
        "no exporters yet: trimesh writes a JSON access log (observe.access_log)",
    ),
    (
        r"(writers|logWriters|logFile|logger_file|logFormatText|log_format_text|logColorMode|"
        r"logRotate\w*|log_rotate_\w+|logBackupCount|log_backup_count|rollingPolicy|"
        r"accessLogFile)$",
        "trimesh logs to stderr; rotation is the supervisor's job",
    ),
    (r"admin\.", "trimesh's admin listener always runs (listen.admin, loopback by default)"),
    (
        r"localHealthCheck$",
        "write app.health instead: {protocol: http, path: URI, port: NAME"
        " in app.ports, interval: ..., expect_status: ...}",
    ),
    (r"plugin\.", "the request's host is always the service name (no resolver plugins)"),
)


def reason(key: str) -> str:
    for pattern, reason in _REASONS:
        if re.match(pattern, key):
            return reason
    return "no trimesh equivalent"
