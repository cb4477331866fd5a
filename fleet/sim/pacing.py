"""The pacing run: a compressed day of diurnal traffic through the real endpoints, with budgets
set through control's HTTP API, and the figures the pacing contract is judged by.

1. Probe: every campaign gets an unconstraining flight for ``probe_s`` of flat traffic. Unpaced,
   the highest bidders win nearly everything, so what each campaign spent says little; what the
   probe gives is the fleet's total spend rate and each campaign's eligible opportunities.
2. Day: the budgets, ``fill`` times the total rate over the day, are split by each campaign's
   share of eligible opportunities; the curve is traffic-shaped like the simulator's diurnal
   traffic, and the exchanges run for ``day_s`` (another seed than the probe's, so no request id
   repeats: admission would drop repeats as duplicates). Control's
   campaign view is sampled every ``sample_s``: spend to date against plan, and the lease bound
   (spend plus what outstanding leases may still commit never above the budget).
3. Optional: ``on_mid`` runs at mid-day (the test kills the control actor there).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import httpx

from fleet.control.curve import Curve, cosine_weights
from fleet.sim.exchange import Exchanges, SimConfig
from fleet.sim.market import Market


class ControlClient:
    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.http = httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=5.0)

    async def put_flight(self, cid: str, body: dict, key: str) -> dict:
        for attempt in range(20):  # control restarting: retry, the idempotency key keeps it once
            try:
                r = await self.http.put(f"{self.base}/v1/campaigns/{cid}", json=body,
                                        headers={"idempotency-key": key})
                if r.status_code < 500:
                    r.raise_for_status()
                    return r.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"control did not accept the flight of {cid}")

    async def campaigns(self) -> dict | None:
        try:
            r = await self.http.get(f"{self.base}/v1/campaigns")
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None


async def run_pacing(base_url: str, control_url: str, token: str, regions, campaigns, *, day_s: float = 120.0,
                     rate: float = 90.0, probe_s: float = 20.0, fill: float = 0.5, amplitude: float = 0.6,
                     sample_s: float = 2.0, seed: int = 7, on_mid=None, progress=print) -> dict:
    ctl = ControlClient(control_url, token)
    run_id = f"{int(time.time())}"
    market = Market(seed=seed, regions=tuple(regions.regions))
    # Notices come within a few seconds (late ones up to 10 s): the imps say 30 s, as the
    # compressed day's own scale.
    flat = SimConfig(base_url=base_url, duration_s=probe_s, rate=rate, seed=seed, diurnal_amplitude=0.0,
                     burst_every_s=1e9, cross_region_share=0.0, grace_s=3.0, imp_exp=30.0)
    # 1 probe
    now = time.time()
    for c in campaigns:
        await ctl.put_flight(c.id, {"budget": 1e6, "start": now, "end": now + probe_s + 5, "curve": "even",
                                    "daily": False}, f"{run_id}-probe-{c.id}")
    await asyncio.sleep(2.5)  # leases out before the first auction
    progress(f"probe: {probe_s:.0f} s of flat traffic at {rate:.0f}/s")
    await Exchanges(market, regions, campaigns, flat, progress=lambda s: None).run()
    await asyncio.sleep(2.0)
    probe = await ctl.campaigns() or {}
    total_rate = sum(v.get("spent", 0.0) for v in probe.values() if v["budget"] >= 1e6) / probe_s
    opp = {c.id: sum(r["opp_rate"] for r in probe.get(c.id, {}).get("regions", {}).values()) for c in campaigns}
    opp_total = sum(opp.values()) or 1.0
    rates = {cid: total_rate * o / opp_total for cid, o in opp.items()}
    progress(f"probe: fleet spend rate ${total_rate:.4f}/s")

    # 2 the day
    weights = cosine_weights(amplitude)
    start = time.time() + 3.0
    budgets = {}
    for c in campaigns:
        budgets[c.id] = round(fill * rates[c.id] * day_s, 4)
        await ctl.put_flight(c.id, {"budget": budgets[c.id], "start": start, "end": start + day_s,
                                    "curve": "traffic", "weights": weights, "daily": False}, f"{run_id}-day-{c.id}")
    curve = Curve(start, start + day_s, weights)
    samples: list[tuple[float, dict]] = []
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            view = await ctl.campaigns()
            if view is not None:
                samples.append((time.time(), view))
            await asyncio.sleep(sample_s)

    async def mid():
        await asyncio.sleep(start - time.time() + day_s / 2)
        if on_mid is not None:
            progress("mid-day: " + str(await asyncio.get_running_loop().run_in_executor(None, on_mid)))

    await asyncio.sleep(max(0.0, start - time.time()))
    day = replace(flat, duration_s=day_s, diurnal_amplitude=amplitude, grace_s=8.0, seed=seed + 1)
    progress(f"day: {day_s:.0f} s, {len(campaigns)} campaigns, diurnal amplitude {amplitude}")
    tasks = [asyncio.create_task(sampler()), asyncio.create_task(mid())]
    records = await Exchanges(market, regions, campaigns, day, progress=progress).run()
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks)
    final = await ctl.campaigns() or samples[-1][1]
    return summarise(records, samples, final, budgets, campaigns, curve, start, day_s, sample_s)


def summarise(records, samples, final, budgets, campaigns, curve, start, day_s, sample_s: float = 2.0) -> dict:
    """The pacing contract's figures. "Enough eligible traffic": a budget of at least 100 bids at
    the campaign's cap (one impression is then at most 1% of it) and not traffic-limited, i.e.
    not behind plan with its throttle at (nearly) 1 in every region where it has eligible
    opportunities for most of the day: such a campaign could not have spent more at full
    participation. The others are named in ``cannot_spend`` with the reason, reported apart
    (their final delivery is in ``finals`` with everyone's): none is silently in or out."""
    max_bid = {c.id: c.strategy.max_bid / 1000.0 for c in campaigns}
    day = [(t, v) for t, v in samples if start + 0.1 * day_s <= t <= start + day_s]
    # What the exchanges saw of each campaign over the day: bids answered in time, wins, charged.
    seen: dict[str, list] = {}
    for r in records:
        cid = getattr(r, "campaign_id", None)
        if cid is not None and r.status == 200 and not r.late:
            x = seen.setdefault(cid, [0, 0, 0.0])
            x[0] += 1
            if r.won:
                x[1] += 1
                x[2] += r.price / 1000.0
    limited, why = [], {}
    for cid, b in budgets.items():
        spent = final[cid]["spent"] if cid in final else 0.0
        bids, wins, charged = seen.get(cid, [0, 0, 0.0])
        opp = [r["opp_rate"] for _, v in day if cid in v for r in v[cid]["regions"].values()]
        if b <= 0:
            why[cid] = "no budget: the probe saw no eligible opportunity for it"
            continue
        if day and not any(x > 0 for x in opp):
            why[cid] = f"no eligible opportunity in the day (budget {b:.4f}, spent {spent:.4f})"
            continue
        if b < max_bid[cid]:
            why[cid] = (f"budget {b:.4f} is under one bid at its cap ({max_bid[cid] * 1000:.2f} CPM): a replica "
                        f"takes part only with a lease that covers its max bid")
            continue
        starved = sum(1 for _, v in day if cid in v and v[cid]["spent"] < v[cid]["planned"]
                      and all(r["throttle"] >= 0.95 for r in v[cid]["regions"].values() if r["opp_rate"] > 0))
        if day and starved > 0.5 * len(day):
            limited.append(cid)
            seen_txt = (f"; the exchanges saw {bids} bids from it, {wins} won (${charged:.4f} at clearing prices)"
                        if records else "")
            why[cid] = (f"traffic-limited: behind plan taking part in every eligible auction (throttle >= 0.95 "
                        f"wherever it had opportunities) for {starved} of {len(day)} samples; spent {spent:.4f} "
                        f"of {b:.4f} at a max bid of {max_bid[cid] * 1000:.2f} CPM{seen_txt}")
            continue
        if b < 100 * max_bid[cid]:
            why[cid] = (f"budget of {b / max_bid[cid]:.0f} bids at its cap (under 100): one impression is more than "
                        f"1% of it; spent {spent:.4f} of {b:.4f}")
    enough = [cid for cid in budgets if cid not in why]
    finals = {cid: final[cid]["spent"] / budgets[cid] for cid in enough if budgets[cid] > 0}
    over = {cid: final[cid]["spent"] - budgets[cid] for cid in budgets if final[cid]["spent"] > budgets[cid] + 1e-9}
    # The hard bound: spend to date never above the budget. And control's own invariant, spend
    # plus what outstanding leases may still commit within the budget (a bill that arrives after
    # its reservation was released counts against no lease, so this one can be passed briefly).
    # Control's spend is the ledger's plus the replicas' reports it may not hold yet: a bill can
    # count in both for a second (fleet.control.spend), so a sample over either line is also told
    # by whether its excess is more than that provisional part.
    over_samples = sum(1 for _, v in samples for cid in budgets if v[cid]["spent"] > budgets[cid] + 1e-9)
    over_finalized = sum(1 for _, v in samples for cid in budgets
                         if v[cid]["spent"] - v[cid].get("provisional", 0.0) > budgets[cid] + 1e-9)
    bound_breaches = sum(1 for _, v in samples for cid in budgets
                         if v[cid]["spent"] + v[cid]["outstanding"] > budgets[cid] + 1e-6)
    excess = max((v[cid]["spent"] + v[cid]["outstanding"] - budgets[cid]) / max_bid[cid]
                 for _, v in samples for cid in budgets if max_bid[cid] > 0) if samples else 0.0
    spent_nothing = sorted(cid for cid in enough if final[cid]["spent"] < max_bid[cid])
    errors, window_errors, by_mark = [], [], {}
    marks = list(range(30, int(day_s) + 1, 30))
    for i, mark in enumerate(marks):
        near = min(samples, key=lambda s: abs(s[0] - (start + mark)))
        prev = min(samples, key=lambda s: abs(s[0] - (start + mark - 30)))
        for cid in enough:
            # Pacing error at each 30 s mark: spend to date against plan to date.
            plan = budgets[cid] * curve.fraction(near[0])
            if plan > 0:
                errors.append(abs(near[1][cid]["spent"] - plan) / plan)
                by_mark.setdefault(mark, []).append((near[1][cid]["spent"] - plan) / plan)
            # And over the window alone (at this volume, mostly the count of impressions in it).
            wplan = budgets[cid] * (curve.fraction(near[0]) - curve.fraction(prev[0]))
            if wplan > 0 and i > 0:
                window_errors.append(abs(near[1][cid]["spent"] - prev[1][cid]["spent"] - wplan) / wplan)
    errors.sort()
    window_errors.sort()
    statuses = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    failed = [round(r.t, 1) for r in records if r.status not in (200, 204)]
    kept = samples[::max(1, round(10.0 / sample_s))]
    if samples and kept[-1] is not samples[-1]:
        kept.append(samples[-1])  # the last sample always: the day's final spend
    return {
        "campaigns": len(budgets), "enough_traffic": len(enough), "traffic_limited": sorted(limited),
        "cannot_spend": {cid: why[cid] for cid in sorted(why)},
        "within_2pct": sum(1 for x in finals.values() if abs(x - 1) <= 0.02),
        "final_ratio": {"min": min(finals.values(), default=None), "max": max(finals.values(), default=None)},
        "overspent": over, "over_budget_samples": over_samples, "lease_bound_breaches": bound_breaches,
        # finalized spend alone above the budget (the ledger counts each bill once), and the
        # largest excess of spend + outstanding leases over the budget, in bids at the cap: a
        # bill in transit, in the ledger and still in a report or a lease, is one bid at most
        "over_budget_samples_finalized": over_finalized,
        "lease_bound_excess_max_bids": round(max(0.0, excess), 3),
        # in the figure, yet spent less than one bid at its cap all day: a pacing failure, named
        "in_figure_spent_nothing": spent_nothing,
        "pacing_error_p90": errors[int(0.9 * len(errors))] if errors else None,
        "pacing_error_marks": len(errors),
        # The same per mark: the median (signed: + ahead of plan) and the p90 of its size.
        "pacing_error_by_mark": {m: {"median": round(sorted(v)[len(v) // 2], 4),
                                     "p90": round(sorted(abs(x) for x in v)[int(0.9 * len(v))], 4)}
                                 for m, v in sorted(by_mark.items())},
        "window_error_p90": window_errors[int(0.9 * len(window_errors))] if window_errors else None,
        "auctions": len(records), "statuses": statuses, "failed_at_s": failed[:50],
        "late": sum(r.late for r in records),
        # Spend against plan for the plot and the record, one point per 10 s (the figures above
        # use every sample).
        "series": {cid: [(round(t - start, 2), round(v[cid]["spent"], 6), round(v[cid]["planned"], 6))
                         for t, v in kept if cid in v] for cid in budgets},
        "budgets": budgets, "finals": {cid: round(final[cid]["spent"] / b, 4) if b else None
                                       for cid, b in budgets.items()},
    }


def write(doc: dict, out_dir: Path, stem: str = "pacing") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(doc, separators=(",", ":")))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for cid, series in doc["series"].items():
        b = doc["budgets"][cid]
        if not series or b <= 0:
            continue
        ax.plot([s[0] for s in series], [s[1] / b for s in series], lw=0.7, alpha=0.6)
    plan = next((s for s in doc["series"].values() if s), [])
    any_cid = next((cid for cid, s in doc["series"].items() if s), None)
    if any_cid:
        b = doc["budgets"][any_cid]
        ax.plot([s[0] for s in plan], [s[2] / b for s in plan], "k--", lw=2, label="plan (traffic curve)")
    ax.set_xlabel("seconds into the compressed day")
    ax.set_ylabel("spend / budget")
    ax.set_title("spend against plan, every campaign")
    ax.legend()
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [path, png]
