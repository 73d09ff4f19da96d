"""Request-target parsing (RFC 9112 3.2): sans-IO.

On the outbound listener the app sends absolute-form (`http://orders:8080/a?b`)
or authority-form for CONNECT (`orders:8080`); the host is a service name.
"""

from __future__ import annotations

import re

import attrs

from trimesh.errors import BadRequest

# A registry service name or DNS-ish host; no userinfo, no IP-literal brackets here.
_HOST = re.compile(rb"[A-Za-z0-9._~-]{1,253}")
_SCHEMES = {b"http": 80, b"ws": 80}


@attrs.frozen
class Target:
    """A parsed absolute-form or authority-form target."""

    host: str
    port: int | None
    path: bytes  # origin-form: path plus query, at least b"/"
    # CONNECT to an egress host: the resolved addresses to open a byte tunnel to.
    addresses: tuple[tuple[str, int], ...] = ()

    @property
    def authority(self) -> bytes:
        host = self.host.encode()
        return host if self.port is None else host + b":%d" % self.port

    @property
    def effective_port(self) -> int:
        return 80 if self.port is None else self.port


def is_origin_form(target: bytes) -> bool:
    return target[:1] == b"/" or target == b"*"


def parse_absolute(target: bytes) -> Target:
    """`http://host[:port][/path][?query]` → Target. Raises `BadRequest`."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in _SCHEMES:
        if scheme.lower() == b"https":
            raise BadRequest("https targets must use CONNECT")
        raise BadRequest("request target is not an http:// URL")
    cut = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    host, port = parse_authority(authority, allow_no_port=True)
    path = path.split(b"#", 1)[0]
    if not path.startswith(b"/"):
        path = b"/" + path
    return Target(host, port, path)


def parse_authority(authority: bytes, *, allow_no_port: bool = False) -> tuple[str, int | None]:
    """`host[:port]` → (host, port). Raises `BadRequest`."""
    if b"@" in authority:
        raise BadRequest("userinfo in the request target")
    host, sep, port_text = authority.rpartition(b":")
    if not sep:
        host, port_text = authority, b""
    if not _HOST.fullmatch(host):
        raise BadRequest("bad host in the request target")
    if not port_text:
        if sep or not allow_no_port:
            raise BadRequest("missing port in the request target")
        return host.decode("ascii"), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(port_text) > 5:
        raise BadRequest("bad port in the request target")
    return host.decode("ascii"), int(port_text)
