"""A region replica without Ray (``fleet.region.Region``): admission to a bid, the bill's notice,
its ledger event and the replica's pacing; the spill path; remote pricing's warm-ups and canary.

The ledger is real (a redis-server of the test's own, the region's consumer in-process): what is
durable is the point. Control is an in-process link that grants every campaign a lease; the
inference deployment of remote pricing is an in-process fake.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgspec
import numpy as np
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.config import RegionAppArgs
from fleet.control.messages import Lease, ModelAssignment, Push
from fleet.ledger.consumer import LedgerConsumer, ledger_prefix
from fleet.ledger.emitter import stream_key
from fleet.ledger.events import decode
from fleet.pipeline.pacing import DAY_S
from fleet.region.runtime import Region

FIXTURES = Path(__file__).parent / "fixtures"
REGION = "us-east"
HEADERS = {"x-openrtb-version": "2.6"}


def _request(rid: str) -> bytes:
    req = copy.deepcopy(json.loads((FIXTURES / "requests" / "banner_site_us.json").read_text())["request"])
    req["id"] = rid
    return json.dumps(req).encode()


class GrantingLink:
    """Control in-process: every sync grants each campaign a lease; no pushes between syncs."""

    def __init__(self, campaigns, amount: float = 10.0):
        self.cids = [c.id for c in campaigns]
        self.amount = amount
        self.reports = []

    async def sync(self, report):
        self.reports.append(report)
        t = time.time()
        return Push(epoch=1, ts=t, leases={cid: Lease(id=f"l-{cid}", campaign=cid, amount=self.amount,
                                                       expires_at=t + 3600) for cid in self.cids})

    async def watch(self, epoch: int, wait_s: float):
        await asyncio.Event().wait()  # nothing to push; cancelled when the region stops


class InProcessLedger:
    """The region's consumer in this process, started (idempotently) by the region's loop."""

    def __init__(self, url: str):
        self.consumer = LedgerConsumer(REGION, url, expire_s=3600)
        self.task = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.consumer.run())

    async def stats(self) -> dict:
        return {"lag": await self.consumer.lag()}

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.close()


async def _until(cond, timeout_s: float = 10.0, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _region(regions, tmp_path, redis_srv, link, **kw) -> Region:
    args = RegionAppArgs(region=REGION, cache=False, telemetry=False, **kw.pop("args", {}))
    return Region(args, config=regions, replica="t1", redis_url=redis_srv.url if redis_srv else None,
                  spill_dir=tmp_path / "spill", link=link, **kw)


async def _bid_and_bill(region: Region, rid: str) -> tuple[dict, str]:
    """A bid through admission, and its bill's query at 80% of our price."""
    a = await region.bid(_request(rid), HEADERS)
    assert a.status == 200, (a.status, a.reason)
    bid = json.loads(a.body)["seatbid"][0]["bid"][0]
    query = urlsplit(bid["burl"]).query.replace("${AUCTION_PRICE}", f"{bid['price'] * 0.8:.4f}") \
        .replace("${AUCTION_CURRENCY}", "USD")
    return bid, query


def _stream(redis_srv) -> list:
    """Every event in the region's stream (entries of msgpack arrays of encoded events)."""
    import redis

    raw = redis.Redis.from_url(redis_srv.url)
    try:
        return [decode(ev) for _, fields in raw.xrange(stream_key(REGION))
                for ev in msgspec.msgpack.decode(fields[b"b"])]
    finally:
        raw.close()


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("FLEET_NOTICE_KEYS", "k0:" + "ab" * 32)  # the region's signer, hermetic


