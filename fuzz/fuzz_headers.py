"""Fuzz the header rewriting: `end_to_end`, `response_headers`, `filter_trailers`.

Input: a flags byte (bit 0 allow_underscores, bit 1 keep_upgrade / close,
bit 2 a `drop` set), then `name: value` lines. The lines are validated by h11
first, as every header list the sidecar rewrites was; invalid input is skipped.

Invariant, for any such header list and flags:

1. Nothing raises.
2. `end_to_end` keeps exactly the input fields, in order, that are not
   hop-by-hop, not in `drop`, not named by `Connection` (Host and framing
   excepted: a client cannot remove them that way), and without "_" unless
   allowed; plus `Connection: upgrade` + `Upgrade` at the end when kept for a
   WebSocket. It returns the last Content-Length value, and is idempotent.
3. `response_headers` leaves no hop-by-hop field but Content-Length (and our
   own `Connection: close` exactly when asked), no nominated or "_" field,
   ends the last Via field with our entry, reports the Content-Length it kept
   (none when Transfer-Encoding framed the body) and a sane Keep-Alive timeout.
4. `filter_trailers` never lets a forbidden, `proxy-*` or (unless allowed) "_"
   field through, keeps the rest in order, and is idempotent.

Run: `python fuzz/fuzz_headers.py [libFuzzer flags] [corpus dirs]` (atheris).
`check` is also replayed over fuzz/corpus/headers/ by tests/unit/test_headers.py.
"""

from __future__ import annotations

import contextlib
import sys

if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["trimesh"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import h11

    from trimesh.http import headers as hh

Headers = list[tuple[bytes, bytes]]
VIA = b"1.1 trimesh-fuzz"
DROP = frozenset({b"x-cse-context", b"x-forwarded-port"})


def parse(data: bytes) -> tuple[int, Headers] | None:
    """Flags and an h11-validated header list, or None if h11 refuses the fields."""
    if not data:
        return None
    pairs = []
    for line in data[1:].split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon:
            pairs.append((name, value.strip(b" \t")))
    try:
        response = h11.Response(status_code=200, headers=pairs)
    except h11.LocalProtocolError:
        return None
    return data[0], hh.items(response.headers)


def nominated(headers: Headers) -> frozenset[bytes]:
    return hh.connection_tokens(headers) - hh.NOT_NOMINABLE


def check_end_to_end(headers: Headers, flags: int) -> None:
    allow, upgrade = bool(flags & 1), bool(flags & 2)
    drop = DROP if flags & 4 else frozenset()
    named = nominated(headers)
    kept, length = hh.end_to_end(headers, keep_upgrade=upgrade, drop=drop, allow_underscores=allow)
    expected = [
        (n, v)
        for n, v in headers
        if n not in hh.HOP_BY_HOP and n not in drop and n not in named and (allow or b"_" not in n)
    ]
    upgrades = [v for n, v in headers if n == b"upgrade"]
    if upgrade and upgrades:
        expected += [(b"connection", b"upgrade"), (b"upgrade", upgrades[-1])]
    assert kept == expected, (headers, kept)
    lengths = [v for n, v in headers if n == b"content-length"]
    assert length == (lengths[-1] if lengths else None)
    if b"host" not in drop:
        assert [f for f in headers if f[0] == b"host"] == [f for f in kept if f[0] == b"host"]
    again = hh.end_to_end(kept, keep_upgrade=upgrade, drop=drop, allow_underscores=allow)
    assert again == (kept, None), (kept, again)


def check_response(headers: Headers, flags: int) -> None:
    allow, close = bool(flags & 1), bool(flags & 2)
    kept, length, keepalive = hh.response_headers(
        headers, VIA, allow_underscores=allow, close=close
    )
    # A plain model of the rules, field by field.
    named = nominated(headers)
    chunked = any(n == b"transfer-encoding" for n, _ in headers)
    expected = [
        (n, v)
        for n, v in headers
        if (n == b"content-length" and not chunked)
        or (n not in hh.HOP_BY_HOP and n not in named and (allow or b"_" not in n))
    ]
    vias = [i for i, (n, _) in enumerate(expected) if n == b"via"]
    if vias:
        expected[vias[-1]] = (b"via", expected[vias[-1]][1] + b", " + VIA)
    else:
        expected.append((b"via", VIA))
    if close:
        expected.append((b"connection", b"close"))
    assert kept == expected, (headers, kept)
    lengths = [int(v) for n, v in kept if n == b"content-length"]
    assert lengths == ([] if length is None else [length])
    assert keepalive is None or 0 <= keepalive < 10**9


def check_trailers(headers: Headers, flags: int) -> None:
    allow = bool(flags & 1)
    kept = hh.filter_trailers(headers, allow_underscores=allow)
    for name, _ in kept:
        assert name not in hh.TRAILER_FORBIDDEN and not name.startswith(b"proxy-"), name
        assert allow or b"_" not in name, name
    it = iter(headers)
    assert all(field in it for field in kept), "not an ordered subsequence"
    assert hh.filter_trailers(kept, allow_underscores=allow) == kept


def check(data: bytes) -> None:
    """The invariant above; raises AssertionError (or the unexpected exception) if broken."""
    parsed = parse(data)
    if parsed is None:
        return
    flags, headers = parsed
    check_end_to_end(headers, flags)
    check_response(headers, flags)
    check_trailers(headers, flags)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
