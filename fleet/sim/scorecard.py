"""The economic scorecard: the fleet's decisions against an oracle that knows the truth.

Value of an impression to a campaign, in USD, is the true click probability times the value of a
click: a CPC campaign's target CPC; a CPA campaign's target CPA times the true conversion rate; a
CPM campaign values a click at what its base CPM pays at the population click rate (POP_CTR).

The oracle sees every opportunity of the run, knows each eligible campaign's true value and the
highest competing bid, and faces the same per-campaign budgets for the run window: it takes the
opportunities with the best value per dollar first, paying just above the competition (or the
floor), and only where value exceeds cost. Eligibility is the fleet's own targeting (same
index and creative rules, in-process), without frequency caps.

Everything is also bucketed by the latency the exchange saw (server time plus simulated network
time), so a fast but worse decision shows up next to a slow but better one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

import msgspec

from fleet.campaigns.model import Campaign
from fleet.openrtb.model import BidRequest
from fleet.pipeline import targeting
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.enrichment import enrich
from fleet.pipeline.pricing import POP_CTR
from fleet.sim.exchange import AuctionRecord
from fleet.sim.market import Market, Opportunity

BUCKETS = [(0, 2), (2, 5), (5, 10), (10, 20), (20, 50), (50, math.inf)]


def click_value(market: Market, opp: Opportunity, c: Campaign) -> float:
    s = c.strategy
    if s.goal == "cpc" and s.target_cpc:
        return s.target_cpc
    if s.goal == "cpa" and s.target_cpa:
        return s.target_cpa * market.cvr(opp, c)
    return s.base_cpm / (1000.0 * POP_CTR)


def impression_value(market: Market, opp: Opportunity, c: Campaign) -> float:
    """Expected value of one impression, USD."""
    return market.ctr(opp, c) * click_value(market, opp, c)


def eligible(bidder: RegionBidder, opp: Opportunity, when: dt.datetime) -> list[Campaign]:
    req = msgspec.convert(opp.to_openrtb(), BidRequest)
    return [c for c, _ in targeting.eligible(bidder.index, req, req.imp[0], enrich(req), when)]


def oracle(market: Market, bidders: dict[str, RegionBidder], records: list[AuctionRecord],
           budgets: dict[str, float]) -> dict[int, tuple[str, float, float, float]]:
    """Oracle wins: record index -> (campaign, cost USD, value USD, expected clicks)."""
    when = dt.datetime.now(dt.timezone.utc)
    options = []
    for i, rec in enumerate(records):
        opp = rec.opp
        cost = (max(opp.competing, opp.floor) + 0.01) / 1000.0
        best = None
        for c in eligible(bidders[opp.region], opp, when):
            v = impression_value(market, opp, c)
            if v > cost and (best is None or v - cost > best[2] - cost):
                best = (c.id, cost, v, market.ctr(opp, c))
        if best is not None:
            options.append((best[2] / best[1], i, best))
    options.sort(reverse=True)
    left = dict(budgets)
    wins = {}
    for _, i, (cid, cost, v, ctr) in options:
        if left.get(cid, 0.0) >= cost:
            left[cid] -= cost
            wins[i] = (cid, cost, v, ctr)
    return wins


def _bucket(ms: float) -> str:
    for lo, hi in BUCKETS:
        if lo <= ms < hi:
            return f"{lo}-{hi if hi != math.inf else 'inf'}ms"
    return "inf"


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


def score(market: Market, records: list[AuctionRecord], campaigns: list[Campaign],
          bidders: dict[str, RegionBidder], duration_s: float) -> dict:
    by_id = {c.id: c for c in campaigns}
    budgets = {c.id: c.budget_daily * duration_s / 86_400.0 for c in campaigns}
    orc = oracle(market, bidders, records, budgets)

    fleet_spend = defaultdict(float)
    tot = defaultdict(float)
    buckets: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    realized_clicks = 0
    for i, rec in enumerate(records):
        key = "error" if rec.status not in (200, 204) else ("late" if rec.late else _bucket(rec.latency_ms))
        b = buckets[key]
        b["n"] += 1
        if i in orc:
            b["oracle_value"] += orc[i][2]
        if rec.status == 200 and not rec.late:
            b["bids"] += 1
            tot["bids"] += 1
        if rec.won and rec.campaign_id in by_id:
            c = by_id[rec.campaign_id]
            cost = rec.price / 1000.0
            value = impression_value(market, rec.opp, c)
            ctr = market.ctr(rec.opp, c)
            fleet_spend[c.id] += cost
            for d in (b, tot):
                d["wins"] += 1
                d["spend"] += cost
                d["value"] += value
                d["clicks"] += ctr
            realized_clicks += rec.clicked
    n = len(records)
    fleet = _summary(tot["spend"], tot["value"], tot["clicks"], int(tot["wins"]), int(tot["bids"]), n)
    fleet["realized_clicks"] = realized_clicks
    o_spend = sum(w[1] for w in orc.values())
    o_value = sum(w[2] for w in orc.values())
    o_clicks = sum(w[3] for w in orc.values())
    oracle_summary = _summary(o_spend, o_value, o_clicks, len(orc), len(orc), n)
    oracle_spend = defaultdict(float)
    for cid, cost, _, _ in orc.values():
        oracle_spend[cid] += cost
    per_campaign = {
        cid: {"plan_usd": round(budgets[cid], 4), "fleet_spend_usd": round(fleet_spend[cid], 4),
              "oracle_spend_usd": round(oracle_spend[cid], 4)}
        for cid in sorted(budgets) if fleet_spend[cid] or oracle_spend[cid]
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
    ratio = fleet["value_per_dollar"] / oracle_summary["value_per_dollar"] if oracle_summary["value_per_dollar"] else None
    return {
        "fleet": fleet,
        "oracle": oracle_summary,
        "fleet_vs_oracle": {
            "value_per_dollar": round(ratio, 4) if ratio is not None else None,
            "value": round(fleet["value_usd"] / o_value, 4) if o_value else None,
            "surplus": round(fleet["surplus_usd"] / oracle_summary["surplus_usd"], 4) if oracle_summary["surplus_usd"] else None,
        },
        "by_latency": by_latency,
        "per_campaign": per_campaign,
    }
