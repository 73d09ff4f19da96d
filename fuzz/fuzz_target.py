"""Fuzz request-target parsing: `parse_absolute` and `parse_authority`.

Invariant, for any bytes:

1. Both raise nothing but `BadRequest`.
2. A parsed target is one we can route: a registry-safe host, a port in
   1..65535 or none, a path that is origin-form (starts with "/", no
   fragment).
3. Parsing is stable: re-parsing `http://<authority><path>` of a result gives
   the same result; `parse_authority` of its authority gives its host and port.
"""

from __future__ import annotations

import contextlib
import re
import sys

if __name__ == "__main__":
    import atheris

    _instrumented = atheris.instrument_imports(include=["trimesh"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    from trimesh.errors import BadRequest
    from trimesh.http.target import Target, parse_absolute, parse_authority

_ROUTABLE_HOST = re.compile(r"[A-Za-z0-9._~-]{1,253}")


def _check_target(target: Target) -> None:
    assert _ROUTABLE_HOST.fullmatch(target.host), target
    assert target.port is None or 0 < target.port < 65536, target
    assert target.path.startswith(b"/") and b"#" not in target.path, target
    again = parse_absolute(b"http://" + target.authority + target.path)
    assert again == target, (again, target)
    assert parse_authority(target.authority, allow_no_port=True) == (target.host, target.port)


def check(data: bytes) -> None:
    """The invariant above; raises AssertionError (or the unexpected exception) if broken."""
    with contextlib.suppress(BadRequest):
        _check_target(parse_absolute(data))
    with contextlib.suppress(BadRequest):
        host, port = parse_authority(data)
        assert _ROUTABLE_HOST.fullmatch(host) and port is not None and 0 < port < 65536


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
