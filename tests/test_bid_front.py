"""The region's bid front (fleet/serve/bid_front.py): bids past Serve's HTTP, the same answers.

A stand-in region (its ``bid`` records what it was given) behind a real ``BidFront`` over real
HTTP; then the real HAProxy through the fleet's wrapper routing a replica's bids to its front and
everything else, and the health checks, to Serve's port (a stub that holds what reaches it).
"""

from __future__ import annotations

import asyncio
import subprocess
from types import SimpleNamespace

import httpx
import pytest

from fleet.serve.bid_front import BidFront, from_env


class FakeRegion:
    max_body = 64

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[bytes, dict, float]] = []
        self.fail = fail

    async def bid(self, body, headers, arrival):
        self.calls.append((body, headers, arrival))
        await asyncio.sleep(0.001 * (3 - len(self.calls) % 3))  # later requests finish first
        if self.fail:
            raise RuntimeError("boom")
        return SimpleNamespace(status=200, headers={"content-type": "application/json", "x-n": str(len(self.calls))},
                               body=body[::-1])


def run(coro):
    return asyncio.run(coro)


def _front(tmp_path, region, name="x"):
    async def make():
        front = BidFront(region, name, tmp_path)
        front.bind()
        await front.start()
        return front
    return make()


def test_a_bid_gets_the_regions_answer_and_every_other_request_a_clear_one(tmp_path):
    region = FakeRegion()

    async def go():
        front = await _front(tmp_path, region, "abc123")
        port = front.port
        base = f"http://127.0.0.1:{port}/us-east"
        async with httpx.AsyncClient(timeout=10) as c:
            ok = await c.post(f"{base}/openrtb2/bid", content=b'{"id":"1"}',
                              headers=[("X-OpenRTB-Version", "2.6"), ("x-dup", "first"), ("x-dup", "second")])
            get = await c.get(f"{base}/openrtb2/bid")
            other = await c.post(f"{base}/notice/win", content=b"x")
            big = await c.post(f"{base}/openrtb2/bid", content=b"x" * 65)
            conns = front.server.sockets  # still listening
        published = (tmp_path / "abc123").read_text()
        front.close()
        return ok, get, other, big, conns, published, port

    ok, get, other, big, conns, published, port = run(go())
    assert ok.status_code == 200 and ok.content == b'}"1":"di"{' and ok.headers["content-type"] == "application/json"
    body, headers, arrival = region.calls[0]
    assert headers["x-openrtb-version"] == "2.6" and headers["x-dup"] == "first" and arrival > 0
    assert (get.status_code, get.json()) == (405, {"error": "use POST"})
    assert other.status_code == 404
    assert big.status_code == 413 and big.json()["nbr"] == 2 and len(region.calls) == 1  # never reached the region
    assert published == f"{port}\n" and conns and not (tmp_path / "abc123").exists()


