"""The money bench: the simulator's exchanges misbehave the way real ones do, and the ledger,
pacing and budgets are judged against what the simulator itself charged.

Against a running fleet (two ingress replicas per region: ``fleet up --replicas 2``), for
``duration_s`` of traffic: notices go to whichever replica the ingress picks; 1% are resent three
times; 5% of bills come late (1-15 minutes, divided by ``compress``); forged and kind-swapped
notices ride along; an exchange trading in JPY leaves ``${AUCTION_CURRENCY}`` unsubstituted; half
the campaigns get budgets they will exhaust; one ingress replica is SIGKILLed mid-run, and the
exchange resends what failed. Then, once every region's ledger has caught up:

- ledger finalized spend against the simulator's billed total (target: within 0.01%);
- control's spend (pacing) against the ledger's, at the end (within 0.5%);
- no campaign above its budget by the ledger's count at any sample (every 2 s);
- forged notices accepted (0) and acknowledged bills missing from the ledger (0).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import redis.asyncio as aredis

from fleet.ledger.consumer import ledger_prefix
from fleet.sim.exchange import Exchanges, SimConfig
from fleet.sim.market import Market
from fleet.sim.pacing import ControlClient

DAY_S = 86_400


def replica_pids(region: str) -> list[int]:
    """The processes of a region's ingress replicas (Ray names them in their title)."""
    tag = f"ServeReplica:{region}:ingress-{region}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


async def ledger_spend(r, regions: list[str], days: list[int]) -> dict[str, float]:
    """Finalized spend per campaign, every region and day summed (the ledger's count)."""
    out: dict[str, float] = {}
    pipe = r.pipeline(transaction=False)
    for region in regions:
        for day in days:
            pipe.hgetall(f"{ledger_prefix(region)}spend:{day}")
    for doc in await pipe.execute():
        for cid, v in doc.items():
            cid = cid.decode() if isinstance(cid, bytes) else cid
            out[cid] = out.get(cid, 0.0) + float(v)
    return out


async def caught_up(r, regions: list[str], after: float, wait_s: float = 60.0) -> bool:
    """Wait until every region's consumer has applied everything in its stream at ``after``."""
    end = time.time() + wait_s
    while time.time() < end:
        marks = [await r.get(f"{ledger_prefix(reg)}caught_up") for reg in regions]
        if all(m is not None and float(m) >= after for m in marks):
            return True
        await asyncio.sleep(0.5)
    return False


