"""Issue 23: deadlines from arrival at the fleet, overload shedding, warm start, cold users.

The in-process tests drive a ``Region`` (and the Serve deployment's handler) with the ingress's
arrival stamp set by hand; the ``slow`` ones go through the real Ray Serve HAProxy ingress with
the fleet's wrapper (``fleet.runtime.haproxy_shim``): a client's forged stamp is replaced, and
a backend whose queue is full answers 204 ``overload`` without reaching the replica. The wrapper
against the bare HAProxy binary (no Ray): tests/test_ingress_shedding.py. No test
asserts a wall-clock duration: queue times are set through the stamp, and "at once" is shown by
the shed requests never reaching the replica.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path

import httpx
import pytest

from fleet.config import RegionAppArgs, load_regions
from fleet.pipeline.deadline import ARRIVAL_HEADER, MAX_QUEUE_S, fleet_arrival, now
from fleet.pipeline.enrichment import enrich
from fleet.pipeline.first_sight import FirstSight
from fleet.region.runtime import Region
from fleet.runtime.haproxy_shim import Limits

FIXTURES = Path(__file__).parent / "fixtures"
REGION = "us-east"
HEADERS = {"x-openrtb-version": "2.6"}


def _request(rid: str, **over) -> bytes:
    req = copy.deepcopy(json.loads((FIXTURES / "requests" / "banner_site_us.json").read_text())["request"])
    req["id"] = rid
    req.update(over)
    return json.dumps(req).encode()


def _stamp(queued_s: float) -> str:
    """An ingress stamp ``queued_s`` before now (epoch microseconds)."""
    return str(int((time.time() - queued_s) * 1e6))


def _region(**args) -> Region:
    return Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, **args))


# -- the arrival stamp -------------------------------------------------------------------------

def test_deadline_starts_at_the_ingress_stamp():
    off = 1_700_000_000.0  # wall clock minus the perf counter, fixed: no clock is read
    handler = 500.0
    stamp = str(int(round((off + handler - 0.030) * 1e6)))
    arrival, queued, source = fleet_arrival(stamp, handler, off)
    assert source == "ingress" and queued == pytest.approx(0.030, abs=1e-6)
    assert arrival == pytest.approx(handler - 0.030, abs=1e-6)
    # a stamp a little ahead (another host's clock) is no queue time, not a negative one
    ahead = str(int(round((off + handler + 0.010) * 1e6)))
    assert fleet_arrival(ahead, handler, off) == (handler, 0.0, "ingress")
    # absent, garbage, far in the future or older than any queue: the handler's reading
    assert fleet_arrival(None, handler, off) == (handler, 0.0, "handler")
    assert fleet_arrival("soon", handler, off) == (handler, 0.0, "implausible")
    future = str(int((off + handler + 5.0) * 1e6))
    assert fleet_arrival(future, handler, off) == (handler, 0.0, "implausible")
    ancient = str(int((off + handler - MAX_QUEUE_S - 1) * 1e6))
    assert fleet_arrival(ancient, handler, off) == (handler, 0.0, "implausible")


def test_queue_time_is_a_stage_and_counts_against_the_deadline():
    async def go():
        region = _region()
        a = await region.bid(_request("q-1"), {**HEADERS, ARRIVAL_HEADER: _stamp(0.020)})
        assert a.status == 200
        assert next(iter(a.spent)) == "queue" and a.spent["queue"] >= 0.020
        assert a.spent["total"] >= a.spent["queue"]  # the total runs from the fleet's arrival
        assert a.dl.arrival <= now() - 0.020
        assert sum(region.bidder.latency.counts["queue"]) == 1
        assert region.bidder.stats["arrival.ingress"] == 1
        b = await region.bid(_request("q-2"), HEADERS)  # no stamp (no ingress): the handler's reading
        assert b.status == 200 and b.spent["queue"] == 0.0
        assert region.bidder.stats["arrival.handler"] == 1
        await region.stop()

    asyncio.run(go())


def test_trace_starts_with_the_queue_span():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fleet.obs.tracing import RequestTracer

    async def go():
        region = _region()
        a = await region.bid(_request("t-1"), {**HEADERS, ARRIVAL_HEADER: _stamp(0.015)})
        exp = InMemorySpanExporter()
        tracer = RequestTracer(REGION, "r", rate=1.0, exporter=exp, batch=False)
        tracer.emit(a, a.dl.arrival, ("head", None), a.dl)
        spans = sorted(exp.get_finished_spans(), key=lambda s: (s.start_time, s.name != "bid"))
        assert [s.name for s in spans[:3]] == ["bid", "queue", "admission"]
        queue = spans[1]
        assert (queue.end_time - queue.start_time) / 1e9 == pytest.approx(a.spent["queue"], abs=1e-6)
        await region.stop()

    asyncio.run(go())


# -- shedding in the replica -------------------------------------------------------------------

def test_shed_before_decode_when_the_queue_took_the_budget():
    async def go():
        region = _region()
        spec = load_regions().regions[REGION]
        late = (spec.max_tmax_ms - spec.network_allowance_ms) / 1000.0  # all of the longest budget
        # not even JSON: a shed request is never decoded (it would be a 400 otherwise)
        a = await region.bid(b"{not json", {**HEADERS, ARRIVAL_HEADER: _stamp(late)})
        assert a.status == 204 and a.body == b""
        assert a.headers["x-fleet-reason"] == "overload" and a.headers["x-openrtb-nbr"] == "15"
        s = region.bidder.stats
        assert s["shed"] == 1 and s["nobid.overload"] == 1 and s["requests"] == 1 and s["http.400"] == 0
        # the same body without the queue time is a 400, as always
        assert (await region.bid(b"{not json", HEADERS)).status == 400
        await region.stop()

    asyncio.run(go())


def test_shed_after_decode_by_the_requests_own_tmax():
    async def go():
        region = _region()
        # tmax 60: 45 ms of budget; 40 ms of it spent queued leaves less than shed_below_ms
        a = await region.bid(_request("s-1", tmax=60), {**HEADERS, ARRIVAL_HEADER: _stamp(0.040)})
        assert a.status == 204 and a.reason == "overload" and a.headers["x-openrtb-nbr"] == "15"
        assert region.bidder.stats["shed"] == 1 and region.bidder.stats["http.400"] == 0
        # the same request that did not wait is answered
        assert (await region.bid(_request("s-2", tmax=60), HEADERS)).status == 200
        await region.stop()

    asyncio.run(go())


def test_the_handler_sheds_with_the_header_before_reading_on():
    """Through the Serve deployment's handler (as test_region drives it)."""
    from starlette.requests import Request

    from fleet.serve.region_app import RegionIngress

    Ingress = RegionIngress.func_or_class

    def request(body: bytes, headers) -> Request:
        scope = {"type": "http", "method": "POST", "path": "/us-east/openrtb2/bid", "root_path": "",
                 "query_string": b"", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(scope, receive)

    async def go():
        ing = object.__new__(Ingress)
        ing.region = _region()
        r = await ing(request(_request("h-1"), {**HEADERS, ARRIVAL_HEADER: _stamp(0.2)}))
        assert r.status_code == 204 and r.headers["x-fleet-reason"] == "overload"
        assert (await ing(request(_request("h-2"), HEADERS))).status_code == 200
        await ing.region.stop()

    asyncio.run(go())


# -- warm start --------------------------------------------------------------------------------

class FlakyShard:
    """An in-process shard whose lookups fail until ``up``."""

    def __init__(self):
        self.up = False
        self.lookups = 0

    async def lookup(self, users):
        if not self.up:
            raise ConnectionError("shard not up yet")
        self.lookups += 1
        return [None] * len(users)


def test_ready_only_after_the_warm_up_bid():
    async def go():
        shard = FlakyShard()
        region = Region(RegionAppArgs(region=REGION, cache=True, near_cache=False, telemetry=False, control=False),
                        shards={"s0": shard})
        first = region.ready()
        assert first["ready"] is False
        for _ in range(50):  # the warm-up retries while the shard is down
            await asyncio.sleep(0.02)
        again = region.ready()
        assert again["ready"] is False and "shard not up yet" in again["warm_error"]
        shard.up = True
        for _ in range(500):
            if region.ready()["ready"]:
                break
            await asyncio.sleep(0.02)
        assert region.ready()["ready"] is True and shard.lookups >= 2  # every shard, and the user
        s = region.bidder.stats
        counts = region.bidder.latency.counts  # the warm-up is not traffic (its lookup's answer time is)
        assert s["requests"] == 0 and s["answered_bid"] == 0 and "total" not in counts
        await region.stop()

    asyncio.run(go())


def test_ready_route_answers_503_until_warm():
    from starlette.requests import Request

    from fleet.serve.region_app import RegionIngress

    Ingress = RegionIngress.func_or_class
    scope = {"type": "http", "method": "GET", "path": "/us-east/ready", "root_path": "", "query_string": b"",
             "headers": []}

    async def go():
        ing = object.__new__(Ingress)
        shard = FlakyShard()
        ing.region = Region(RegionAppArgs(region=REGION, cache=True, near_cache=False, telemetry=False,
                                          control=False), shards={"s0": shard})
        r = await ing(Request(scope))
        assert r.status_code == 503 and json.loads(r.body)["ready"] is False
        shard.up = True
        for _ in range(500):
            r = await ing(Request(scope))
            if r.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 200 and json.loads(r.body)["ready"] is True
        await ing.region.stop()

    asyncio.run(go())


# -- cold users --------------------------------------------------------------------------------

def test_first_sight_is_a_cold_user_and_a_repeat_miss_is_not():
    fs = FirstSight(max_users=2)
    assert fs.outcome("u1", "miss") == "cold_user"
    assert fs.outcome("u1", "miss") == "miss"  # seen before: the shard lost it
    assert fs.outcome("u2", "hit") == "hit" and fs.outcome("u2", "miss") == "miss"
    assert fs.outcome("u3", "timeout") == "timeout"  # a failure is a failure, first sight or not
    for u in ("a", "b", "c", "d", "e"):  # bounded: the oldest generation goes
        fs.seen(u)
    assert fs.outcome("u1", "miss") == "cold_user"


def test_cold_user_bids_on_defaults_without_a_degraded_flag():
    from fleet.openrtb.codec import decode_request

    req = decode_request(_request("c-0"), None, 1 << 16)
    cold, miss = enrich(req, None, "cold_user"), enrich(req, None, "miss")
    assert cold.multiplier == miss.multiplier < 1.0  # the same population defaults
    assert miss.defaulted and not cold.defaulted

    class MissShard:  # answers promptly, knows nobody
        async def lookup(self, users):
            return [None] * len(users)

    async def go():
        region = Region(RegionAppArgs(region=REGION, cache=True, near_cache=False, telemetry=False, control=False),
                        shards={"s0": MissShard()})
        a = await region.bid(_request("c-1"), HEADERS)  # user-fx-banner-site-us, first sight
        assert "enrichment_miss" not in a.degraded and "enrichment_cold_user" not in a.degraded
        b = await region.bid(_request("c-2"), HEADERS)  # the same user missed again: degraded
        assert "enrichment_miss" in b.degraded
        s = region.bidder.stats
        assert s["enrich.cold_user"] == 1 and s["enrich.miss"] == 1 and s["degraded"] == 1
        await region.stop()

    asyncio.run(go())


# -- through the real ingress ------------------------------------------------------------------

@pytest.fixture(scope="module")
def stall_http(fleet_http):
    """The session's applications plus a replica that holds each bid request 0.3 s."""
    from conftest import deploy_config, serve_test_config

    from fleet.cli.common import wait_ready

    cfg = serve_test_config()
    cfg["applications"].append({"name": "stall", "route_prefix": "/stall",
                                "import_path": "fleet.serve.stall_app:build_app", "args": {"hold_s": 0.3}})
    deploy_config(cfg)
    for _ in range(300):
        try:
            if httpx.get(f"{fleet_http}/stall/calls", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    try:
        yield fleet_http
    finally:
        deploy_config(serve_test_config())
        wait_ready(fleet_http, [a["route_prefix"] for a in serve_test_config()["applications"]], 120)


@pytest.mark.slow
def test_ingress_overwrites_a_forged_arrival(stall_http):
    forged = {ARRIVAL_HEADER: "1", "content-type": "application/json"}
    r = httpx.post(f"{stall_http}/stall/openrtb2/bid", content=b"{}", headers=forged, timeout=10)
    seen = r.headers["x-seen-arrival"]
    assert seen != "1" and seen.isdigit() and abs(int(seen) / 1e6 - time.time()) < MAX_QUEUE_S
    # a region trusts the ingress's stamp, never the client's: a stamp from 1970 sheds nothing
    before = httpx.get(f"{stall_http}/us-east/stats", timeout=10).json()["bidder"]
    body = _request("forged-1")
    old = {**HEADERS, ARRIVAL_HEADER: _stamp(10.0), "content-type": "application/json"}
    r = httpx.post(f"{stall_http}/us-east/openrtb2/bid", content=body, headers=old, timeout=10)
    assert r.status_code in (200, 204) and r.headers.get("x-fleet-reason") != "overload"
    after = httpx.get(f"{stall_http}/us-east/stats", timeout=10).json()["bidder"]
    assert after.get("arrival.ingress", 0) > before.get("arrival.ingress", 0)
    assert after.get("shed", 0) == before.get("shed", 0)


@pytest.mark.slow
def test_ingress_sheds_a_full_queue_without_reaching_the_replica(stall_http):
    limits = Limits()
    n = limits.server_maxconn + limits.max_queue + 16  # more than the replica and the queue hold

    async def go():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n), timeout=10) as c:
            calls0 = (await c.get(f"{stall_http}/stall/calls")).json()["calls"]
            rs = await asyncio.gather(*(c.post(f"{stall_http}/stall/openrtb2/bid", content=b"{}",
                                               headers={"content-type": "application/json"}) for _ in range(n)))
            calls = (await c.get(f"{stall_http}/stall/calls")).json()["calls"] - calls0
        return rs, calls

    rs, calls = asyncio.run(go())
    assert all(r.status_code == 204 for r in rs)  # never a 5xx: served or shed
    shed = [r for r in rs if r.headers.get("x-fleet-reason") == "overload"]
    assert shed and all(r.headers["x-openrtb-nbr"] == "15" and "x-seen-arrival" not in r.headers for r in shed)
    assert calls == n - len(shed)  # every shed request was answered by HAProxy, never the replica