def test_a_region_bids_takes_the_bill_and_settles_it_in_the_ledger_and_in_pacing(regions, redis_srv, tmp_path, keys):
    catalog = load_catalog(regions.defaults.catalog)
    link = GrantingLink(catalog)

    async def go():
        ledger = InProcessLedger(redis_srv.url)
        region = _region(regions, tmp_path, redis_srv, link, ledger=ledger)
        assert region.ready()["pricing"] == "rule"  # starts the loops: the first sync fetches leases
        await _until(lambda: region.control.state["syncs"] >= 1, what="leases")
        bid, query = await _bid_and_bill(region, "r-1")
        cid, bid_id, price = bid["cid"], parse_qs(query)["bid"][0], float(parse_qs(query)["px"][0])
        budget = region.bidder.budget
        assert bid_id in budget.holds and budget.reserved[cid] == pytest.approx(bid["price"] / 1000)

        assert await region.notice("bill", query) == (200, "")
        # durable first, then counted: the billed event is in the stream, pacing settled it
        billed = [ev for ev in _stream(redis_srv) if ev.kind == "billed"]
        assert [(ev.bid, ev.campaign, ev.price) for ev in billed] == [(bid_id, cid, price)]
        assert budget.spend[cid] == pytest.approx(price / 1000)
        assert bid_id not in budget.holds and budget.reserved[cid] == pytest.approx(0.0)
        # a resent bill is acknowledged again and teaches nothing twice
        assert await region.notice("bill", query) == (200, "")
        assert budget.spend[cid] == pytest.approx(price / 1000)
        # the region's consumer finalizes it; the replica publishes its (billed) pacing view
        day = int(time.time() // DAY_S)
        r = redis_srv.client()
        await _until(lambda: r.hget(f"{ledger_prefix(REGION)}spend:{day}", cid) is not None, what="ledger spend")
        assert float(r.hget(f"{ledger_prefix(REGION)}spend:{day}", cid)) == pytest.approx(price / 1000)
        view = f"fleet:{REGION}:pacing:t1"
        await _until(lambda: r.hget(view, cid) is not None, timeout_s=6.0, what="pacing view")
        assert r.hget(view, "_kind") == "billed" and float(r.hget(view, cid)) == pytest.approx(price / 1000)

        stats = region.stats()
        assert stats["bidder"]["requests"] == 1 and stats["bidder"]["answered_bid"] == 1
        assert stats["bidder"]["notices_learned"] == 1
        assert stats["notices"]["bill"] == 2
        assert stats["ledger"]["redis"] == "up" and stats["ledger"]["durable_acks"] == 2
        assert stats["control"]["syncs"] >= 1 and stats["control"]["spend"] == pytest.approx(price / 1000, abs=1e-6)
        assert link.reports[-1].region == REGION and link.reports[-1].replica == "t1"
        await region.stop()
        await ledger.close()

    asyncio.run(go())


def test_a_bill_acknowledged_from_the_spill_settles_only_after_the_replay(regions, redis_srv, tmp_path, keys):
    catalog = load_catalog(regions.defaults.catalog)

    async def go():
        region = _region(regions, tmp_path, redis_srv, GrantingLink(catalog))
        region.start()
        await _until(lambda: region.control.state["syncs"] >= 1, what="leases")
        bid, query = await _bid_and_bill(region, "r-2")
        cid, bid_id, price = bid["cid"], parse_qs(query)["bid"][0], float(parse_qs(query)["px"][0])
        budget = region.bidder.budget
        redis_srv.stop()
        assert await region.notice("bill", query) == (200, "")  # acknowledged: durable in the spill file
        assert region.stats()["ledger"]["spilled"] >= 1
        # not counted yet, and its hold stays until it is, whatever the bid's deadline
        assert budget.spend.get(cid, 0.0) == 0.0 and budget.holds[bid_id][2] == float("inf")
        redis_srv.start()
        await _until(lambda: budget.spend.get(cid), what="the replay")  # the emitter retries on its own
        assert budget.spend[cid] == pytest.approx(price / 1000) and bid_id not in budget.holds
        assert [ev.bid for ev in _stream(redis_srv) if ev.kind == "billed"] == [bid_id]
        assert region.stats()["ledger"]["replayed"] >= 1
        await region.stop()

    asyncio.run(go())


class FakeInference:
    """The inference deployment: warm-ups wait until released; every row scores ``ctr``."""

    def __init__(self, ctr: float = 0.02):
        self.ctr = ctr
        self.release = asyncio.Event()
        self.warmed: list[str] = []
        self.scored: list[str] = []

    async def call(self, model: str, rows):
        await self.release.wait()
        self.warmed.append(model)
        return np.full(len(rows), self.ctr)

    async def score(self, model: str, rows):
        self.scored.append(model)
        return np.full(len(rows), self.ctr)


def _pricing(a) -> str:
    return json.loads(a.body)["ext"]["fleet"]["pricing"]


def test_remote_pricing_waits_for_warm_versions_and_canaries_only_a_warm_candidate(regions, tmp_path):
    async def go():
        inference = FakeInference()
        region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, ledger=False,
                                      pricing="remote"), config=regions, inference=inference)
        region.reconfigure({"model": "ctr/v1"})
        a = await region.bid(_request("m-1"), HEADERS)
        assert "pricing_rule_fallback" in a.degraded and inference.scored == []  # loading: rule
        inference.release.set()
        await _until(lambda: region.models.ready("ctr/v1"), what="warm-up")
        assert _pricing(await region.bid(_request("m-2"), HEADERS)) == "model:ctr/v1"

        inference.release.clear()
        await region.models.assign(ModelAssignment(current="ctr/v1", candidate="ctr/v2", share=1.0))
        assert _pricing(await region.bid(_request("m-3"), HEADERS)) == "model:ctr/v1"  # candidate still cold
        inference.release.set()
        await _until(lambda: region.models.ready("ctr/v2"), what="candidate warm-up")
        assert _pricing(await region.bid(_request("m-4"), HEADERS)) == "model:ctr/v2"
        versions = region.versions.take()
        assert {v: (s["priced"], s["errors"]) for v, s in versions.items()} == {"ctr/v1": (3, 1), "ctr/v2": (1, 0)}
        assert region.versions.take() == {}  # taken once: each report carries what is new
        await region.stop()

    asyncio.run(go())


