"""The errors trimesh itself generates, and the one function that answers them.

Every failure the proxy produces (as opposed to a provider's own error
response) is a `ProxyError` subclass. `rescue` maps each to a status, a
short text body and an `x-trimesh-error` header, so an app can tell a proxy
failure from its provider's own 502 (like linkerd's `l5d-proxy-error`).
"""

from __future__ import annotations

import math

import attrs


class ProxyError(Exception):
    """Base class: `kind` names it on the wire, `status` is the HTTP answer."""

    kind = "internal"
    status = 500
    # Whether the downstream connection must be closed after answering.
    close = False
    # What a retry policy calls this failure of an attempt (`retry.retry_on`); None: never retried.
    retry_kind: str | None = None
    # Seconds after which trying again may succeed: sent as `Retry-After` (429, 503).
    retry_after: float | None = None

    def __init__(
        self,
        detail: str = "",
        *,
        retry_kind: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail or self.kind)
        self.detail = detail
        if retry_kind is not None:
            self.retry_kind = retry_kind
        if retry_after is not None:
            self.retry_after = retry_after
        if status is not None:
            self.status = status


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


class EgressDenied(Forbidden):
    """An external host (or port) not in `egress.allow`, or one of our own listeners."""

    kind = "egress-denied"


class RateLimited(ProxyError):
    """A token bucket (`rate_limit`, `inbound.rate_limit`) had no token for this request."""

    kind = "rate-limited"
    status = 429


class CircuitOpen(ProxyError):
    """The target service's circuit breaker is open: no upstream call was made."""

    kind = "circuit-open"
    status = 503


class MaxConcurrency(ProxyError):
    """The target service already has `max_concurrent` requests in flight (the bulkhead)."""

    kind = "max-concurrency"
    status = 503


class FaultAbort(ProxyError):
    """An injected fault (`fault.abort`): answered with the configured status."""

    kind = "fault-abort"
    status = 503


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
    retry_after: float | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            (b"x-trimesh-error", self.kind.encode()),
        ]
        if self.retry_after is not None:
            # Whole seconds (RFC 9110), rounded up and at least 1: "0" invites a hot loop.
            out.append((b"retry-after", b"%d" % max(1, math.ceil(self.retry_after))))
        return out


def rescue(error: ProxyError) -> Rescue:
    """Map a proxy error to the response the client gets."""
    text = f"trimesh: {error.kind}"
    if error.detail and error.detail != error.kind:
        text += f": {error.detail}"
    return Rescue(error.status, error.kind, (text + "\n").encode(), error.close, error.retry_after)