async def run_notices(base_url: str, control_url: str, token: str, regions, campaigns, redis_url: str, *,
                      duration_s: float = 120.0, rate: float = 60.0, compress: float = 10.0, seed: int = 11,
                      tight_share: float = 0.5, tight_usd: float = 0.05, kill: bool = True,
                      progress=print) -> dict:
    ctl = ControlClient(control_url, token)
    r = aredis.Redis.from_url(redis_url)
    names = list(regions.regions)
    run_id = f"notices-{int(time.time())}"
    rng = random.Random(seed)
    delay_max = 900.0 / compress
    start = time.time() + 3.0
    end = start + duration_s  # the flights end with the traffic: a tight budget is spent by then
    budgets = {}
    for c in campaigns:
        budgets[c.id] = tight_usd if rng.random() < tight_share else 1e6
        await ctl.put_flight(c.id, {"budget": budgets[c.id], "start": time.time(), "end": end, "curve": "even",
                                    "daily": False}, f"{run_id}-{c.id}")
    days = sorted({int(time.time() // DAY_S), int((end + delay_max + 60) // DAY_S)})
    before = await ledger_spend(r, names, days)  # earlier runs of the same day
    cfg = SimConfig(base_url=base_url, duration_s=duration_s, rate=rate, seed=seed, drop_rate=0.02, dup_rate=0.02,
                    late_rate=0.05, late_min_s=1.0, late_max_s=5.0, resend_rate=0.01, resend_copies=3,
                    bill_delay_rate=0.05, bill_delay_min_s=60.0 / compress, bill_delay_max_s=delay_max,
                    forge_rate=0.02, jpy_share=0.2, notice_retries=8, cross_region_share=0.0,
                    burst_every_s=1e9, grace_s=delay_max + 5.0, imp_exp=delay_max + 30.0)
    ex = Exchanges(Market(seed=seed, regions=tuple(names)), regions, campaigns, cfg, progress=progress)
    samples: list[tuple[float, dict[str, float]]] = []
    stop = asyncio.Event()
    killed: dict = {}

    async def sampler():
        while not stop.is_set():
            now = await ledger_spend(r, names, days)
            samples.append((time.time(), {k: v - before.get(k, 0.0) for k, v in now.items()}))
            await asyncio.sleep(2.0)

    async def killer():
        await asyncio.sleep(max(0.0, start - time.time()) + duration_s / 2)
        pids = replica_pids(names[0])
        if len(pids) < 2:
            killed["skipped"] = f"{names[0]} has {len(pids)} replica process(es): need 2"
            return
        os.kill(pids[0], signal.SIGKILL)
        killed.update(region=names[0], pid=pids[0], at_s=round(time.time() - start, 2))
        progress(f"SIGKILL {names[0]} replica pid {pids[0]}")

    await asyncio.sleep(max(0.0, start - time.time()))
    tasks = [asyncio.create_task(sampler())] + ([asyncio.create_task(killer())] if kill else [])
    await ex.run()
    finished = time.time()
    await asyncio.sleep(2.0)  # the last reports reach control
    ok = await caught_up(r, names, finished)
    stop.set()
    await asyncio.gather(*tasks)
    final = {k: v - before.get(k, 0.0) for k, v in (await ledger_spend(r, names, days)).items()}
    view = await ctl.campaigns() or {}
    pacing = {cid: view[cid]["spent"] for cid in budgets if cid in view}

    truth: dict[str, float] = {}
    missing = 0
    pipe = r.pipeline(transaction=False)
    for bid, (usd, cid, region) in ex.billed.items():
        truth[cid] = truth.get(cid, 0.0) + usd / 1000.0
        pipe.hget(f"{ledger_prefix(region)}bid:{bid}", "billed")
    missing = sum(1 for v in await pipe.execute() if v is None)
    await r.aclose()

    t_truth, t_ledger, t_pacing = sum(truth.values()), sum(final.get(c, 0.0) for c in budgets), sum(pacing.values())
    over = [(round(t - start, 1), cid, round(v, 6), budgets[cid]) for t, s in samples for cid, v in s.items()
            if cid in budgets and v > budgets[cid] * (1 + 1e-9)]
    tight = [cid for cid, b in budgets.items() if b < 1e6]
    return {
        "config": {"duration_s": duration_s, "rate": rate, "compress": compress, "seed": seed,
                   "campaigns": len(budgets), "tight": len(tight), "tight_usd": tight_usd,
                   "replicas_killed": killed, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "ledger_caught_up": ok,
        "billed_truth_usd": round(t_truth, 6),
        "ledger_usd": round(t_ledger, 6),
        "ledger_vs_truth": round((t_ledger - t_truth) / t_truth, 6) if t_truth else None,
        "pacing_usd": round(t_pacing, 6),
        "pacing_vs_ledger": round((t_pacing - t_ledger) / t_ledger, 6) if t_ledger else None,
        "per_campaign_worst": max((abs(final.get(c, 0.0) - truth.get(c, 0.0)) for c in budgets), default=0.0),
        "over_budget_samples": len(over), "over_budget_examples": over[:5],
        "tight_exhausted": sum(1 for c in tight if final.get(c, 0.0) >= 0.9 * budgets[c]),
        "tight_spent_share": sorted(round(final.get(c, 0.0) / budgets[c], 3) for c in tight),
        "forged": dict(ex.forged), "acknowledged_bills": len(ex.billed), "acknowledged_missing": missing,
        "notices": {"delivered": dict(ex.notices), "outcomes": dict(ex.notice_outcomes),
                    "errors": dict(ex.notice_errors)},
        "auctions": len(ex.records), "bids": sum(1 for x in ex.records if x.status == 200 and not x.late),
        "wins": sum(1 for x in ex.records if x.won),
    }