def test_the_deployment_routes_to_its_region_outside_serve(regions, keys):
    """The Serve deployment is glue: each route reads the request, asks the region, writes the
    answer (the deployment's class, outside Serve, around a Region without Ray)."""
    from starlette.requests import Request

    from fleet.serve.region_app import RegionIngress

    class Ingress(RegionIngress.func_or_class):
        def __del__(self):
            pass

    def request(method: str, path: str, body: bytes = b"", query: str = "", headers=()) -> Request:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query.encode(),
                 "headers": [(k.encode(), v.encode()) for k, v in headers]}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(scope, receive)

    async def go():
        ing = object.__new__(Ingress)
        ing.region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False),
                            config=regions)
        bid = await ing(request("POST", "/us-east/openrtb2/bid", _request("g-1"), headers=[("x-openrtb-version", "2.6")]))
        assert bid.status_code == 200 and bid.headers["x-openrtb-version"] == "2.6"
        assert json.loads(bid.body)["seatbid"][0]["bid"][0]["cid"]
        assert (await ing(request("GET", "/us-east/openrtb2/bid"))).status_code == 405
        big = b"x" * (regions.defaults.max_body_bytes + 1)
        assert (await ing(request("POST", "/us-east/openrtb2/bid", big))).status_code == 413
        forged = await ing(request("GET", "/us-east/notice/bill", query="bid=b&c=c&cr=cr&r=us-east&t=1&px=1"))
        assert forged.status_code == 403 and json.loads(forged.body)["error"]
        ready = json.loads((await ing(request("GET", "/us-east/ready"))).body)
        assert ready["region"] == REGION and ready["pricing"] == "rule" and ready["campaigns"] > 0
        stats = json.loads((await ing(request("GET", "/us-east/stats"))).body)
        assert stats["bidder"]["answered_bid"] == 1 and stats["notices"]["forged"] == 1
        assert stats["control"] is None and stats["cache"] is None
        assert (await ing(request("GET", "/us-east/cache"))).status_code == 404  # no cache here
        await ing.region.stop()

    asyncio.run(go())
