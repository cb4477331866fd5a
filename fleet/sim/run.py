"""One simulated run end to end: traffic, auctions, notices, scorecard, JSON and plots.

The fleet is reached over HTTP only; the catalog is read from its file by the simulator itself
(``fleet.sim.catalog``), and the scorecard's oracle applies the rules on its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

from fleet.config import REPO_ROOT, load_regions
from fleet.sim.catalog import read_catalog
from fleet.sim.exchange import Exchanges, SimConfig
from fleet.sim.market import Market
from fleet.sim.plots import write_plots
from fleet.sim.scorecard import score


def run_sim(cfg: SimConfig, out_dir: Path, *, catalog: str | None = None, plots: bool = True,
            label: str = "rule", progress=print) -> dict:
    regions = load_regions()
    campaigns = read_catalog(catalog or regions.defaults.catalog, root=REPO_ROOT)
    market = Market(seed=cfg.seed, regions=tuple(regions.regions))
    ex = Exchanges(market, regions, campaigns, cfg, progress=progress)
    started = time.time()
    records = asyncio.run(ex.run())
    card = score(market, records, campaigns, cfg.duration_s, start=started, seat=regions.defaults.seat)
    lat = sorted(r.latency_ms for r in records if r.status in (200, 204))

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    doc = {
        "benchmark": "sim",
        "label": label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "config": asdict(cfg),
        "traffic": {
            "auctions": len(records),
            "answered": sum(r.status in (200, 204) for r in records),
            "errors": sum(r.status not in (200, 204) for r in records),
            "late": sum(r.late for r in records),
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        },
        "notices": {"delivered": dict(ex.notices), "outcomes": dict(ex.notice_outcomes),
                    "errors": dict(ex.notice_errors)},
        "scorecard": card,
    }
    stem = f"sim-{label}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    if plots:
        doc["plots"] = [str(p) for p in write_plots(records, card, out_dir, stem)]
    return doc
