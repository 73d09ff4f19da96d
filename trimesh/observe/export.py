"""Span export: a bounded queue, drained in batches to an OTLP/HTTP or a Zipkin v2 collector.

`Exporter.offer` is what `Span.end` calls: synchronous and O(1). A span that does
not fit the queue is dropped and counted. `Exporter.run` (a root-nursery task)
sends a batch when one is full or every `flush_interval`, one POST at a time, each
under `timeout`; a batch the collector did not accept is dropped and counted too,
so a slow or dead collector costs the request path nothing. `flush` sends what is
left at shutdown, under the caller's drain deadline.

Formats: OTLP/HTTP JSON or protobuf to `<endpoint>/v1/traces`, Zipkin v2 JSON to
`<endpoint>/api/v2/spans`. Protobuf is encoded here by hand (a few wire-format
helpers) so the runtime needs no protobuf library.
"""

from __future__ import annotations

import collections
import ipaddress
import json.encoder
import logging
import math
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from trimesh import __version__
from trimesh.http import client

if TYPE_CHECKING:
    from trimesh.observe.tracing import Resource, Span, TracingConfig

log = logging.getLogger(__name__)

# Span attribute names: OpenTelemetry's HTTP semantic conventions, and our instance id.
METHOD = "http.request.method"
PATH = "url.path"
ADDRESS = "server.address"
PORT = "server.port"
STATUS = "http.response.status_code"
ERROR = "error.type"
PEER = "peer.service"
INSTANCE = "trimesh.instance.id"

# Spans are encoded in slices of this many with a checkpoint between, so encoding a
# full batch never holds the event loop for more than a fraction of a millisecond.
_SLICE = 32
_OTLP_KIND = {"internal": 1, "server": 2, "client": 3}
_ZIPKIN_KIND = {"server": "SERVER", "client": "CLIENT"}
_STATUS_ERROR = 2
# OTLP span flags: the W3C sampled bit, plus whether the parent is known to be remote.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_quote = json.encoder.encode_basestring_ascii


