"""The lean-front bench's server (``fleet.bench.lean_http``) answers real HTTP: keep-alive, a
body read whole, a 2 KB answer, bad framing refused with a 400, an oversized body with a 413.
So the bench's figures stay figures of a working server. No Ray, no timing."""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import contextmanager

import httpx
import pytest

from fleet.bench.canned_app import BODY as CANNED_BODY
from fleet.bench.lean_http import LeanFront, canned_handler, http_response, no_content


@contextmanager
def running(front: LeanFront):
    """``front`` on an ephemeral port, its loop in a thread of its own; yields the base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        box["server"] = loop.run_until_complete(front.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert started.wait(10)
    port = box["server"].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(box["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)


def test_keep_alive_no_content():
    front = LeanFront(no_content)
    with running(front) as base, httpx.Client() as client:
        for _ in range(3):
            r = client.post(f"{base}/openrtb2/bid", content=b'{"id":"1"}')
            assert r.status_code == 204 and r.content == b""
    assert front.counts["requests"] == 3
    assert front.counts["connections"] == 1  # one connection kept for all three


def test_canned_answer_is_the_bid_sized_body():
    with running(LeanFront(canned_handler())) as base:
        r = httpx.post(f"{base}/openrtb2/bid", content=b"{}")
    assert r.status_code == 200
    assert r.content == CANNED_BODY and len(r.content) == 2163
    assert r.headers["content-type"] == "application/json" and r.headers["x-openrtb-version"] == "2.6"


def test_body_and_headers_reach_the_handler_whole():
    seen = []

    def echo(body: bytes, headers: dict[bytes, bytes]) -> bytes:
        seen.append((body, headers))
        return http_response(200, {"content-type": "application/octet-stream"}, body[::-1])

    body = bytes(range(256)) * 800  # 200 KB: many reads, one handler call
    with running(LeanFront(echo)) as base, httpx.Client() as client:
        r = client.post(f"{base}/x", content=body, headers={"X-OpenRTB-Version": "2.6"})
        r2 = client.post(f"{base}/x", content=b"second")
    assert r.status_code == 200 and r.content == body[::-1]
    assert r2.content == b"dnoces"
    assert seen[0][0] == body and seen[0][1][b"x-openrtb-version"] == b"2.6"


def _raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):  # the server closes after a refusal
            out += chunk
    return out


def test_bad_framing_is_a_400_and_the_connection_closes():
    with running(LeanFront(no_content)) as base:
        out = _raw(base, b"POST /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_oversized_body_is_a_413_not_handled():
    calls = []
    front = LeanFront(lambda b, h: calls.append(b) or no_content(b, h), max_body=1000)
    with running(front) as base:
        out = _raw(base, b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000)
    assert out.startswith(b"HTTP/1.1 413 ") and calls == []
    assert LeanFront(no_content).max_body == 1 << 20  # the default docs/benchmarks.md states


@pytest.mark.parametrize("status", [200, 204, 400])
def test_http_response_framing(status):
    raw = http_response(status, {"content-type": "application/json"}, b"" if status == 204 else b"{}")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert (b"content-length" in head) == (status != 204)
    assert body == (b"" if status == 204 else b"{}")


def test_bid_path_through_the_lean_front():
    """The bench's lean-bid variant: the region's in-process bid path behind the lean front."""
    import msgspec

    from fleet.bench.lean_http import bid_handler
    from fleet.sim.traffic import RequestFactory

    handler, statuses = bid_handler()
    factory = RequestFactory("us-east", seed=11)
    with running(LeanFront(handler)) as base, httpx.Client() as client:
        answers = [client.post(f"{base}/openrtb2/bid", content=msgspec.json.encode(factory.request()),
                               headers={"x-openrtb-version": "2.6", "content-type": "application/json"})
                   for _ in range(20)]
        bad = client.post(f"{base}/openrtb2/bid", content=b"{not json", headers={"x-openrtb-version": "2.6"})
    assert {r.status_code for r in answers} <= {200, 204} and any(r.status_code == 200 for r in answers)
    bid = next(r for r in answers if r.status_code == 200)
    assert msgspec.json.decode(bid.content)["seatbid"]  # a BidResponse, framed by its content-length
    assert bad.status_code == 400
    assert sum(statuses.values()) == 21


def test_awaiting_handler_answers_in_order_on_one_connection():
    """A coroutine handler runs in a task per request; pipelined requests on one connection
    are answered in their order even when a later one finishes first."""
    async def slow_first(body: bytes, headers: dict[bytes, bytes]) -> bytes:
        await asyncio.sleep(0.05 if body == b"1" else 0)
        return http_response(200, {}, body)

    front = LeanFront(slow_first)
    req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"
    with running(front) as base:
        out = _raw(base, req + b"1" + req + b"2" + req.replace(b"Host: a", b"Connection: close") + b"3")
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1][:1] for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"1", b"2", b"3"]
    assert front.counts["connections"] == 1
