"""Fuzz trace-context propagation: `extract` of any header values, then `inject`.

Invariant, for any bytes (split on newlines into values for the propagation
headers, in a rotating order):

1. `extract` never raises; a span started under what it found has valid ids
   (32/16 lower-case hex, not all zero).
2. What `inject` forwards is well-formed (visible ASCII only, no CR/LF) and
   continues the same trace: extracting it again gives the span's trace id,
   its span id as the parent, and the same sampling decision.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys

if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["trimesh"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    from trimesh.observe.tracing import HEADER_NAMES, Tracer, extract, inject

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_VISIBLE = re.compile(rb"[\x20-\x7e]*")
_tracer = Tracer(None, service="fuzz", rng=random.Random(0))


def check(data: bytes) -> None:
    """The invariant above; raises AssertionError (or the unexpected exception) if broken."""
    shift = data[0] if data else 0
    values = data[1:].split(b"\n")
    headers = [(HEADER_NAMES[(shift + i) % len(HEADER_NAMES)], v) for i, v in enumerate(values)]
    span = _tracer.start("GET", "client", extract(headers))
    ctx = span.context
    assert _HEX32.fullmatch(ctx.trace_id) and ctx.trace_id != "0" * 32, ctx
    assert _HEX16.fullmatch(ctx.span_id) and ctx.span_id != "0" * 16, ctx
    forwarded = inject(ctx)
    assert forwarded and all(_VISIBLE.fullmatch(v) for _, v in forwarded), forwarded
    again = extract(forwarded)
    assert again is not None and again.trace_id == ctx.trace_id, (again, ctx)
    assert again.span_id == ctx.span_id, (again, ctx)
    assert again.sampled == (ctx.sampled or ctx.debug), (again, ctx)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
