"""The region-loss bench records the lost region's own readiness once it is deployed again: when
``/<region>/ready`` said ready, and what it said until then (a region that stays not ready says
why in the result; one that never became ready again says that). No Ray."""

from __future__ import annotations

import asyncio

import httpx
from aiohttp import web

from fleet.bench.fault_report import readiness
from fleet.bench.faults import _ready, summary_lines
from local_http import local_server


def test_readiness_after_the_restore_with_what_it_said_before():
    samples = [(10.0, 200, ""), (60.0, 404, "Path not found"), (150.0, 404, "Path not found"),
               (152.0, 0, "ReadTimeout"), (154.0, 503, "warm-up attempt 1 gave up after 5 s waiting on shard cache-us-east-0"),
               (156.0, 503, "warm-up attempt 1 gave up after 5 s waiting on shard cache-us-east-0"),
               (158.0, 200, ""), (160.0, 503, "later, not counted")]
    rd = readiness(samples, 150.0)
    assert rd["ready_at_s"] == 158.0 and rd["ready_after_restore_s"] == 8.0
    assert [(x["said"], x["n"], x["first_s"]) for x in rd["not_ready_said"]] == [
        ("404 Path not found", 1, 150.0), ("no answer ReadTimeout", 1, 152.0),
        ("503 warm-up attempt 1 gave up after 5 s waiting on shard cache-us-east-0", 2, 154.0)]


def test_a_region_never_ready_again_says_so():
    rd = readiness([(150.0, 503, "model: not answered"), (152.0, 503, "model: not answered")], 149.0)
    assert rd["ready_at_s"] is None and rd["ready_after_restore_s"] is None
    assert rd["not_ready_said"] == [{"said": "503 model: not answered", "first_s": 150.0, "n": 2}]
    assert readiness([], None) == {"restore_at_s": None}
    doc = {"phases": {}, "money": {"events_lost": 0, "acknowledged_bills": 0, "over_budget_samples": 0,
                                   "spend_error": 0.0},
           "config": {"region": "us-east"}, "targets": {},
           "failover": {"resume": {}, "dns_events": [], "ejection_events": [], "readiness": rd}}
    line = next(x for x in summary_lines(doc) if x.startswith("readiness"))
    assert "never within the run" in line and "model: not answered" in line


def test_the_bench_reads_what_a_not_ready_region_says():
    answers = {"/a/ready": (503, {"ready": False, "warm_error": "shard cache-a-0: refused", "model_error": ""}),
               "/b/ready": (503, {"ready": False, "warm_error": None, "model_error": "ctr/v1: not answered"}),
               "/c/ready": (200, {"ready": True})}

    async def handle(request: web.Request) -> web.Response:
        if request.path in answers:
            status, body = answers[request.path]
            return web.json_response(body, status=status)
        return web.Response(status=404, text="Path not found")

    async def go():
        async with local_server(handle, "GET") as base, httpx.AsyncClient(timeout=2.0) as http:
            return [await _ready(http, f"{base}{p}") for p in ("/a/ready", "/b/ready", "/c/ready", "/gone/ready")]

    a, b, c, gone = asyncio.run(go())
    assert a == (503, "shard cache-a-0: refused")
    assert b == (503, "ctr/v1: not answered")
    assert c == (200, "")
    assert gone == (404, "Path not found")


def test_the_short_region_loss_lasts_long_enough_for_the_dns_to_bring_the_region_back():
    """``--quick``: after the redeploy there is time for the region to warm (~10 s), pass the
    DNS's checks and outlast the resolvers' TTL; 0.4 of 120 s (48 s) ended every short run before
    us-east's traffic and budget slices came back, which read as a region never back."""
    from fleet.bench.faults import QUICK, SCENARIOS, lengths
    from fleet.sim.dns import DnsSettings

    d = DnsSettings()
    _, settle = lengths(SCENARIOS["region-loss"], QUICK)
    assert settle >= 10.0 + d.threshold * d.interval_s + d.ttl_s
    assert lengths(SCENARIOS["cache-shard"], QUICK) == (12.0, 12.0)  # the others: 0.4 of the full lengths