# -- fleet up's burst and links ----------------------------------------------------------------

def test_burst_table_shows_the_servers_late_share_beside_the_clients():
    from fleet.sim.burst import RegionTally, format_table

    t = RegionTally("us-east", sent=10)
    t.statuses.update({200: 8, 204: 2})
    t.latencies_ms = [5.0] * 9 + [150.0]
    t.on_time = 9
    t.server = {"requests": 10, "late_suppressed": 1, "shed": 0}
    t.shed = 2
    table = format_table([t])
    head, row = table.splitlines()[0], table.splitlines()[2]
    assert "on time" in head and "late (srv)" in head and "shed" in head
    assert "90.0%" in row and "10.0%" in row and "20.0%" in row


def test_up_prints_the_dashboard_link_with_its_token(monkeypatch):
    from fleet.cli.up import dashboard_link

    monkeypatch.setenv("FLEET_CONTROL_TOKEN", "tok-123")
    assert dashboard_link("http://127.0.0.1:8000", "/control") == "http://127.0.0.1:8000/control/#token=tok-123"
    page = (Path(__file__).parents[1] / "fleet" / "control" / "dashboard.html").read_text()
    assert "location.hash.match(/token=" in page  # where the page reads it


def test_a_remote_pricing_region_loads_its_version_before_it_says_ready():
    import numpy as np

    class Inference:  # answers the warm-up call of a version once it is asked
        def __init__(self):
            self.calls = []

        async def call(self, version, rows):
            self.calls.append(version)
            return np.zeros(len(rows))

    async def go():
        inf = Inference()
        region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, pricing="remote",
                                      model="ctr/v1"), inference=inf)
        region.reconfigure({"model": "ctr/v1"})
        assert region.ready()["ready"] is False
        for _ in range(500):  # no bid comes: the readiness probe itself has the version loaded
            if region.ready()["ready"]:
                break
            await asyncio.sleep(0.01)
        assert region.ready()["ready"] is True and inf.calls == ["ctr/v1"]
        await region.stop()

    asyncio.run(go())


def test_warm_up_bids_once_per_format_without_counting():
    from fleet.region.warmup import FORMATS, warm, warmup_request

    async def go():
        region = _region()
        b = region.bidder
        kinds = [next(k for k in ("banner", "video", "native", "audio") if k in warmup_request(b, 0, f)["imp"][0])
                 for f in FORMATS]
        assert kinds == list(FORMATS)
        answers = []
        real = b.price_local
        b.price_local = lambda p, choice=None: answers.append(real(p, choice)) or answers[-1]
        a = await warm(region)
        assert a.status == 200 and [x.status for x in answers] == [200] * len(FORMATS)  # each format bids
        assert not b.stats and "total" not in b.latency.counts
        await region.stop()

    asyncio.run(go())
