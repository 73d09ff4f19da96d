"""Trace context: W3C and B3 propagation headers, ids, sampling, and spans.

The request path calls `extract` on an incoming head, `Tracer.start` for each
span, `inject` for the headers it forwards and `Span.end` when the span is over.
None of these awaits or does I/O: a finished span that is sampled goes into the
exporter's bounded queue (`trimesh.observe.export`), or is dropped and counted
when that queue is full. With no exporter, spans still carry ids and a sampling
decision downstream, and ending one only records its end time.
"""

from __future__ import annotations

import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import attrs

from trimesh import convert as parse
from trimesh.observe.export import ADDRESS, ERROR, METHOD, PATH, PEER, PORT, STATUS, Exporter
from trimesh.policy.match import ConfigProblems

Kind = Literal["server", "client", "internal"]
Headers = Iterable[tuple[bytes, bytes]]

# Which B3 forms a request carried, so the same ones go on (`SpanContext.b3`).
B3_SINGLE = 1
B3_MULTI = 2
# Every header this module reads or writes (W3C, then B3 single, then B3 multi); the
# proxy drops these from a forwarded request and adds `inject`'s set instead, so
# the formats never disagree.
HEADER_NAMES = (
    b"traceparent",
    b"tracestate",
    b"b3",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
    b"x-b3-flags",
)
HEADERS = frozenset(HEADER_NAMES)
# tracestate: the spec's limits are 32 members; 512 characters is what every
# participant must pass on, so a longer one is cut to that (see `_tracestate`).
MAX_TRACESTATE = 512
_MAX_MEMBERS = 32
_LONG_MEMBER = 128

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_B3_SINGLE = re.compile(
    rb"([0-9a-f]{32}|[0-9a-f]{16})-([0-9a-f]{16})(?:-([01d])(?:-([0-9a-f]{16}))?)?|([01d])"
)
_TRACE_ID = re.compile(rb"[0-9a-f]{32}|[0-9a-f]{16}")
_SPAN_ID = re.compile(rb"[0-9a-f]{16}")
_MEMBER = re.compile(
    r"([a-z0-9][a-z0-9_\-*/]{0,255}(?:@[a-z][a-z0-9_\-*/]{0,13})?)"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_B3_SAMPLED = {b"1": True, b"true": True, b"0": False, b"false": False}


class SpanContext(NamedTuple):
    """What travels between processes: ids, the sampling decision, vendor state.

    A NamedTuple because one is built per span: a third the cost of a frozen
    attrs class. `trace_id` is 32 and `span_id` 16 lowercase hex digits; an
    extracted context whose headers held no usable ids has `trace_id == ""`
    (`valid` is false) and carries only a sampling decision and the B3 forms seen.
    """

    trace_id: str
    span_id: str
    sampled: bool | None  # None: the sender deferred the decision (B3 only)
    debug: bool = False  # B3 "d" / X-B3-Flags: 1: sample regardless of ratio
    parent_id: str | None = None  # the parent of `span_id`, for X-B3-ParentSpanId
    tracestate: str = ""
    b3: int = 0  # B3_SINGLE | B3_MULTI: the forms the incoming request used
    remote: bool = False  # extracted from another process's headers

    @property
    def valid(self) -> bool:
        return bool(self.trace_id)


# --- propagation ----------------------------------------------------------------------


def extract(headers: Headers) -> SpanContext | None:
    """The context an incoming request carries, or None when it has no propagation header.

    Header names must be lowercase, as h11 gives them. traceparent wins, then
    `b3`, then X-B3-*. A malformed header never raises: the result is then
    not `valid`, and the caller's span starts a new trace.
    """
    found: dict[bytes, bytes] = {}
    states: list[bytes] = []
    for name, value in headers:
        if name in HEADERS:
            if name == b"tracestate":
                states.append(value)
            elif name in found:
                found[name] = b""  # a repeated single-valued header is unusable
            else:
                found[name] = value
    if not found:
        return None
    b3 = B3_SINGLE if b"b3" in found else 0
    if any(name.startswith(b"x-b3-") for name in found):
        b3 |= B3_MULTI
    if b"traceparent" in found:
        ctx = _traceparent(found[b"traceparent"], states, b3)
        if ctx is not None:
            return ctx
    if b"b3" in found:
        ctx = _b3_single(found[b"b3"], b3)
        if ctx is not None:
            return ctx
    ctx = _b3_multi(found, b3)
    return SpanContext("", "", None, b3=b3, remote=True) if ctx is None else ctx


def _traceparent(value: bytes, states: list[bytes], b3: int) -> SpanContext | None:
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    # Version 00 has exactly four fields; a later version may append more, which we skip.
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, span_id = trace.decode(), span.decode()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    sampled = bool(int(flags, 16) & 1)
    return SpanContext(
        trace_id, span_id, sampled, tracestate=_tracestate(states), b3=b3, remote=True
    )


def _tracestate(values: list[bytes]) -> str:
    """The tracestate to pass on: "" when absent or invalid; cut to MAX_TRACESTATE."""
    if not values:
        return ""
    raw = b",".join(values)
    if len(raw) > 64 * MAX_TRACESTATE:
        return ""
    members = [m.strip(" \t") for m in raw.decode("latin-1").split(",")]
    members = [m for m in members if m]
    keys = set()
    for member in members:
        match = _MEMBER.fullmatch(member)
        if match is None or match[1] in keys:
            return ""
        keys.add(match[1])
    if len(members) > _MAX_MEMBERS:
        return ""
    if len(",".join(members)) > MAX_TRACESTATE:
        # The spec's order for cutting: long members first, then from the end.
        members = [m for m in members if len(m) <= _LONG_MEMBER]
        while len(",".join(members)) > MAX_TRACESTATE:
            members.pop()
    return ",".join(members)


def _b3_single(value: bytes, b3: int) -> SpanContext | None:
    match = _B3_SINGLE.fullmatch(value)
    if match is None:
        return None
    trace, span, flag, _parent, alone = match.groups()
    if alone is not None:
        return SpanContext("", "", alone != b"0", debug=alone == b"d", b3=b3, remote=True)
    trace_id, span_id = trace.decode().rjust(32, "0"), span.decode()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    sampled = None if flag is None else flag != b"0"
    return SpanContext(trace_id, span_id, sampled, debug=flag == b"d", b3=b3, remote=True)


def _b3_multi(found: Mapping[bytes, bytes], b3: int) -> SpanContext | None:
    debug = found.get(b"x-b3-flags") == b"1"
    sampled = True if debug else _B3_SAMPLED.get(found.get(b"x-b3-sampled", b"").lower())
    trace, span = found.get(b"x-b3-traceid", b""), found.get(b"x-b3-spanid", b"")
    if b"x-b3-traceid" not in found and b"x-b3-spanid" not in found:
        # Only a sampling decision (X-B3-Sampled / X-B3-Flags), or nothing usable.
        return None if sampled is None else SpanContext("", "", sampled, debug, b3=b3, remote=True)
    parent = found.get(b"x-b3-parentspanid")
    valid = _TRACE_ID.fullmatch(trace) and _SPAN_ID.fullmatch(span)
    if not valid or (parent is not None and not _SPAN_ID.fullmatch(parent)):
        return None
    trace_id, span_id = trace.decode().rjust(32, "0"), span.decode()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return SpanContext(trace_id, span_id, sampled, debug, b3=b3, remote=True)


def inject(ctx: SpanContext) -> list[tuple[bytes, bytes]]:
    """The propagation headers to forward for `ctx` (a started span's context).

    Always traceparent (and tracestate when there is one); then the B3 forms the
    incoming request used, or the single `b3` header when it used none. An
    invalid context gives no header.
    """
    if not ctx.trace_id:
        return []
    flag = "01" if ctx.sampled or ctx.debug else "00"
    out = [(b"traceparent", f"00-{ctx.trace_id}-{ctx.span_id}-{flag}".encode())]
    if ctx.tracestate:
        out.append((b"tracestate", ctx.tracestate.encode()))
    b3 = ctx.b3 or B3_SINGLE
    if b3 & B3_SINGLE:
        out.append((b"b3", format_b3(ctx).encode()))
    if b3 & B3_MULTI:
        out.append((b"x-b3-traceid", ctx.trace_id.encode()))
        out.append((b"x-b3-spanid", ctx.span_id.encode()))
        if ctx.parent_id:
            out.append((b"x-b3-parentspanid", ctx.parent_id.encode()))
        # Debug implies sampled, and B3 says not to send both.
        out.append((b"x-b3-flags", b"1") if ctx.debug else (b"x-b3-sampled", flag[1:].encode()))
    return out


def format_b3(ctx: SpanContext) -> str:
    """The single `b3` header value: {trace}-{span}-{1|0|d}[-{parent}]."""
    flag = "d" if ctx.debug else "1" if ctx.sampled else "0"
    tail = f"-{ctx.parent_id}" if ctx.parent_id else ""
    return f"{ctx.trace_id}-{ctx.span_id}-{flag}{tail}"


# --- spans -----------------------------------------------------------------------------

Value = str | int | float | bool


@attrs.define
class Resource:
    """Who records the spans; read by the exporter at each batch.

    Mutable because the instance id is known only once the registry assigned it.
    """

    service: str
    instance_id: str = ""
    app: str = ""
    version: str = ""


class Span:
    """One timed operation; `end` hands it to the exporter when it is recording.

    A span that is not recording (not sampled, or no exporter) ignores `set`.
    """

    __slots__ = (
        "_exporter",
        "attributes",
        "context",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_remote",
        "start_ns",
    )

    def __init__(
        self,
        context: SpanContext,
        name: str,
        kind: Kind,
        start_ns: int,
        exporter: Exporter | None,
        parent_remote: bool = False,
    ) -> None:
        self.context = context
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = 0
        self.error = False
        self.parent_remote = parent_remote
        self._exporter = exporter
        self.attributes: dict[str, Value] | None = {} if exporter is not None else None

    def __repr__(self) -> str:
        c = self.context
        return f"<Span {self.name!r} {self.kind} {c.trace_id}/{c.span_id} sampled={c.sampled}>"

    @property
    def recording(self) -> bool:
        return self.attributes is not None

    def set(self, key: str, value: Value) -> None:
        if self.attributes is not None:
            self.attributes[key] = value

    def set_request(
        self, method: str, path: str, address: str, port: int | None = None, peer: str | None = None
    ) -> None:
        """The request attributes: method, path (no query), the server's host, the peer service."""
        attributes = self.attributes
        if attributes is None:
            return
        attributes[METHOD] = method
        attributes[PATH] = path
        attributes[ADDRESS] = address
        if port is not None:
            attributes[PORT] = port
        if peer is not None:
            attributes[PEER] = peer

    def set_response(self, status: int | None, error: str | None) -> None:
        """Status and error: `error` is the x-trimesh-error kind; else a failing status is one.

        Per the conventions, a 4xx is an error for a client span, not a server span.
        """
        if self.attributes is None:
            return
        if status is not None:
            self.attributes[STATUS] = status
            failed = status >= 500 or (status >= 400 and self.kind == "client")
            if error is None and failed:
                error = str(status)
        if error is not None:
            self.attributes[ERROR] = error
            self.error = True

    def end(self, now_ns: int | None = None) -> None:
        """End the span (once; later calls do nothing) and queue it if it is recording."""
        if self.end_ns:
            return
        self.end_ns = time.time_ns() if now_ns is None else now_ns
        if self._exporter is not None:
            self._exporter.offer(self)


class Tracer:
    """Starts spans: ids from a fast PRNG, sampling by ratio or by the parent's decision.

    Ids come from one `random.Random` seeded from os.urandom: unpredictable enough
    for correlation ids and far cheaper than `secrets` per span. `config` None means
    the defaults (propagate, no export). `exporter` is None when export is off;
    otherwise the caller runs `exporter.run` in the root nursery.
    """

    def __init__(
        self,
        config: TracingConfig | None,
        *,
        service: str,
        instance_id: str = "",
        rng: random.Random | None = None,
        on_dropped: Callable[[int], None] | None = None,
        app: str = "",
        version: str = "",
    ) -> None:
        self.config = config or TracingConfig()
        self.resource = Resource(service, instance_id, app, version)
        self._rng = rng or random.Random(os.urandom(32))
        # A trace is sampled when the low 64 bits of its id fall under this, so every
        # sidecar that decides for the same trace decides the same way.
        self._threshold = int(self.config.sample_ratio * 2**64)
        self.exporter: Exporter | None = None
        if self.config.exporter != "off":
            self.exporter = Exporter(self.config, self.resource, on_dropped=on_dropped)

    def __repr__(self) -> str:
        return f"<Tracer {self.resource.service} exporter={self.exporter!r}>"

    def sampled(self, trace_id: str) -> bool:
        """The ratio decision for a trace that arrived without one."""
        return int(trace_id[16:], 16) < self._threshold

    def start(
        self, name: str, kind: Kind, parent: SpanContext | None = None, now_ns: int | None = None
    ) -> Span:
        """A new span under `parent` (a new trace when `parent` is None or not valid)."""
        bits = self._rng.getrandbits
        span_id = f"{bits(64) or 1:016x}"
        if parent is not None and parent.trace_id:
            trace_id, parent_id = parent.trace_id, parent.span_id
        else:
            trace_id, parent_id = f"{bits(128) or 1:032x}", None
        sampled = None if parent is None else parent.sampled
        if sampled is None:
            sampled = self.sampled(trace_id)
        ctx = SpanContext(
            trace_id,
            span_id,
            sampled,
            False if parent is None else parent.debug,
            parent_id,
            "" if parent is None else parent.tracestate,
            0 if parent is None else parent.b3,
        )
        exporter = self.exporter if sampled else None
        start_ns = time.time_ns() if now_ns is None else now_ns
        remote = parent is not None and parent.remote and parent_id is not None
        return Span(ctx, name, kind, start_ns, exporter, remote)


# --- config -----------------------------------------------------------------------------

DEFAULT_ENDPOINTS = {"otlp": "http://127.0.0.1:4318", "zipkin": "http://127.0.0.1:9411"}


def _batch_fits(config: TracingConfig, _: Any, value: int) -> None:
    if value > config.max_queue:
        raise ValueError(f"batch_size must be at most max_queue ({config.max_queue}), got {value}")


@attrs.frozen
class TracingConfig:
    """`observe.tracing`: propagation (on by default) and span export (off by default)."""

    propagate: bool = True
    exporter: Literal["off", "otlp", "zipkin"] = "off"
    endpoint: str | None = None  # http://host:port[/base]; None: the exporter's default
    protocol: Literal["json", "protobuf"] = "json"  # OTLP only
    sample_ratio: float = attrs.field(
        default=1.0,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0)),
    )
    max_queue: int = attrs.field(default=2048, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=512, validator=[attrs.validators.ge(1), _batch_fits])
    flush_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0.0))
    headers: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def collector(self) -> tuple[str, int, str]:
        """(host, port, path) to POST batches to, the format's path appended."""
        url = urllib.parse.urlsplit(self.endpoint or DEFAULT_ENDPOINTS.get(self.exporter, ""))
        suffix = "/api/v2/spans" if self.exporter == "zipkin" else "/v1/traces"
        path = url.path.rstrip("/")
        if not path.endswith(suffix):
            path += suffix
        return (url.hostname or "127.0.0.1", url.port or 80, path)


def _exporter(value: Any) -> str:
    # YAML 1.1 reads a bare `off` as false.
    return "off" if value is False else str(parse.choice("off", "otlp", "zipkin")(value))


def _endpoint(value: Any) -> str:
    text = parse.text(value).strip()
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError:
        raise ValueError(f"expected a URL like http://127.0.0.1:4318, got {value!r}") from None
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"expected an http:// URL (no TLS: use a local agent), got {value!r}")
    if url.query or url.fragment or port == 0:
        raise ValueError(f"expected http://HOST[:PORT][/PATH], got {value!r}")
    return text.rstrip("/")


def _ratio(value: Any) -> float:
    n = parse.non_negative_number(value)
    if n > 1:
        raise ValueError(f"must be within 0-1, got {value!r}")
    return n


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "propagate": parse.boolean,
    "exporter": _exporter,
    "endpoint": _endpoint,
    "protocol": parse.choice("json", "protobuf"),
    "sample_ratio": _ratio,
    "max_queue": parse.positive_int,
    "batch_size": parse.positive_int,
    "flush_interval": parse.duration,
    "timeout": parse.duration,
    "headers": parse.str_map,
}


def parse_tracing(raw: Any, where: str) -> TracingConfig:
    """The `observe.tracing` block; `off` turns tracing off, `otlp`/`zipkin` picks an exporter.

    Error handling: raises `ConfigProblems` naming every bad key by its path.
    """
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("otlp", "zipkin"):
            raw = {"exporter": word}
        elif word in ("on", "true", "yes", "off", "false", "no"):
            raw = parse.boolean(word)
    if raw is None or raw is True:
        return TracingConfig()
    if raw is False:
        return TracingConfig(propagate=False)
    problems: list[str] = []
    out = parse.parse_block(raw, where, _CONVERTERS, problems)
    queue = out.get("max_queue", TracingConfig().max_queue)
    if "batch_size" not in out:
        out["batch_size"] = min(queue, TracingConfig().batch_size)
    elif out["batch_size"] > queue:
        problems.append(
            f"{where}.batch_size: must be at most max_queue ({queue}), got {out['batch_size']}"
        )
    if "protocol" in out and out.get("exporter", "off") != "otlp":
        problems.append(f"{where}.protocol: only for exporter otlp")
    if out.get("propagate") is False and out.get("exporter", "off") != "off":
        problems.append(f"{where}.exporter: spans need propagate: true")
    if problems:
        raise ConfigProblems(problems)
    return TracingConfig(**out)
