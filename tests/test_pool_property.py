"""Property: whatever an upstream writes, response i reaches request i and no other client.

Hypothesis draws a sequence of upstream answers: every framing (Content-Length,
chunked with or without trailers, close-delimited, 204, 304, an answer to
HEAD), optionally followed by bytes the upstream should never have written (a
body on a bodiless answer, more than it framed, a second response). Each
request comes from a new client connection, so only the sidecar's upstream
pool could carry bytes from one client's response to another. Every example
gets a fresh sidecar and upstream (its own nursery), so failures replay and
shrink.
"""

from __future__ import annotations

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawserver import RawConn, RawUpstream, http_exchange
from tests.servers import sidecar_config, start_sidecar

FRAMINGS = ["length", "chunked", "chunked-trailers", "close", "204", "304", "head"]


@attrs.frozen
class Answer:
    framing: str
    junk: bool  # bytes after the response: body-on-bodiless, overlong, or a second response

    def method(self) -> bytes:
        return b"HEAD" if self.framing == "head" else b"GET"

    def wire(self, i: int) -> bytes:
        marker = b"m%d" % i
        body = b"body-" + marker
        head = b"HTTP/1.1 200 OK\r\nx-m: " + marker + b"\r\n"
        if self.framing in ("length", "head"):
            out = head + b"content-length: %d\r\n\r\n" % len(body)
            out += b"" if self.framing == "head" else body
        elif self.framing.startswith("chunked"):
            out = head + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n" % (len(body), body)
            out += b"x-t: 1\r\n\r\n" if self.framing == "chunked-trailers" else b"\r\n"
        elif self.framing == "close":
            return head + b"\r\n" + body  # ends at close: nothing can follow it
        else:
            out = b"HTTP/1.1 %s X\r\nx-m: %s\r\n\r\n" % (self.framing.encode(), marker)
        if self.junk:
            out += b"JUNK-" + marker + b"\r\n" + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nJUNK"
        return out

    def closes(self) -> bool:
        return self.framing == "close"


ANSWERS = st.builds(Answer, st.sampled_from(FRAMINGS), st.booleans())


async def _one_example(answers: list[Answer]) -> None:
    async def script(conn: RawConn) -> None:
        while (got := await conn.next_request()) is not None:
            request, _ = got
            i = int(request.target.rsplit(b"/", 1)[1])
            await conn.send(answers[i].wire(i))
            if answers[i].closes():
                return

    async with trio.open_nursery() as nursery:
        up = RawUpstream(script)
        await nursery.start(up.serve)
        raw = sidecar_config(registry={"services": {"svc": [{"address": f"127.0.0.1:{up.port}"}]}})
        _, bound = await start_sidecar(nursery, raw)
        for i, answer in enumerate(answers):
            request = b"%s http://svc/%d HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n" % (
                answer.method(),
                i,
            )
            with trio.fail_after(10):
                reply = await http_exchange(bound.outbound[1], request)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert b"JUNK" not in reply, (i, reply)
            assert b"x-m: m%d\r\n" % i in head + b"\r\n", (i, reply)
            if answer.framing in ("204", "304", "head"):
                assert body == b"", (i, reply)
            elif answer.framing == "chunked-trailers":
                assert b"body-m%d" % i in body and body.endswith(b"x-t: 1\r\n\r\n"), (i, reply)
            else:
                assert b"body-m%d" % i in body, (i, reply)
        nursery.cancel_scope.cancel()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ANSWERS, min_size=1, max_size=6))
async def test_response_i_reaches_request_i_whatever_the_upstream_writes(
    answers: list[Answer],
) -> None:
    await _one_example(answers)