class Exporter:
    """Owns the span queue and the task that sends it to the collector.

    Resource handling: holds at most `max_queue` finished spans; each POST uses a
    fresh connection, closed before the POST returns (`trimesh.http.client`).
    """

    def __init__(
        self,
        config: TracingConfig,
        resource: Resource,
        *,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.resource = resource
        self._on_dropped = on_dropped
        self._queue: collections.deque[Span] = collections.deque()
        self._max = config.max_queue
        self._batch = config.batch_size
        self._full = trio.Event()
        self._sending = trio.Lock()
        self._failing = False
        self.exported = 0
        self.dropped = 0
        self._host, self._port, self._path = config.collector
        self._encode: Callable[[list[Span]], Awaitable[bytes]]
        if config.exporter == "zipkin":
            self._encode, ctype = self._zipkin, "application/json"
        elif config.protocol == "protobuf":
            self._encode, ctype = self._otlp_protobuf, "application/x-protobuf"
        else:
            self._encode, ctype = self._otlp_json, "application/json"
        self._headers = {**config.headers, "content-type": ctype}

    def __repr__(self) -> str:
        return (
            f"<Exporter {self.config.exporter} {self._host}:{self._port}{self._path}"
            f" queued={len(self._queue)}/{self._max} exported={self.exported}"
            f" dropped={self.dropped}>"
        )

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, span: Span) -> None:
        """Queue a finished span, or drop and count it when the queue is full."""
        if len(self._queue) >= self._max:
            self._drop(1)
            return
        self._queue.append(span)
        if len(self._queue) >= self._batch:
            self._full.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send a batch whenever one is full, and what is queued every `flush_interval`."""
        task_status.started()
        while True:
            with trio.move_on_after(self.config.flush_interval):
                await self._full.wait()
            self._full = trio.Event()
            await self._send_batch()
            while len(self._queue) >= self._batch:
                await self._send_batch()

    async def flush(self) -> None:
        """Send everything queued; call it under the drain deadline's cancel scope.

        Waits for a POST already in flight first. Spans still queued when the
        caller's deadline cancels this stay queued; a batch cut off is counted dropped.
        """
        while self._queue:
            await self._send_batch()

    async def _send_batch(self) -> None:
        async with self._sending:
            count = min(len(self._queue), self._batch)
            if not count:
                return
            batch = [self._queue.popleft() for _ in range(count)]
            problem = "cancelled"
            try:
                body = await self._encode(batch)
                with trio.move_on_after(self.config.timeout) as scope:
                    problem = await self._post(body)
                if scope.cancelled_caught:
                    problem = f"no answer within {self.config.timeout:g}s"
            finally:
                self._settle(count, problem)

    async def _post(self, body: bytes) -> str:
        """POST one batch; "" when the collector took it, else what went wrong."""
        try:
            response = await client.request(
                "POST", self._host, self._port, self._path, headers=self._headers, body=body
            )
        except client.HTTPClientError as exc:
            return str(exc)
        if 200 <= response.status < 300:
            return ""
        return f"status {response.status}: {response.body[:200]!r}"

    def _settle(self, count: int, problem: str) -> None:
        where = f"{self._host}:{self._port}{self._path}"
        if not problem:
            self.exported += count
            if self._failing:
                self._failing = False
                log.info("span export to %s works again (%d dropped so far)", where, self.dropped)
            return
        self._drop(count)
        if not self._failing:
            # Said once per outage, not once per batch: the dropped count tells the rest.
            self._failing = True
            log.warning(
                "span export to %s failed (%s); dropping spans until it works", where, problem
            )

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._on_dropped is not None:
            self._on_dropped(count)

    # --- encoders ---------------------------------------------------------------------

    def _resource_attributes(self) -> dict[str, str]:
        r = self.resource
        attributes = {"service.name": r.service}
        for key, value in (
            ("service.namespace", r.app),
            ("service.version", r.version),
            ("service.instance.id", r.instance_id),
        ):
            if value:
                attributes[key] = value
        return attributes

    def _span_attributes(self, span: Span) -> Mapping[str, Any]:
        attributes = span.attributes or {}
        instance = self.resource.instance_id
        return {**attributes, INSTANCE: instance} if instance else attributes

    async def _otlp_json(self, spans: list[Span]) -> bytes:
        parts = []
        for i, span in enumerate(spans):
            if i and not i % _SLICE:
                await trio.lowlevel.checkpoint()
            parts.append(_otlp_json_span(span, self._span_attributes(span)))
        resource = _json_attributes(self._resource_attributes())
        scope = f'{{"name":"trimesh","version":{_quote(__version__)}}}'
        return (
            f'{{"resourceSpans":[{{"resource":{{"attributes":{resource}}},'
            f'"scopeSpans":[{{"scope":{scope},"spans":[{",".join(parts)}]}}]}}]}}'
        ).encode()

    async def _otlp_protobuf(self, spans: list[Span]) -> bytes:
        parts = []
        for i, span in enumerate(spans):
            if i and not i % _SLICE:
                await trio.lowlevel.checkpoint()
            parts.append(_field(2, _pb_span(span, self._span_attributes(span))))
        resource = b"".join(_field(1, _pb_kv(k, v)) for k, v in self._resource_attributes().items())
        scope = _field(1, b"trimesh") + _field(2, __version__.encode())
        scope_spans = _field(1, scope) + b"".join(parts)
        return _field(1, _field(1, resource) + _field(2, scope_spans))

    async def _zipkin(self, spans: list[Span]) -> bytes:
        parts = []
        service = self.resource.service.lower()
        for i, span in enumerate(spans):
            if i and not i % _SLICE:
                await trio.lowlevel.checkpoint()
            parts.append(_zipkin_span(span, self._span_attributes(span), service))
        return f"[{','.join(parts)}]".encode()


def _flags(span: Span) -> int:
    sampled = 1 if span.context.sampled else 0
    return sampled | _HAS_IS_REMOTE | (_IS_REMOTE if span.parent_remote else 0)


# The JSON below is built as text rather than by json.dumps of dicts: it runs once per
# exported span and costs about half as much; strings still go through json's escaper.


def _json_value(value: Any) -> str:
    """An AnyValue in OTLP JSON (an int64 is a string there, as proto3 JSON says)."""
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        return f'{{"intValue":"{value:d}"}}'
    if isinstance(value, float) and math.isfinite(value):
        return f'{{"doubleValue":{value!r}}}'
    return f'{{"stringValue":{_quote(str(value))}}}'


def _json_attributes(attributes: Mapping[str, Any]) -> str:
    items = (f'{{"key":{_quote(k)},"value":{_json_value(v)}}}' for k, v in attributes.items())
    return f"[{','.join(items)}]"


def _otlp_json_span(span: Span, attributes: Mapping[str, Any]) -> str:
    """One OTLP span in the OTLP/HTTP JSON mapping: hex ids, enums as integers."""
    ctx = span.context
    out = f'{{"traceId":"{ctx.trace_id}","spanId":"{ctx.span_id}"'
    if ctx.parent_id:
        out += f',"parentSpanId":"{ctx.parent_id}"'
    if ctx.tracestate:
        out += f',"traceState":{_quote(ctx.tracestate)}'
    status = ',"status":{"code":2}' if span.error else ""
    return (
        f'{out},"flags":{_flags(span):d},"name":{_quote(span.name)},'
        f'"kind":{_OTLP_KIND[span.kind]:d},"startTimeUnixNano":"{span.start_ns:d}",'
        f'"endTimeUnixNano":"{span.end_ns:d}","attributes":{_json_attributes(attributes)}'
        f"{status}}}"
    )


def _zipkin_span(span: Span, attributes: Mapping[str, Any], service: str) -> str:
    """One span in Zipkin's v2 JSON model: microsecond times, string tags."""
    ctx = span.context
    out = f'{{"traceId":"{ctx.trace_id}","id":"{ctx.span_id}"'
    if ctx.parent_id:
        out += f',"parentId":"{ctx.parent_id}"'
    if span.kind in _ZIPKIN_KIND:
        out += f',"kind":"{_ZIPKIN_KIND[span.kind]}"'
    duration = max((span.end_ns - span.start_ns) // 1000, 1)
    out += (
        f',"name":{_quote(span.name.lower())},"timestamp":{span.start_ns // 1000:d},'
        f'"duration":{duration:d},"localEndpoint":{{"serviceName":{_quote(service)}}}'
    )
    remote = _zipkin_remote(attributes)
    if remote:
        out += f',"remoteEndpoint":{_dumps(remote)}'
    tags = [f"{_quote(k)}:{_quote(_tag(v))}" for k, v in attributes.items()]
    if span.error:
        # Zipkin shows a span as failed when it has an "error" tag.
        tags.append(f'"error":{_quote(str(attributes.get(ERROR, "error")))}')
    debug = ',"debug":true' if ctx.debug else ""
    return f'{out},"tags":{{{",".join(tags)}}}{debug}}}'


def _tag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _zipkin_remote(attributes: Mapping[str, Any]) -> dict[str, Any]:
    remote: dict[str, Any] = {}
    if PEER in attributes:
        remote["serviceName"] = str(attributes[PEER]).lower()
    address = str(attributes.get(ADDRESS, ""))
    if not address or address[0] not in "0123456789:":
        return remote  # a host name: Zipkin endpoints hold IP addresses only
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return remote
    remote["ipv4" if ip.version == 4 else "ipv6"] = str(ip)
    port = attributes.get(PORT)
    if isinstance(port, int) and not isinstance(port, bool):
        remote["port"] = port
    return remote


# --- protobuf wire format ---------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(0x80)]


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, or a nested message)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _pb_value(value: Any) -> bytes:
    """An AnyValue message."""
    if isinstance(value, bool):
        return b"\x10" + _varint(int(value))
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return _field(1, str(value).encode())


def _pb_kv(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _pb_value(value))


def _pb_span(span: Span, attributes: Mapping[str, Any]) -> bytes:
    ctx = span.context
    out = _field(1, bytes.fromhex(ctx.trace_id)) + _field(2, bytes.fromhex(ctx.span_id))
    if ctx.tracestate:
        out += _field(3, ctx.tracestate.encode())
    if ctx.parent_id:
        out += _field(4, bytes.fromhex(ctx.parent_id))
    out += _field(5, span.name.encode()) + b"\x30" + _varint(_OTLP_KIND[span.kind])
    out += b"\x39" + struct.pack("<Q", span.start_ns) + b"\x41" + struct.pack("<Q", span.end_ns)
    out += b"".join(_field(9, _pb_kv(k, v)) for k, v in attributes.items())
    if span.error:
        out += _field(15, b"\x18" + _varint(_STATUS_ERROR))
    return out + b"\x85\x01" + struct.pack("<I", _flags(span))
