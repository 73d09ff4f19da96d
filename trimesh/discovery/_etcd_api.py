"""Thin calls to etcd's v3 JSON gRPC gateway: endpoints, auth, errors, streams.

The gateway speaks protobuf-as-JSON: `bytes` fields (keys, values) are
base64, 64-bit integers are JSON strings, and zero/false fields are omitted.
A streamed RPC (watch, lease keepalive) answers with one JSON object per
line, each wrapped as ``{"result": ...}`` or ``{"error": ...}``.

Error handling: connect failures, resets, 5xx answers, malformed bodies and
attempts that use up their share of the caller's deadline move on to the next
endpoint (`trimesh.discovery._failover`), and raise `RegistryUnavailable`
once every endpoint was tried; an answer etcd
gives on purpose (a 4xx such as "lease not found") raises `EtcdError`, a
`RegistryUnavailable` that carries the gRPC code. Resource handling: one
connection per call (see `trimesh.http.client`), closed before return.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from trimesh.discovery._failover import EndpointOrder, first_answer
from trimesh.discovery.base import RegistryUnavailable
from trimesh.http import client
from trimesh.http.client import HTTPClientError

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
T = TypeVar("T")

# gRPC status codes etcd uses in its JSON errors.
NOT_FOUND = 5
UNAUTHENTICATED = 16
MAX_STREAM_LINE = 16 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024


class EtcdError(RegistryUnavailable):
    """etcd refused a request (a 4xx answer or a stream error); `code` is the gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that makes a range read cover every key starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # etcd's "every key" marker
    return stripped[:-1] + bytes([stripped[-1] + 1])


def error_from(payload: Any, fallback: str) -> EtcdError:
    """Build an `EtcdError` from a gateway error body (unary or stream form)."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload = payload["error"]  # a stream error: {"error": {"grpc_code": ...}}
    if not isinstance(payload, dict):
        return EtcdError(0, fallback)
    code = payload.get("code", payload.get("grpc_code", 0))
    message = payload.get("message") or payload.get("error") or fallback
    return EtcdError(int(code) if isinstance(code, int) else 0, str(message))


class JsonLines:
    """Sans-IO splitter of a streamed body into JSON objects, one per line.

    Lines may arrive split across chunks or several to a chunk.
    Error handling: a complete line that is not a JSON object, or a line longer
    than `MAX_STREAM_LINE`, raises `RegistryUnavailable`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[JsonObject]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > MAX_STREAM_LINE:
            raise RegistryUnavailable("etcd stream line too long")
        self._buffer = bytearray(rest)
        return [_parse_object(line) for line in lines if line.strip()]

    def close(self) -> list[JsonObject]:
        """Parse whatever is left when the body ends without a final newline."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [_parse_object(rest)] if rest.strip() else []


def _parse_object(line: bytes | bytearray) -> JsonObject:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise RegistryUnavailable(f"malformed etcd stream line: {exc}") from exc
    if not isinstance(value, dict):
        raise RegistryUnavailable("etcd stream line is not a JSON object")
    return value


class ObjectStream:
    """The JSON objects of one streamed gateway response, read on demand."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._lines = JsonLines()
        self._ready: list[JsonObject] = []
        self._ended = False

    async def receive(self) -> JsonObject | None:
        """The next object's ``result``; None once the stream ended cleanly.

        Error handling: a broken connection raises `RegistryUnavailable`, an
        ``{"error": ...}`` object raises `EtcdError`.
        """
        while not self._ready and not self._ended:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                self._ready += self._lines.close()
            except HTTPClientError as exc:
                raise RegistryUnavailable(f"etcd stream broke: {exc}") from exc
            else:
                self._ready += self._lines.feed(chunk)
        if not self._ready:
            return None
        message = self._ready.pop(0)
        if "error" in message:
            raise error_from(message, "etcd stream error")
        result = message.get("result", {})
        return result if isinstance(result, dict) else {}


