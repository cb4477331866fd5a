"""Targeting micro-benchmark: the targeting stage over a large synthetic catalog.

Runs requests through ``RegionBidder`` in-process and reads the targeting stage's own time from
the deadline's accounting, so the figure is the stage as the bid path runs it. The reference in
the same run is a linear scan applying the same rules (``matches_linear``) to every campaign.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import msgspec

from fleet.campaigns.synth import synth_campaigns
from fleet.config import load_regions
from fleet.openrtb.inventory import inventory
from fleet.openrtb.model import BidRequest
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.enrichment import enrich
from fleet.pipeline.targeting import imp_facts, matches_linear
from fleet.sim.traffic import RequestFactory


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_targeting(campaigns: int, requests: int, out: Path, region: str = "us-east", log=print) -> dict:
    config = load_regions()
    catalog = synth_campaigns(campaigns)
    bidder = RegionBidder(region, config, catalog)
    factory = RequestFactory(region, seed=5)
    bodies = [msgspec.json.encode(factory.request()) for _ in range(requests)]
    stage_us, total_us = [], []
    for body in bodies:
        a = bidder.bid(body, version="2.6")
        if "targeting" in a.spent:
            stage_us.append(a.spent["targeting"] * 1e6)
        total_us.append(a.spent.get("total", 0.0) * 1e6)
    # Reference: the same rules, one campaign at a time, over the same requests.
    reqs = [msgspec.json.decode(b, type=BidRequest) for b in bodies[: max(50, requests // 10)]]
    lin_us, idx_us = [], []
    for req in reqs:
        user = enrich(req)
        when = dt.datetime.fromtimestamp(bidder.clock(), dt.timezone.utc)
        for imp in req.imp:
            f = imp_facts(req, imp, inventory(req), user.segments, when)
            t0 = time.perf_counter()
            expect = [c for c in bidder.index.campaigns if matches_linear(c, f)]
            t1 = time.perf_counter()
            got = list(bidder.index.iter_matches(bidder.index.match(f)))
            t2 = time.perf_counter()
            assert [c.id for c in got] == [c.id for c in expect], "index and linear scan disagree"
            lin_us.append((t1 - t0) * 1e6)
            idx_us.append((t2 - t1) * 1e6)
    doc = {
        "benchmark": "targeting",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "campaigns": campaigns,
        "in_flight": len(bidder.index),
        "requests": requests,
        "targeting_stage_us": {"mean": round(statistics.fmean(stage_us), 1),
                               "p50": round(_pct(stage_us, 0.5), 1), "p99": round(_pct(stage_us, 0.99), 1)},
        "whole_bid_path_us": {"mean": round(statistics.fmean(total_us), 1),
                              "p50": round(_pct(total_us, 0.5), 1), "p99": round(_pct(total_us, 0.99), 1)},
        "match_only_us": {"index_mean": round(statistics.fmean(idx_us), 1),
                          "linear_mean": round(statistics.fmean(lin_us), 1),
                          "speedup": round(statistics.fmean(lin_us) / statistics.fmean(idx_us), 1)},
    }
    log(json.dumps(doc, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc
