"""The errors trimesh itself generates, and the one function that answers them.

Every failure the proxy produces (as opposed to a provider's own error
response) is a `ProxyError` subclass. `rescue` maps each to a status, a
short text body and an `x-trimesh-error` header, so an app can tell a proxy
failure from its provider's own 502 (like linkerd's `l5d-proxy-error`).
"""

from __future__ import annotations

import attrs


class ProxyError(Exception):
    """Base class: `kind` names it on the wire, `status` is the HTTP answer."""

    kind = "internal"
    status = 500
    # Whether the downstream connection must be closed after answering.
    close = False
    # What a retry policy calls this failure of an attempt (`retry.retry_on`); None: never retried.
    retry_kind: str | None = None

    def __init__(self, detail: str = "", *, retry_kind: str | None = None) -> None:
        super().__init__(detail or self.kind)
        self.detail = detail
        if retry_kind is not None:
            self.retry_kind = retry_kind


class BadRequest(ProxyError):
    """The client sent something we refuse to parse or forward."""

    kind = "bad-request"
    status = 400
    close = True


class NotProxyRequest(ProxyError):
    """An origin-form request on the outbound listener."""

    kind = "not-a-proxy-request"
    status = 400


class MethodNotAllowed(ProxyError):
    kind = "method-not-allowed"
    status = 405


class RequestTimeout(ProxyError):
    kind = "request-timeout"
    status = 408
    close = True


class BodyTooLarge(ProxyError):
    kind = "body-too-large"
    status = 413
    close = True


class UriTooLong(ProxyError):
    kind = "uri-too-long"
    status = 414
    close = True


class HeadersTooLarge(ProxyError):
    kind = "headers-too-large"
    status = 431
    close = True


class NotImplementedFraming(ProxyError):
    kind = "not-implemented"
    status = 501
    close = True


class VersionNotSupported(ProxyError):
    """An HTTP version other than 1.0 and 1.1 (including the HTTP/2 preface)."""

    kind = "version-not-supported"
    status = 505
    close = True


class Misdirected(ProxyError):
    """The request names a service that this inbound sidecar does not serve."""

    kind = "misdirected"
    status = 421
    close = True


class Forbidden(ProxyError):
    """A target we refuse to reach (our own ports, link-local, not allowed)."""

    kind = "forbidden"
    status = 403


class Overloaded(ProxyError):
    """More connections than `limits.max_connections` on one listener."""

    kind = "overloaded"
    status = 503
    close = True


class ServiceNotFound(ProxyError):
    kind = "service-not-found"
    status = 502

    def __init__(self, detail: str = "", service: str | None = None) -> None:
        super().__init__(detail)
        self.service = service


class UpstreamConnect(ProxyError):
    kind = "upstream-connect"
    status = 502
    retry_kind = "connect-failure"


class UpstreamProtocol(ProxyError):
    kind = "upstream-protocol"
    status = 502


class RegistryUnreachable(ProxyError):
    """The registry could not answer for a service we had never looked up."""

    kind = "registry-unavailable"
    status = 503


class NoInstance(ProxyError):
    kind = "no-instance"
    status = 503


class UpstreamTimeout(ProxyError):
    kind = "upstream-timeout"
    status = 504


class LoopDetected(ProxyError):
    kind = "loop-detected"
    status = 508


class DownstreamGone(Exception):
    """The client went away; nothing can be answered. Not a `ProxyError`."""


@attrs.frozen
class Rescue:
    """A synthetic response for a `ProxyError`."""

    status: int
    kind: str
    body: bytes
    close: bool

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            (b"x-trimesh-error", self.kind.encode()),
        ]


def rescue(error: ProxyError) -> Rescue:
    """Map a proxy error to the response the client gets."""
    text = f"trimesh: {error.kind}"
    if error.detail and error.detail != error.kind:
        text += f": {error.detail}"
    return Rescue(error.status, error.kind, (text + "\n").encode(), error.close)