class EtcdGateway:
    """Calls to a set of etcd endpoints, with failover and token auth.

    The endpoint that answered last is tried first next time; the others
    follow in order. With a username, a token is fetched before the first
    call and fetched again when etcd reports it invalid (simple tokens expire).
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self._order = EndpointOrder(endpoints)
        self._credentials = (username, password or "") if username is not None else None
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"<EtcdGateway {self._order!r}>"

    def forget_token(self) -> None:
        """Drop the auth token so the next call authenticates again."""
        self._token = None

    async def call(self, path: str, body: JsonObject) -> JsonObject:
        """POST `body` to `path` (e.g. ``/v3/kv/range``) and return the decoded answer."""

        async def attempt(headers: dict[str, str]) -> JsonObject:
            return await self._call_once(path, body, headers)

        return await self._authorized(attempt)

    @asynccontextmanager
    async def stream(self, path: str, body: JsonObject) -> AsyncGenerator[ObjectStream, None]:
        """POST to a streaming RPC and yield its objects; the connection closes on exit."""
        async with AsyncExitStack() as stack:

            async def attempt(headers: dict[str, str]) -> client.StreamingResponse:
                return await self._open(stack, path, body, headers)

            chunks = aiter(await self._authorized(attempt))
            stack.push_async_callback(_close_chunks, chunks)
            yield ObjectStream(chunks)

    async def _authorized(self, attempt: Callable[[dict[str, str]], Awaitable[T]]) -> T:
        try:
            return await attempt(await self._auth_headers())
        except EtcdError as exc:
            if self._credentials is None or exc.code != UNAUTHENTICATED:
                raise
        log.info("etcd rejected our auth token; authenticating again")
        self.forget_token()
        return await attempt(await self._auth_headers())

    async def _open(
        self, outer: AsyncExitStack, path: str, body: JsonObject, headers: Mapping[str, str]
    ) -> client.StreamingResponse:
        async def attempt(endpoint: tuple[str, int]) -> client.StreamingResponse:
            async with AsyncExitStack() as opening:
                resp = await opening.enter_async_context(
                    client.stream("POST", *endpoint, path, headers=headers, body=_encode(body))
                )
                if resp.status != 200:
                    _raise_for_status(resp.status, await _read_error(resp))
                outer.push_async_exit(opening.pop_all())  # the caller closes it from now on
                return resp

        return await first_answer(self._order, attempt, retry_on=_RETRY, what=f"etcd {path}")

    async def _call_once(
        self, path: str, body: JsonObject, headers: Mapping[str, str]
    ) -> JsonObject:
        async def attempt(endpoint: tuple[str, int]) -> JsonObject:
            resp = await client.request(
                "POST", *endpoint, path, headers=headers, body=_encode(body)
            )
            _raise_for_status(resp.status, resp.body)
            answer = json.loads(resp.body) if resp.body else {}
            if not isinstance(answer, dict):
                raise ValueError("answer is not a JSON object")
            return answer

        return await first_answer(self._order, attempt, retry_on=_RETRY, what=f"etcd {path}")

    async def _auth_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._credentials is not None:
            if self._token is None:
                name, password = self._credentials
                answer = await self._call_once(
                    "/v3/auth/authenticate", {"name": name, "password": password}, headers
                )
                self._token = str(answer.get("token", ""))
            # etcd wants the bare token, not "Bearer <token>".
            headers["authorization"] = self._token
        return headers


class _ServerError(Exception):
    """A 5xx answer: this endpoint cannot serve now, another one may."""


# What makes the next endpoint worth trying; a 4xx (`EtcdError`) is etcd's answer.
_RETRY = (HTTPClientError, _ServerError, ValueError)


def _encode(body: JsonObject) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def _read_error(resp: client.StreamingResponse) -> bytes:
    try:
        return await resp.read_all(limit=MAX_ERROR_BODY)
    except HTTPClientError:
        return b""


def _raise_for_status(status: int, body: bytes) -> None:
    if status < 400:
        return
    if status >= 500:
        raise _ServerError(f"HTTP {status}: {body[:200]!r}")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    raise error_from(payload, f"HTTP {status}")


async def _close_chunks(chunks: AsyncIterator[bytes]) -> None:
    # The client's body reader is an async generator; close it now rather
    # than leave it to the garbage collector once we stop reading early.
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()
