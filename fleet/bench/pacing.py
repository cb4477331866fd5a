"""Pacing stage micro-benchmark: the bid path with control's leases against the local allowance.

The same requests run through ``RegionBidder`` twice in-process, interleaved in rounds so drift
hits both alike: once with ``LocalBudget`` (the reference: no control) and once with
``LeaseBudget`` holding live leases for every campaign, with notices settling a share of the
reservations as an exchange would. Reported: the pacing stage's own time and the whole path's,
per request, and their ratios. The sync with control runs off the request path and is not here.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec

from fleet.campaigns.catalog import load_catalog
from fleet.config import load_regions
from fleet.control.messages import Lease
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.pacing import LeaseBudget, LocalBudget
from fleet.sim.traffic import RequestFactory


def _bidder(region: str, catalog, lease: bool) -> RegionBidder:
    b = RegionBidder(region, load_regions(), catalog)
    if lease:
        budget = LeaseBudget(hold_s=30.0)
        far = time.time() + 3600
        budget.apply({c.id: Lease(id=f"l-{c.id}", campaign=c.id, amount=1e9, expires_at=far, throttle=0.9)
                      for c in catalog}, 1)
        b.budget = budget
    else:
        b.budget = LocalBudget(1.0)
    return b


def run_pacing_bench(requests: int, rounds: int, out: Path, region: str = "us-east", log=print) -> dict:
    catalog = load_catalog("synth:pacing:50:11")
    factory = RequestFactory(region, seed=9)
    bodies = [msgspec.json.encode(factory.request()) for _ in range(requests)]
    figures = {"local": {"pacing": [], "total": []}, "lease": {"pacing": [], "total": []}}
    for r in range(rounds):
        for kind in ("local", "lease") if r % 2 == 0 else ("lease", "local"):
            b = _bidder(region, catalog, kind == "lease")
            pacing, total = [], []
            for n, body in enumerate(bodies):
                a = b.bid(body, version="2.6")
                pacing.append(a.spent.get("pacing", 0.0) * 1e6)
                total.append(a.spent.get("total", 0.0) * 1e6)
                if kind == "lease" and a.status == 200:
                    # The exchange's answer: a loss for most, a bill for some (settles the hold).
                    for sb in msgspec.json.decode(a.body)["seatbid"]:
                        for bid in sb["bid"]:
                            b.budget.settle(SimpleNamespace(kind="loss" if n % 3 else "bill", bid_id=bid["id"],
                                                            campaign=bid["cid"], price=1.0, flags=(), bid_ts_ms=0))
            figures[kind]["pacing"].append(statistics.fmean(pacing))
            figures[kind]["total"].append(statistics.fmean(total))
    med = {k: {s: statistics.median(v) for s, v in f.items()} for k, f in figures.items()}
    doc = {
        "benchmark": "pacing",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "requests": requests, "rounds": rounds, "campaigns": len(catalog),
        "pacing_stage_us": {k: round(v["pacing"], 2) for k, v in med.items()},
        "bid_path_us": {k: round(v["total"], 2) for k, v in med.items()},
        "ratio_bid_path_lease_vs_local": round(med["lease"]["total"] / med["local"]["total"], 3),
        "ratio_pacing_stage_lease_vs_local": round(med["lease"]["pacing"] / med["local"]["pacing"], 3),
    }
    log(json.dumps(doc, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc
