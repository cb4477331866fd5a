"""A lean HTTP/1.1 front for the lean-front bench (``fleet.bench.lean_front``, issue 24): httptools'
parser under an ``asyncio.Protocol``, one handler call per request (a coroutine handler in a
task of its own), keep-alive, no framework. What an ingress without Serve's, uvicorn's and Starlette's per-request Python would
cost; not the fleet's serving path. The handler gets the body and the headers (lower-case
names, a repeated header's first value) and returns the whole response's bytes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Awaitable, Callable

import httptools

from fleet.serve.bid_front import http_response

Handler = Callable[[bytes, dict[bytes, bytes]], bytes]  # body, headers (lower-case) -> the whole response
AsyncHandler = Callable[[bytes, dict[bytes, bytes]], Awaitable[bytes]]


NO_CONTENT = http_response(204, {}, b"")
BAD_REQUEST = http_response(400, {"content-type": "application/json", "connection": "close"}, b'{"error":"bad request"}')
TOO_LARGE = http_response(413, {"content-type": "application/json", "connection": "close"}, b'{"error":"body too large"}')


def no_content(body: bytes, headers: dict[bytes, bytes]) -> bytes:
    return NO_CONTENT


def canned_handler() -> Handler:
    """``fleet.bench.canned_app``'s 2,163 B bid answer with its headers (imported here: it
    imports Ray's Serve, which a bench must not import before it sets Ray's environment)."""
    from fleet.bench.canned_app import BODY, HEADERS

    answer = http_response(200, HEADERS, BODY)
    return lambda body, headers: answer


def bid_handler(region: str = "us-east", model: str = "ctr/v1") -> tuple[Handler, Counter]:
    """The in-process bid path as a handler, built as ``fleet.bench.cost_inproc`` builds it;
    with the answers' statuses counted."""
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.ledger.signing import NoticeSigner
    from fleet.ml.scorer import load_scorer
    from fleet.pipeline.bidder import RegionBidder

    regions = load_regions()
    bidder = RegionBidder(region, regions, load_catalog(regions.defaults.catalog),
                          scorer=load_scorer(model, "onnx-cpu"), signer=NoticeSigner({"bench": b"b" * 32}))
    statuses: Counter = Counter()

    def handle(body: bytes, headers: dict[bytes, bytes]) -> bytes:
        def h(name: bytes) -> str | None:
            v = headers.get(name)
            return None if v is None else v.decode("latin-1")

        a = bidder.bid(body, version=h(b"x-openrtb-version"), content_encoding=h(b"content-encoding"),
                       accept_encoding=h(b"accept-encoding"))
        statuses[a.status] += 1
        return http_response(a.status, a.headers, a.body)

    return handle, statuses


def awaiting_bid_handler(region: str = "us-east", model: str = "ctr/v1") -> tuple[AsyncHandler, Counter]:
    """``bid_handler`` awaited once before the bid path, as a region awaits its cache lookup:
    the answer comes one loop pass later (the lookup's own CPU, the cache client's ~25 us a
    request in the replica, is not in it)."""
    handle, statuses = bid_handler(region, model)

    async def ahandle(body: bytes, headers: dict[bytes, bytes]) -> bytes:
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        loop.call_soon(reply.set_result, None)
        await reply
        return handle(body, headers)

    return ahandle, statuses


class LeanProtocol(asyncio.Protocol):
    """One connection: httptools parses, each complete request is one handler call, keep-alive
    unless the client asks to close. Bad framing is a 400 and the connection closes."""

    def __init__(self, front: LeanFront) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.last: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.front.counts["connections"] += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(BAD_REQUEST)

    def _refuse(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.headers, self.body, self.size = {}, [], 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.lower(), value)  # a repeated header: its first value

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.front.max_body:
            self._refuse(TOO_LARGE)
        else:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        self.front.counts["requests"] += 1
        if self.front.awaits:  # one task per request, answers written in the requests' order
            self.last = asyncio.ensure_future(self._answer(b"".join(self.body), self.headers,
                                                           self.parser.should_keep_alive(), self.last))
            return
        self.transport.write(self.front.handler(b"".join(self.body), self.headers))
        if not self.parser.should_keep_alive():
            self.transport.close()

    async def _answer(self, body: bytes, headers: dict[bytes, bytes], keep: bool, before) -> None:
        response = await self.front.handler(body, headers)
        if before is not None and not before.done():
            await before
        if not self.transport.is_closing():
            self.transport.write(response)
            if not keep:
                self.transport.close()


class LeanFront:
    """An HTTP/1.1 server with no framework: httptools' parser under ``asyncio.Protocol``. A
    coroutine handler is awaited in a task of its own per request (as a region's, which awaits
    its cache lookup, would be)."""

    def __init__(self, handler: Handler | AsyncHandler, max_body: int = 1 << 20) -> None:
        self.handler, self.max_body = handler, max_body
        self.awaits = asyncio.iscoroutinefunction(handler)
        self.counts: Counter = Counter()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: LeanProtocol(self), host, port, backlog=1024)