def test_answers_keep_the_requests_order_on_a_connection_and_a_failure_is_a_500(tmp_path):
    region = FakeRegion()

    async def go():
        front = await _front(tmp_path, region, "ord")
        port = front.port
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):  # pipelined: each later one finishes first inside the region
            body = f'{{"i":{i}}}'.encode()
            w.write(b"POST /r/openrtb2/bid HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        w.write(b"GARBAGE\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), 10)  # the 400 closes the connection
        w.close()
        failing = BidFront(FakeRegion(fail=True), "fail", tmp_path)
        fport = failing.bind()
        await failing.start()
        async with httpx.AsyncClient(timeout=10) as c:
            failed = await c.post(f"http://127.0.0.1:{fport}/r/openrtb2/bid", content=b"{}")
        front.close()
        failing.close()
        return data, failed

    data, failed = run(go())
    bodies = [part.split(b"\r\n\r\n", 1)[1][:7] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert bodies[:3] == [b'}0:"i"{', b'}1:"i"{', b'}2:"i"{'] and data.count(b"HTTP/1.1 400") == 1
    assert failed.status_code == 500


def test_no_front_without_the_directory_or_outside_serve(tmp_path):
    assert from_env(FakeRegion(), "abc", {}) is None
    assert from_env(FakeRegion(), "local", {"FLEET_BID_FRONT_DIR": str(tmp_path)}) is None
    front = from_env(FakeRegion(), "abc", {"FLEET_BID_FRONT_DIR": str(tmp_path / "d")})
    assert front is not None and (tmp_path / "d" / "abc").read_text() == f"{front.port}\n"
    front.close()


def test_haproxy_sends_a_replicas_bids_to_its_front_and_the_rest_to_serve(tmp_path):
    """The fleet's wrapper on a Serve-like config: the replica published a front, so its bids
    reach the front; a notice, and HAProxy's health checks, reach Serve's port (the stub)."""
    from test_ingress_shedding import SERVE_LIKE, Stub, haproxy_in_front

    from fleet.runtime.haproxy_shim import Limits, rewrite

    fronts = tmp_path / "fronts"
    cfg = SERVE_LIKE.format(port=18127)
    fronts.mkdir()
    (fronts / "abc").write_text("41234\n")
    out = rewrite(cfg, Limits(fronts=str(fronts)))
    bids = out[out.index("\nbackend http-us-east\n"):out.index("\nbackend http-control")]
    rest = out[out.index("\nbackend http-us-east-rest"):]
    assert "SERVE_REPLICA_us-east-ingress-us-east-abc 127.0.0.1:41234 maxconn 16 check port 30000" in bids
    assert "127.0.0.1:30000 maxconn 16 track" in rest  # notices stay on Serve's port
    path = tmp_path / "f.cfg"
    path.write_text(out)
    from test_ingress_shedding import _binary

    check = subprocess.run([_binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    region, stub = FakeRegion(), Stub()

    async def go():
        front = BidFront(region, "abc", fronts)
        front.bind()
        await front.start()
        env = {"FLEET_BID_FRONT_DIR": str(fronts)}
        try:
            async with haproxy_in_front(tmp_path / "h", env, stub) as base:
                async with httpx.AsyncClient(timeout=30) as c:
                    bid = await c.post(f"{base}/openrtb2/bid", content=b'{"tmax":60}')
                    notice = asyncio.create_task(c.get(f"{base}/notice/win"))
                    await stub.wait_for("win", 1)
                    stub.release.set()
                    notice = await notice
        finally:
            front.close()
        return bid, notice

    (tmp_path / "h").mkdir()
    bid, notice = run(go())
    assert bid.status_code == 200 and bid.content == b'}06:"xamt"{' and len(region.calls) == 1
    assert "x-fleet-arrival" in region.calls[0][1]  # HAProxy's stamp reaches the front
    assert notice.status_code == 204 and "x-seen-arrival" in notice.headers and stub.held == {"win": 1}


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    monkeypatch.delenv("FLEET_BID_FRONT_DIR", raising=False)


async def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    out = await asyncio.wait_for(r.read(), timeout)
    w.close()
    return out


def test_what_review_found_upgrade_cancel_disconnect_expect_and_head(tmp_path):
    """Found in review (each failed before its fix): an Upgrade header escaped the parser's
    error (no answer at all); a bid cancelled from inside stopped every answer behind it; a
    client gone left its bids running; a client waiting for 100 Continue waited out its tmax;
    HEAD got a body."""
    class Slow(FakeRegion):
        async def bid(self, body, headers, arrival):
            self.calls.append((body, headers, arrival))
            if body == b"cancel":
                raise asyncio.CancelledError()
            if body == b"slow":
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    self.cancelled = True
                    raise
            return SimpleNamespace(status=200, headers={}, body=body)

    region = Slow()
    region.cancelled = False

    def post(body: bytes, extra: bytes = b"") -> bytes:
        return b"POST /r/openrtb2/bid HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s" % (extra, len(body), body)

    async def go():
        front = await _front(tmp_path, region)
        upgrade = await _raw(front.port, post(b"up", b"connection: upgrade\r\nupgrade: foo\r\n"))
        chain = await _raw(front.port, post(b"cancel") + post(b"after") + b"GET /r/x HTTP/1.1\r\nconnection: close\r\n\r\n")
        r, w = await asyncio.open_connection("127.0.0.1", front.port)
        w.write(post(b"slow"))
        await w.drain()
        while len(region.calls) < 4:
            await asyncio.sleep(0.01)
        w.close()  # HAProxy giving up at the budget
        for _ in range(500):
            if region.cancelled:
                break
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", front.port)
        w.write(b"POST /r/openrtb2/bid HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
        await w.drain()
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        w.write(b"ok")
        final = await asyncio.wait_for(r.readuntil(b"\r\n\r\nok"), 10)
        w.close()
        head = await _raw(front.port, b"HEAD /r/openrtb2/bid HTTP/1.1\r\nconnection: close\r\n\r\n")
        front.close()
        return upgrade, chain, interim, final, head

    upgrade, chain, interim, final, head = run(go())
    # an answer (the parser hands over what precedes the upgrade: here the headers), then the close
    assert upgrade.startswith(b"HTTP/1.1 ") and upgrade.count(b"HTTP/1.1 ") == 1
    assert chain.count(b"HTTP/1.1 ") == 3 and b"500 Internal Server Error" in chain and chain.find(b"after") > 0
    assert chain.rstrip().endswith(b'"no route /r/x"}')
    assert region.cancelled
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and final.startswith(b"HTTP/1.1 200 OK")
    assert head.startswith(b"HTTP/1.1 405") and head.endswith(b"\r\n\r\n")
