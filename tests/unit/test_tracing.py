"""Trace propagation, sampling and spans: sans-IO, with hypothesis round trips."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_trace
from tests.unit.config_problems import assert_starts, problems_raised
from trimesh.observe.tracing import (
    B3_MULTI,
    B3_SINGLE,
    HEADERS,
    MAX_TRACESTATE,
    SpanContext,
    Tracer,
    TracingConfig,
    extract,
    format_b3,
    inject,
    parse_tracing,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PARENT = "b7ad6b7169203331"
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


def tracer(ratio: float = 1.0, exporter: str = "off", seed: int = 1) -> Tracer:
    config = TracingConfig(exporter=exporter, sample_ratio=ratio)  # type: ignore[arg-type]
    return Tracer(config, service="orders", instance_id="i-1", rng=random.Random(seed))


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


# --- strategies -----------------------------------------------------------------------

hex_id = st.integers(min_value=1, max_value=2**64 - 1).map(lambda n: f"{n:016x}")
trace_id = st.integers(min_value=1, max_value=2**128 - 1).map(lambda n: f"{n:032x}")
member_key = st.from_regex(r"[a-z][a-z0-9_*/-]{0,10}(@[a-z][a-z0-9]{0,5})?", fullmatch=True)
member_value = st.from_regex(r"[!-+\--<>-~]([ -+\--<>-~]{0,10}[!-+\--<>-~])?", fullmatch=True)
tracestate = st.dictionaries(member_key, member_value, max_size=5).map(
    lambda d: ",".join(f"{k}={v}" for k, v in d.items())
)


@st.composite
def contexts(draw: st.DrawFn) -> SpanContext:
    return SpanContext(
        draw(trace_id),
        draw(hex_id),
        draw(st.booleans()),
        debug=draw(st.booleans()),
        parent_id=draw(st.none() | hex_id),
        tracestate=draw(tracestate),
        b3=draw(st.sampled_from([0, B3_SINGLE, B3_MULTI, B3_SINGLE | B3_MULTI])),
    )


# --- round trips ----------------------------------------------------------------------


@given(contexts())
def test_traceparent_round_trip(ctx: SpanContext) -> None:
    headers = [h for h in inject(ctx) if h[0] in (b"traceparent", b"tracestate")]
    got = extract(headers)
    assert got is not None and got.remote
    sampled = ctx.sampled or ctx.debug  # debug implies sampled in every format
    assert (got.trace_id, got.span_id, got.sampled) == (ctx.trace_id, ctx.span_id, sampled)
    assert got.tracestate == ctx.tracestate


@given(contexts())
def test_b3_single_round_trip(ctx: SpanContext) -> None:
    got = extract([(b"b3", format_b3(ctx).encode())])
    assert got is not None
    assert (got.trace_id, got.span_id) == (ctx.trace_id, ctx.span_id)
    assert (got.sampled, got.debug) == (ctx.sampled or ctx.debug, ctx.debug)
    assert got.b3 == B3_SINGLE


@given(contexts())
def test_b3_multi_round_trip(ctx: SpanContext) -> None:
    headers = [h for h in inject(ctx._replace(b3=B3_MULTI)) if h[0].startswith(b"x-b3-")]
    got = extract(headers)
    assert got is not None
    assert (got.trace_id, got.span_id) == (ctx.trace_id, ctx.span_id)
    assert (got.sampled, got.debug) == (ctx.sampled or ctx.debug, ctx.debug)
    assert got.b3 == B3_MULTI


@given(contexts())
def test_the_forwarded_set_extracts_to_the_same_context(ctx: SpanContext) -> None:
    headers = inject(ctx)
    assert set(names(headers)) <= HEADERS
    got = extract(headers)
    assert got is not None
    assert (got.trace_id, got.span_id, got.tracestate) == (
        ctx.trace_id,
        ctx.span_id,
        ctx.tracestate,
    )
    assert got.b3 == (ctx.b3 or B3_SINGLE)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"b3", f"{TRACE[16:]}-{SPAN}-1".encode())],
        [(b"x-b3-traceid", TRACE[16:].encode()), (b"x-b3-spanid", SPAN.encode())],
    ],
)
def test_a_64_bit_b3_trace_id_is_padded_to_128(headers: list[tuple[bytes, bytes]]) -> None:
    got = extract(headers)
    assert got is not None and got.trace_id == "0" * 16 + TRACE[16:]
    span = tracer().start("GET", "client", got)
    assert inject(span.context)[0][1].startswith(f"00-{'0' * 16}{TRACE[16:]}-".encode())


# --- malformed headers start a new trace ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-" + TRACE.upper().encode() + b"-" + SPAN.encode() + b"-01",  # uppercase
        b"ff-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01",  # forbidden version
        b"00-" + b"0" * 32 + b"-" + SPAN.encode() + b"-01",  # zero trace id
        b"00-" + TRACE.encode() + b"-" + b"0" * 16 + b"-01",  # zero span id
        b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01-extra",  # 00 has 4 fields
        b"00-" + TRACE[1:].encode() + b"-" + SPAN.encode() + b"-01",  # short trace id
        b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-1",  # short flags
        b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-0g",
        b"00_" + TRACE.encode() + b"_" + SPAN.encode() + b"_01",
        b" 00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(value: bytes) -> None:
    got = extract([(b"traceparent", value), (b"tracestate", b"k=v")])
    assert got is not None and not got.valid
    span = tracer().start("GET", "server", got)
    assert span.context.parent_id is None and not span.parent_remote
    assert span.context.trace_id != TRACE and span.context.tracestate == ""


def test_a_later_traceparent_version_is_read_and_forwarded_as_00() -> None:
    value = f"cc-{TRACE}-{SPAN}-01-what-comes-next".encode()
    got = extract([(b"traceparent", value)])
    assert got is not None and (got.trace_id, got.span_id, got.sampled) == (TRACE, SPAN, True)
    assert inject(tracer().start("GET", "client", got).context)[0][1].startswith(b"00-")


def test_a_repeated_traceparent_is_not_trusted() -> None:
    value = f"00-{TRACE}-{SPAN}-01".encode()
    got = extract([(b"traceparent", value), (b"traceparent", value)])
    assert got is not None and not got.valid


@pytest.mark.parametrize(
    "headers",
    [
        [(b"b3", b"nonsense")],
        [(b"b3", f"{TRACE}-{SPAN}-2".encode())],
        [(b"b3", f"{'0' * 32}-{SPAN}-1".encode())],
        [(b"b3", f"{TRACE}-{SPAN}-1-short".encode())],
        [(b"x-b3-traceid", TRACE.encode())],  # no span id
        [(b"x-b3-traceid", b"xyz"), (b"x-b3-spanid", SPAN.encode())],
        [(b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", b"0" * 16)],
        [
            (b"x-b3-traceid", TRACE.encode()),
            (b"x-b3-spanid", SPAN.encode()),
            (b"x-b3-parentspanid", b"bad"),
        ],
    ],
)
def test_malformed_b3_starts_a_new_trace_in_the_same_form(
    headers: list[tuple[bytes, bytes]],
) -> None:
    got = extract(headers)
    assert got is not None and not got.valid
    span = tracer().start("GET", "server", got)
    form = B3_SINGLE if headers[0][0] == b"b3" else B3_MULTI
    assert span.context.b3 == form
    sent = names(inject(span.context))
    assert (b"b3" in sent) == (form == B3_SINGLE)
    assert (b"x-b3-traceid" in sent) == (form == B3_MULTI)


header_name = st.sampled_from([*sorted(HEADERS), b"host", b"x-other"])


@given(st.lists(st.tuples(header_name, st.binary(max_size=80)), max_size=8))
def test_any_header_values_extract_without_raising(headers: list[tuple[bytes, bytes]]) -> None:
    got = extract(headers)
    span = tracer().start("GET", "server", got)
    assert HEX32.fullmatch(span.context.trace_id) and span.context.trace_id != "0" * 32
    assert HEX16.fullmatch(span.context.span_id)
    if got is not None and got.valid:
        assert span.context.trace_id == got.trace_id and span.context.parent_id == got.span_id
    assert set(names(inject(span.context))) <= HEADERS


def test_no_propagation_header_is_none_and_tracestate_alone_is_ignored() -> None:
    assert extract([(b"host", b"orders")]) is None
    assert extract([(b"tracestate", b"k=v")]) is None


def test_traceparent_wins_over_b3_and_an_invalid_one_falls_back_to_b3() -> None:
    tp = (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())
    b3 = (b"b3", f"{'a' * 32}-{'b' * 16}-0".encode())
    got = extract([b3, tp])
    assert got is not None and got.trace_id == TRACE and got.b3 == B3_SINGLE
    got = extract([(b"traceparent", b"junk"), b3])
    assert got is not None and (got.trace_id, got.sampled) == ("a" * 32, False)


# --- tracestate -----------------------------------------------------------------------


def test_tracestate_headers_are_joined_and_passed_on() -> None:
    tp = (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())
    got = extract([tp, (b"tracestate", b"a=1 , b=2"), (b"tracestate", b"c@sys=x y")])
    assert got is not None and got.tracestate == "a=1,b=2,c@sys=x y"
    span = tracer().start("GET", "client", got)
    assert (b"tracestate", b"a=1,b=2,c@sys=x y") in inject(span.context)


@pytest.mark.parametrize(
    "value",
    [
        b"A=1",  # uppercase key
        b"a=1,a=2",  # duplicate key
        b"a=1,=2",
        b"a=x=y",  # '=' in a value
        b",".join(b"k%d=v" % i for i in range(33)),  # more than 32 members
    ],
)
def test_an_invalid_tracestate_is_dropped(value: bytes) -> None:
    got = extract([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", value)])
    assert got is not None and got.valid and got.tracestate == ""


def test_a_long_tracestate_is_cut_long_members_first_then_from_the_end() -> None:
    long = "big=" + "x" * 200
    members = [f"k{i}={'v' * 40}" for i in range(20)]
    value = ",".join([members[0], long, *members[1:]]).encode()
    got = extract([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", value)])
    assert got is not None
    assert len(got.tracestate) <= MAX_TRACESTATE
    kept = got.tracestate.split(",")
    assert "big" not in got.tracestate and kept == members[: len(kept)] and len(kept) > 5


# --- sampling -------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "ratio"), [("01", 0.0), ("00", 1.0)])
def test_the_parents_sampled_flag_beats_the_ratio(flag: str, ratio: float) -> None:
    got = extract([(b"traceparent", f"00-{TRACE}-{SPAN}-{flag}".encode())])
    span = tracer(ratio).start("GET", "server", got)
    assert span.context.sampled is (flag == "01")
    assert inject(span.context)[0][1].endswith(flag.encode())


def test_the_ratio_decides_for_new_traces() -> None:
    assert all(tracer(1.0).start("GET", "server").context.sampled for _ in range(100))
    assert not any(tracer(0.0).start("GET", "server").context.sampled for _ in range(100))
    t = tracer(0.25)
    sampled = sum(bool(t.start("GET", "server").context.sampled) for _ in range(4000))
    assert 800 < sampled < 1200


def test_a_deferred_b3_decision_is_the_same_in_every_sidecar() -> None:
    tracers = [tracer(0.5, seed=s) for s in range(5)]
    for i in range(50):
        trace = f"{random.Random(i).getrandbits(128):032x}"
        got = extract([(b"b3", f"{trace}-{SPAN}".encode())])
        assert got is not None and got.sampled is None
        decisions = {t.start("GET", "server", got).context.sampled for t in tracers}
        assert len(decisions) == 1


@pytest.mark.parametrize(
    ("headers", "sampled"),
    [
        ([(b"b3", b"0")], False),
        ([(b"b3", b"1")], True),
        ([(b"x-b3-sampled", b"0")], False),
        ([(b"x-b3-sampled", b"true")], True),
        ([(b"x-b3-flags", b"1")], True),
    ],
)
def test_a_bare_sampling_decision_is_honoured_on_a_new_trace(
    headers: list[tuple[bytes, bytes]], sampled: bool
) -> None:
    got = extract(headers)
    assert got is not None and not got.valid and got.sampled is sampled
    span = tracer(1.0 - sampled).start("GET", "server", got)
    assert span.context.sampled is sampled and span.context.parent_id is None


def test_debug_is_sampled_and_forwarded_as_debug() -> None:
    multi = [(b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", SPAN.encode())]
    got = extract([*multi, (b"x-b3-flags", b"1"), (b"b3", f"{TRACE}-{SPAN}-d".encode())])
    assert got is not None and got.debug and got.sampled
    sent = dict(inject(tracer(0.0).start("GET", "client", got).context))
    assert sent[b"traceparent"].endswith(b"-01")
    assert sent[b"b3"].split(b"-")[2] == b"d" and sent[b"x-b3-flags"] == b"1"
    assert b"x-b3-sampled" not in sent


@pytest.mark.parametrize(
    ("exporter", "ratio", "recording"),
    [("off", 1.0, False), ("otlp", 0.0, False), ("otlp", 1.0, True)],
)
def test_a_span_records_only_when_sampled_and_exported(
    exporter: str, ratio: float, recording: bool
) -> None:
    t = tracer(ratio, exporter)
    span = t.start("GET", "server")
    span.set("k", "v")
    assert span.recording is recording
    span.end(10)
    assert (span.attributes == {"k": "v"}) is recording
    assert (0 if t.exporter is None else len(t.exporter)) == int(recording)


# --- spans ----------------------------------------------------------------------------


def test_children_share_the_trace_and_name_their_parent() -> None:
    t = tracer()
    incoming = extract([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
    server = t.start("GET", "server", incoming)
    client = t.start("GET", "client", server.context)
    assert server.context.trace_id == client.context.trace_id == TRACE
    assert (server.context.parent_id, client.context.parent_id) == (SPAN, server.context.span_id)
    assert server.parent_remote and not client.parent_remote
    sent = dict(inject(client.context))
    assert sent[b"b3"] == f"{TRACE}-{client.context.span_id}-1-{server.context.span_id}".encode()


@pytest.mark.parametrize(
    ("kind", "status", "error", "expected"),
    [
        ("server", 200, None, None),
        ("server", 404, None, None),
        ("client", 404, None, "404"),
        ("server", 502, None, "502"),
        ("client", 503, "no-instance", "no-instance"),
        ("server", None, "upstream-timeout", "upstream-timeout"),
    ],
)
def test_response_attributes_follow_the_http_conventions(
    kind: Any, status: int | None, error: str | None, expected: str | None
) -> None:
    span = tracer(exporter="otlp").start("GET", kind)
    span.set_request("GET", "/api/1", "127.0.0.1", 8080, "orders")
    span.set_response(status, error)
    attributes = span.attributes
    assert attributes is not None
    assert attributes["http.request.method"] == "GET" and attributes["url.path"] == "/api/1"
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", 8080)
    assert attributes["peer.service"] == "orders"
    assert attributes.get("http.response.status_code") == status
    assert attributes.get("error.type") == expected and span.error is (expected is not None)


def test_end_is_once_and_a_not_recording_span_ignores_attributes() -> None:
    t = tracer(exporter="otlp")
    span = t.start("GET", "server", now_ns=5)
    span.end(7)
    span.end(9)
    assert (span.start_ns, span.end_ns) == (5, 7)
    assert t.exporter is not None and len(t.exporter) == 1
    quiet = tracer().start("GET", "server")
    quiet.set_request("GET", "/", "h")
    quiet.set_response(500, "internal")
    assert quiet.attributes is None and not quiet.error


# --- config ---------------------------------------------------------------------------


def test_defaults_propagate_and_do_not_export() -> None:
    config = parse_tracing(None, "observe.tracing")
    assert config == TracingConfig()
    assert (config.propagate, config.exporter, config.sample_ratio) == (True, "off", 1.0)
    assert (config.max_queue, config.batch_size, config.flush_interval) == (2048, 512, 1.0)
    assert Tracer(None, service="s").exporter is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (False, TracingConfig(propagate=False)),
        ("off", TracingConfig(propagate=False)),
        (True, TracingConfig()),
        ("zipkin", TracingConfig(exporter="zipkin")),
        ({"exporter": False}, TracingConfig()),
        (
            {"exporter": "otlp", "endpoint": "http://127.0.0.1:4318/", "protocol": "protobuf"},
            TracingConfig(exporter="otlp", endpoint="http://127.0.0.1:4318", protocol="protobuf"),
        ),
        (
            {"sample_ratio": "0.1", "max_queue": 10, "batch_size": 10, "flush_interval": "200ms"},
            TracingConfig(sample_ratio=0.1, max_queue=10, batch_size=10, flush_interval=0.2),
        ),
        (
            {"headers": {"authorization": "Bearer x"}},
            TracingConfig(headers={"authorization": "Bearer x"}),
        ),
    ],
)
def test_config_values(raw: Any, expected: TracingConfig) -> None:
    assert parse_tracing(raw, "observe.tracing") == expected


def test_config_problems_name_their_keys() -> None:
    raw = {
        "exporter": "jaeger",
        "endpoint": "https://collector:4318",
        "sample_ratio": 1.5,
        "max_queue": 0,
        "flush_interval": "soon",
        "colour": "blue",
    }
    assert_starts(
        problems_raised(parse_tracing, raw, "observe.tracing"),
        [
            "observe.tracing.colour: unknown key",
            "observe.tracing.exporter: expected one of off, otlp, zipkin",
            "observe.tracing.endpoint: expected an http:// URL",
            "observe.tracing.sample_ratio: must be within 0-1",
            "observe.tracing.max_queue: must be positive",
            "observe.tracing.flush_interval: expected a duration",
        ],
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"max_queue": 100, "batch_size": 200}, "observe.tracing.batch_size: must be at most"),
        ({"batch_size": 4096}, "observe.tracing.batch_size: must be at most max_queue (2048)"),
        ({"exporter": "zipkin", "protocol": "protobuf"}, "observe.tracing.protocol: only for"),
        ({"propagate": "off", "exporter": "otlp"}, "observe.tracing.exporter: spans need"),
        ({"endpoint": "http://h:0"}, "observe.tracing.endpoint: expected http://HOST"),
        ({"endpoint": "http://h:99999"}, "observe.tracing.endpoint: expected a URL"),
        ({"endpoint": "http://h/x?y=1"}, "observe.tracing.endpoint: expected http://HOST"),
        ("jaeger", "observe.tracing: expected a mapping"),
    ],
)
def test_config_cross_checks(raw: Any, problem: str) -> None:
    assert_starts(problems_raised(parse_tracing, raw, "observe.tracing"), [problem])


@pytest.mark.parametrize(
    ("exporter", "endpoint", "collector"),
    [
        ("otlp", None, ("127.0.0.1", 4318, "/v1/traces")),
        ("zipkin", None, ("127.0.0.1", 9411, "/api/v2/spans")),
        ("otlp", "http://[::1]:4000/base", ("::1", 4000, "/base/v1/traces")),
        ("otlp", "http://127.0.0.1:4000/v1/traces", ("127.0.0.1", 4000, "/v1/traces")),
        ("zipkin", "http://localhost", ("localhost", 80, "/api/v2/spans")),
    ],
)
def test_collector_address(exporter: Any, endpoint: str | None, collector: Any) -> None:
    assert TracingConfig(exporter=exporter, endpoint=endpoint).collector == collector


# --- the fuzz harness's invariant (fuzz/fuzz_trace.py) ---------------------------------

TRACE_CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus" / "trace"


@pytest.mark.parametrize("path", sorted(TRACE_CORPUS.iterdir()), ids=lambda p: p.name)
def test_fuzz_invariant_holds_on_the_seed_corpus(path: Path) -> None:
    fuzz_trace.check(path.read_bytes())


@given(st.binary(max_size=300))
def test_fuzz_invariant_holds_for_any_bytes(data: bytes) -> None:
    fuzz_trace.check(data)
