"""Seed 001, failure chain 1, in-process: a slower enrichment quietly thins the auction.

A real ``Region`` (premium traffic, tmax 80) calls four simulated mid-latency demand partners
(``fleet.sim.partners``, real HTTP servers in a child process) and looks every user up in a
shard whose answers take ``base_ms``, then ``base_ms + slow_ms`` (the profile store slowed). A
real ``Control`` in this process receives the region's reports and pushes its policies. Phases:

1. ``before``: healthy lookups, control steering;
2. ``slow, fixed``: lookups 10 ms slower, control's policies frozen (what a fixed cutoff policy
   does: the enrichment stage keeps its share, the fan-out starts later, partners arrive late);
3. ``slow, control``: the same, control steering again (``fleet.control.partner_policy``: the
   partners late together mark the tier starved; its optional enrichment is cut);
4. ``after``: lookups healthy again.

A warm-up phase (control not steering) comes first and is not reported; control's partner
state is reset after it, so a cold start's late answers do not decide the policy. Per phase:
requests, participating bidders per request (partners with a valid bid at or above floor, plus
ours), the share of partner calls late, the enrichment share in force, value per opportunity
(the price of the bid we answered with, CPM, over all requests), and per partner control's
cutoff and share, the region's own tail state, its p95 and why control decided what it did.

Partner latencies are measured on the host: run it on a quiet machine. On the shared 2-core box
(load 5) every partner, the fast one too, went late after a few minutes, so its figures there
are not a measurement (see the issue-21 report).

    python -m fleet.harness.partner_starvation [--phase-s 60] [--rate 40] [--mid-ms 32 --mid-sigma 0.12]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import subprocess
import sys
import time

import yaml

from fleet.config import REPO_ROOT, RegionAppArgs, RegionsFile
from fleet.control.partner_policy import PartnerBook
from fleet.control.service import Control
from fleet.region.runtime import Region

REGION = "us-east"
def profiles(mid_ms: float = 32.0, sigma: float = 0.12) -> list[dict]:
    """Three mid-latency partners (medians ``mid_ms``, +3, +6) meant to be in time with the full
    budget and not with 10 ms less, and a fast one. Where they stand depends on the host: the
    time a call takes on top of the server's own delay (4-5 ms on the 2-core box when quiet) and
    the budget (tmax 80 - 15 network - 4 reserve: a 60 ms cutoff before, 50.5 ms of time left
    after a 10 ms slower enrichment)."""
    return [dict(id=f"mid-{c}", latency_ms=mid_ms + 3 * i, latency_sigma=sigma, bid_rate=0.9, price_scale=5.0)
            for i, c in enumerate("abc")] + [dict(id="fast", latency_ms=8, latency_sigma=0.3, bid_rate=0.9,
                                                  price_scale=5.0)]
SERVE = """
import asyncio, json, sys
from fleet.sim.partners import PartnerServers, Profile
async def main():
    s = PartnerServers([Profile(**p) for p in json.loads(sys.argv[1])])
    print(json.dumps(await s.start()), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class SlowShard:
    """The region's profile store: every lookup answers after ``delay_s`` (a miss)."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    async def lookup(self, users):
        await asyncio.sleep(self.delay_s)
        return [None] * len(users)


class Link:
    """Control in this process, as the region's link sees it."""

    def __init__(self, control: Control):
        self.control = control

    async def sync(self, report):
        return await self.control.sync(report)

    async def watch(self, epoch: int, wait_s: float):
        return await self.control.watch(epoch, wait_s)


def _config(endpoints: dict[str, str], policy_every_s: float) -> RegionsFile:
    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    raw["regions"][REGION]["partners"] = [
        {"id": pid, "endpoint": url, "cutoff_class": "standard", "cutoff_ms": {"premium": 60.0}, "qps": 5000.0}
        for pid, url in endpoints.items()]
    raw.setdefault("defaults", {}).setdefault("control", {})["policy_every_s"] = policy_every_s
    return RegionsFile.model_validate(raw)


def _request(i: int) -> bytes:
    req = json.loads((REPO_ROOT / "tests" / "fixtures" / "requests" / "banner_site_us.json").read_text())["request"]
    req = copy.deepcopy(req)
    req["id"] = f"starve-{i}"
    req["tmax"] = 80
    req["imp"][0]["bidfloor"] = 5.0  # premium
    req["user"]["id"] = f"u-{i % 5000}"
    return json.dumps(req).encode()


def _totals(region: Region) -> dict:
    reqs = region.partners.stats.requests
    out = {k: sum(r[k] for r in reqs.values()) for k in ("requests", "bidders", "partners_participating")}
    late = called = 0
    for tiers in region.partners.stats.counts.values():
        for t in tiers.values():
            late += t["late"]
            called += t["called"]
    out.update(late=late, called=called)
    return out


async def run(phase_s: float = 60.0, rate: float = 40.0, base_ms: float = 0.5, slow_ms: float = 10.0,
              policy_every_s: float = 5.0, mid_ms: float = 32.0, sigma: float = 0.12) -> list[dict]:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(profiles(mid_ms, sigma))], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        endpoints = json.loads(proc.stdout.readline())
        cfg = _config(endpoints, policy_every_s)
        control = Control(cfg, None)
        await control.start()
        shard = SlowShard(base_ms / 1000.0)
        region = Region(RegionAppArgs(region=REGION, cache=True, near_cache=False, telemetry=False, control=True,
                                      ledger=False), config=cfg, replica="starve", shards={"s0": shard},
                        link=Link(control))
        region.start()
        steer = {"on": True}

        async def ticks():
            while True:
                await asyncio.sleep(cfg.defaults.control.interval_s)
                if steer["on"]:
                    await control.tick(cfg.defaults.control.interval_s)

        tick_task = asyncio.create_task(ticks())
        i, phases = 0, []
        for name, delay_ms, on in (("warm-up", base_ms, False), ("before", base_ms, True), ("slow, fixed policy", base_ms + slow_ms, False),
                                   ("slow, control's policy", base_ms + slow_ms, True), ("after", base_ms, True)):
            shard.delay_s, steer["on"] = delay_ms / 1000.0, on
            if name == "before":  # control starts from the base, not from what a cold start showed
                control.partners = PartnerBook()
                if control.policies.update(control.base_policies):
                    control._bump()
            t0, before, value, pending = time.monotonic(), _totals(region), 0.0, []
            while time.monotonic() - t0 < phase_s:
                i += 1
                pending.append(asyncio.create_task(region.bid(_request(i), {"x-openrtb-version": "2.6"})))
                await asyncio.sleep(1.0 / rate)
            for ans in await asyncio.gather(*pending):
                if ans.status == 200:
                    value += json.loads(ans.body)["seatbid"][0]["bid"][0]["price"]
            after = _totals(region)
            d = {k: after[k] - before[k] for k in after}
            n = max(d["requests"], 1)
            phases.append({"phase": name, "enrichment_ms": delay_ms, "requests": d["requests"],
                           "bidders_per_request": round(d["bidders"] / n, 3),
                           "partners_per_request": round(d["partners_participating"] / n, 3),
                           "late_share": round(d["late"] / max(d["called"], 1), 3),
                           "value_per_opportunity_cpm": round(value / n, 3),
                           "enrichment_share": region.bidder.tiers["premium"].budgets["enrichment"],
                           "partners": {pid: {"control": [row["cutoff_ms"]["premium"], row["share"]["premium"]],
                                              "local": row["state"]["premium"], "p95_ms": row["p95_ms"]["premium"],
                                              "why": control.partners.why.get(pid, {}).get("premium", "")}
                                        for pid, row in region.partners.summary().items()},
                           "starved_tiers": sorted(control.partners.cut_tiers(time.time()))})
            print(json.dumps(phases[-1]), flush=True)
        phases = phases[1:]  # the warm-up is not a phase
        tick_task.cancel()
        await region.stop()
        return phases
    finally:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase-s", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--mid-ms", type=float, default=32.0, help="median latency of the first mid partner")
    ap.add_argument("--mid-sigma", type=float, default=0.12, help="their latency's lognormal shape")
    ap.add_argument("--out", default=None, help="write the phases as JSON here")
    a = ap.parse_args()
    phases = asyncio.run(run(a.phase_s, a.rate, mid_ms=a.mid_ms, sigma=a.mid_sigma))
    if a.out:
        (REPO_ROOT / a.out).write_text(json.dumps(phases, indent=1) + "\n")


if __name__ == "__main__":
    main()
