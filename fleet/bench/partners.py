"""Stage 6's cost and worth, in process: one us-east ``Region`` (rule pricing, no cache, no
control, no ledger) answering an open-loop stream of market requests, without partners and then
with the simulated partners running in a process of their own.

What it reports per run: the answer latency (p50, p99; seconds on the bidder's own clock, from
arrival to answer), the partners' wait, the cutoffs in force (the bound: the added p99 should be
at most the largest cutoff + 2 ms), participation per request, and revenue per 1000 requests
(the winning bids' prices, fleet currency: what the exchange would pay at first price; not the
scorecard's oracle value). ``python -m fleet.bench.partners --set sim --rate 100 --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from fleet.config import REPO_ROOT, RegionAppArgs, RegionsFile
from fleet.obs.histogram import quantile
from fleet.region.runtime import Region
from fleet.sim.market import Market

REGION = "us-east"


def start_partners(which: str) -> tuple[subprocess.Popen, list[dict]]:
    out = Path(tempfile.mkdtemp()) / "partners.json"
    proc = subprocess.Popen([sys.executable, "-m", "fleet.sim.partners", "--set", which, "--write", str(out)],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while not (out.exists() and out.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise RuntimeError("partners did not start")
        time.sleep(0.1)
    return proc, json.loads(out.read_text())


def config(entries: list[dict]) -> RegionsFile:
    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    raw["regions"][REGION]["partners"] = entries
    return RegionsFile.model_validate(raw)


async def run(cfg: RegionsFile, rate: float, seconds: float, seed: int) -> dict:
    region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, ledger=False),
                    config=cfg, replica="bench")
    market, rng = Market(seed=seed), random.Random(seed)
    totals, waits, over, revenue, answered = [], [], [], 0.0, Counter()
    region.start()
    fan = region.partners
    tier_cut = ({t: max((fan.cutoff(pid, t).cutoff_ms for pid in fan.partners if fan.cutoff(pid, t) is not None),
                        default=0.0) for t in cfg.tiers} if fan is not None else {})

    async def one(i: int) -> None:
        nonlocal revenue
        req = market.opportunity(rng, REGION, f"b{seed}-{i}").to_openrtb()
        a = await region.bid(json.dumps(req).encode(), {"x-openrtb-version": "2.6"})
        answered[a.status] += 1
        totals.append(a.spent.get("total", 0.0))
        if "partners" in a.spent:
            waits.append(a.spent["partners"])
            # how far the wait went past the longest cutoff of the request's tier (the bound)
            over.append(a.spent["partners"] - tier_cut.get(a.dl.tier, 0.0) / 1000.0)
        if a.status == 200:
            revenue += sum(b["price"] for sb in json.loads(a.body)["seatbid"] for b in sb["bid"])

    # warm-up (imports, connections), not measured
    for i in range(20):
        await one(-1 - i)
    totals.clear(), waits.clear(), over.clear()
    revenue, answered = 0.0, Counter()
    tasks, t0, n = [], time.perf_counter(), int(rate * seconds)
    cpu0 = time.process_time()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(one(i)))
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    st = region.stats()
    await region.stop()
    totals.sort()
    waits.sort()
    over.sort()

    def q(xs, p):
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2) if xs else None

    cutoffs = {pid: row["cutoff_ms"] for pid, row in st["partners"].items()}
    return {"requests": n, "answers": dict(answered), "p50_ms": q(totals, 0.5), "p99_ms": q(totals, 0.99),
            "partners_wait_p99_ms": q(waits, 0.99), "past_tier_cutoff_p99_ms": q(over, 0.99),
            "past_tier_cutoff_max_ms": round(over[-1] * 1000, 2) if over else None,
            "bidder_cpu_ms_per_request": round(cpu / n * 1000, 3) if n else None,
            "tier_max_cutoff_ms": tier_cut, "late_suppressed": st["bidder"].get("late_suppressed", 0),
            "revenue_per_1000": round(revenue / n * 1000 / 1000, 4) if n else None,
            "participation": st["partner_participation"],
            "partners": {pid: {k: row[k] for k in ("eligible", "called", "in_time", "late", "errors",
                                                   "participating", "won")} | {"state": row["state"]}
                         for pid, row in st["partners"].items()},
            "max_cutoff_ms": max((c for row in cutoffs.values() for c in row.values()), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="sim", help="partner set (fleet.sim.partners.SETS)")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    without = asyncio.run(run(config([]), args.rate, args.seconds, args.seed))
    proc, entries = start_partners(args.set)
    try:
        with_p = asyncio.run(run(config(entries), args.rate, args.seconds, args.seed))
    finally:
        proc.terminate()
        proc.wait(10)
    added = (with_p["p99_ms"] or 0) - (without["p99_ms"] or 0)
    result = {"set": args.set, "rate": args.rate, "seconds": args.seconds, "cpus": os.cpu_count(),
              "without": without, "with": with_p, "added_p99_ms": round(added, 2),
              "bound_ms": with_p["max_cutoff_ms"] + 2.0, "within_bound": added <= with_p["max_cutoff_ms"] + 2.0}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
