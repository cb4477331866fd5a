"""The economic scorecard: the fleet's decisions against an oracle that knows the truth.

The oracle (``fleet.sim.oracle``: eligibility from the catalog file and the request at the
auction's own time, every imp; value from the market's truth) sees every opportunity of the run,
each eligible campaign's true value and the highest competing bid. The headline compares totals
at equal money: the fleet's value and surplus (value minus spend) against the oracle's with
the spend the fleet actually made, beside value per dollar (which alone rewards spending less).
The unconstrained oracle (each campaign's budget for the run window, nothing more) is kept too.

``targeting`` counts the fleet's bids for campaigns the rules do not admit for that auction
(should be 0: a targeting bug in the fleet shows here) and, per campaign, how many auctions the
oracle found worth buying for it against how many the fleet bid on.

Everything is also bucketed by the latency the exchange saw (server time plus simulated network
time), so a fast but worse decision shows up next to a slow but better one.

A win the fleet resold from a demand partner (stage 6: the bid's ``ext.pricing`` is
``partner:<id>``) is not a campaign's: the oracle, which knows only the catalog, does not see it,
and ``fleet`` leaves it out. ``partners`` counts those wins apart, valued at the partner's bid
(USD; the simulated partners price off the market's own level for the publisher and format, so
a bid is what its buyer holds the impression worth) beside what the exchange charged for them
(passed on to the partner: the fleet keeps no margin). ``with_partners`` is the two together.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from fleet.sim.catalog import Campaign
from fleet.sim.exchange import AuctionRecord
from fleet.sim.market import Market
from fleet.sim.oracle import Option, allocate, assess, impression_value

BUCKETS = [(0, 2), (2, 5), (5, 10), (10, 20), (20, 50), (50, math.inf)]


def _bucket(ms: float) -> str:
    for lo, hi in BUCKETS:
        if lo <= ms < hi:
            return f"{lo}-{hi if hi != math.inf else 'inf'}ms"
    return "inf"


def bucket_of(rec: AuctionRecord) -> str:
    """The latency bucket of an auction, judged on the exchange's own clock: ``late`` for an
    answer after tmax and for one the exchange stopped waiting for (a timeout), ``error`` for a
    failed answer (refused, reset, 4xx/5xx)."""
    if rec.timed_out:
        return "late"
    if rec.status not in (200, 204):
        return "error"
    return "late" if rec.late else _bucket(rec.latency_ms)


def _summary(spend: float, value: float, clicks: float, wins: int, bids: int, n: int) -> dict:
    return {
        "opportunities": n, "bids": bids, "wins": wins,
        "win_rate": round(wins / bids, 4) if bids else 0.0,
        "spend_usd": round(spend, 4), "value_usd": round(value, 4),
        "expected_clicks": round(clicks, 3),
        "value_per_dollar": round(value / spend, 4) if spend else 0.0,
        "clicks_per_dollar": round(clicks / spend, 4) if spend else 0.0,
        "surplus_usd": round(value - spend, 4),
        "value_per_opportunity": round(value / n, 6) if n else 0.0,
    }


def _oracle_summary(wins: dict[int, Option], n: int) -> dict:
    w = wins.values()
    return _summary(sum(o.cost for o in w), sum(o.value for o in w), sum(o.ctr for o in w), len(wins), len(wins), n)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _versus(fleet: dict, oracle: dict) -> dict:
    return {"value": _ratio(fleet["value_usd"], oracle["value_usd"]),
            "surplus": _ratio(fleet["surplus_usd"], oracle["surplus_usd"]),
            "value_per_dollar": _ratio(fleet["value_per_dollar"], oracle["value_per_dollar"])}


def score(market: Market, records: list[AuctionRecord], campaigns: list[Campaign], duration_s: float,
          *, start: float, seat: str | None = None) -> dict:
    """The scorecard of a run. ``campaigns``: the catalog as the simulator reads it
    (``fleet.sim.catalog``); ``start``: the wall clock (epoch seconds) of the run's second 0, so
    an auction's own time is ``start + record.t``; ``seat``: ours, for deals that name seats."""
    by_id = {c.id: c for c in campaigns}
    budgets = {c.id: c.budget_daily * duration_s / 86_400.0 for c in campaigns}
    caps = {c.id: c.freq_cap for c in campaigns if c.freq_cap is not None}
    options: list[Option] = []
    allowed: list[set[str]] = []
    worth = Counter()  # campaign -> auctions the oracle found worth buying for it
    for i, rec in enumerate(records):
        ids, best = assess(market, campaigns, i, rec.opp, start + rec.t, seat)
        allowed.append(ids)
        if best is not None:
            options.append(best)
            worth[best.campaign] += 1
    orc = allocate(options, budgets, caps)

    fleet_spend = defaultdict(float)
    fleet_bids = Counter()
    outside = Counter()
    tot = defaultdict(float)
    buckets: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    realized_clicks = 0
    part = defaultdict(float)
    part_wins = Counter()
    for i, rec in enumerate(records):
        b = buckets[bucket_of(rec)]
        b["n"] += 1
        if i in orc:
            b["oracle_value"] += orc[i].value
        if rec.status == 200 and not rec.late:
            b["bids"] += 1
            tot["bids"] += 1
        if rec.status == 200 and rec.partner:
            part["bids"] += 1
            if rec.won:
                part_wins[rec.partner] += 1
                part["charged"] += rec.price / 1000.0
                part["bid_value"] += rec.bid_price / 1000.0
            continue
        if rec.status == 200 and rec.campaign_id is not None:
            fleet_bids[rec.campaign_id] += 1
            if rec.campaign_id in by_id and rec.campaign_id not in allowed[i]:
                outside[rec.campaign_id] += 1
        if rec.won and rec.campaign_id in by_id:
            c = by_id[rec.campaign_id]
            cost = rec.price / 1000.0
            fleet_spend[c.id] += cost
            for d in (b, tot):
                d["wins"] += 1
                d["spend"] += cost
                d["value"] += impression_value(market, rec.opp, c)
                d["clicks"] += market.ctr(rec.opp, c)
            realized_clicks += rec.clicked
    n = len(records)
    fleet = _summary(tot["spend"], tot["value"], tot["clicks"], int(tot["wins"]), int(tot["bids"]), n)
    fleet["realized_clicks"] = realized_clicks
    oracle = _oracle_summary(orc, n)
    at_spend = allocate(options, budgets, caps, pool=tot["spend"])
    oracle_at_spend = _oracle_summary(at_spend, n)

    def spent(wins: dict[int, Option]) -> dict[str, float]:
        out = defaultdict(float)
        for o in wins.values():
            out[o.campaign] += o.cost
        return out

    o_spend, a_spend = spent(orc), spent(at_spend)
    per_campaign = {
        cid: {"plan_usd": round(budgets[cid], 4), "fleet_spend_usd": round(fleet_spend[cid], 4),
              "oracle_spend_usd": round(o_spend[cid], 4), "oracle_at_fleet_spend_usd": round(a_spend[cid], 4),
              "oracle_worth_buying": worth[cid], "fleet_bids": fleet_bids[cid]}
        for cid in sorted(budgets) if fleet_spend[cid] or o_spend[cid] or fleet_bids[cid] or worth[cid]
    }
    order = [f"{lo}-{hi if hi != math.inf else 'inf'}ms" for lo, hi in BUCKETS] + ["late", "error"]
    by_latency = {}
    for key in order:
        if key not in buckets:
            continue
        b = buckets[key]
        by_latency[key] = {
            "opportunities": int(b["n"]), "bids": int(b["bids"]), "wins": int(b["wins"]),
            "spend_usd": round(b["spend"], 4), "value_usd": round(b["value"], 4),
            "value_per_opportunity": round(b["value"] / b["n"], 6) if b["n"] else 0.0,
            "oracle_value_per_opportunity": round(b["oracle_value"] / b["n"], 6) if b["n"] else 0.0,
        }
    pick = ("value_usd", "surplus_usd", "spend_usd", "value_per_dollar")
    both_value, both_spend = tot["value"] + part["bid_value"], tot["spend"] + part["charged"]
    partners = {"bids": int(part["bids"]), "wins": sum(part_wins.values()),
                "wins_by_partner": dict(sorted(part_wins.items())), "charged_usd": round(part["charged"], 4),
                "bid_value_usd": round(part["bid_value"], 4)}
    with_partners = {"wins": fleet["wins"] + partners["wins"], "value_usd": round(both_value, 4),
                     "spend_usd": round(both_spend, 4), "surplus_usd": round(both_value - both_spend, 4),
                     "value_per_opportunity": round(both_value / n, 6) if n else 0.0}
    return {
        "headline": {
            "fleet": {k: fleet[k] for k in pick},
            "oracle_at_fleet_spend": {k: oracle_at_spend[k] for k in pick},
            "fleet_vs_oracle_at_fleet_spend": _versus(fleet, oracle_at_spend),
        },
        "fleet": fleet,
        "oracle": oracle,
        "oracle_at_fleet_spend": oracle_at_spend,
        "fleet_vs_oracle": _versus(fleet, oracle),
        "partners": partners,
        "with_partners": with_partners,
        "targeting": {
            "fleet_bids": sum(fleet_bids.values()),
            "outside_targeting": sum(outside.values()),
            "outside_by_campaign": dict(sorted(outside.items())),
            "unknown_campaign": sum(v for k, v in fleet_bids.items() if k not in by_id),
        },
        "by_latency": by_latency,
        "per_campaign": per_campaign,
    }
