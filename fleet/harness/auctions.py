"""The simulated exchanges' auctions against the in-process bid path: no HTTP, no Ray.

``fleet.sim.exchange`` runs the same auctions over HTTP against a running fleet; this harness
gives the scorecard the same records from ``RegionBidder`` directly, each auction at its own
time on the bidder's clock, so tests can score a fleet (or a deliberately broken one) in seconds.
"""

from __future__ import annotations

import random

import msgspec

from fleet.campaigns.model import Campaign
from fleet.config import RegionsFile
from fleet.harness.pacing_loop import Clock
from fleet.pipeline.bidder import RegionBidder
from fleet.sim.exchange import AuctionRecord
from fleet.sim.market import Market, resolve


def bidders(regions: RegionsFile, campaigns: list[Campaign], clock: Clock) -> dict[str, RegionBidder]:
    """One bidder per region, reading ``clock`` (the harness sets it to each auction's time)."""
    return {r: RegionBidder(r, regions, campaigns, clock=clock) for r in regions.regions}


def auctions(market: Market, fleet: dict[str, RegionBidder], clock: Clock, *, n: int, start: float,
             gap_s: float, seed: int = 7, rates: dict[str, float] | None = None) -> list[AuctionRecord]:
    """``n`` auctions ``gap_s`` apart from ``start`` (epoch seconds), each region's opportunity
    bid by its region's bidder and resolved by the market as the exchange would (first bid)."""
    rng = random.Random(seed)
    names = list(fleet)
    records = []
    for i in range(n):
        t = i * gap_s
        clock.t = start + t
        region = rng.choice(names)
        opp = market.opportunity(rng, region)
        rec = AuctionRecord(opp=opp, t=t, source_region=region)
        a = fleet[region].bid(msgspec.json.encode(opp.to_openrtb()), version="2.6")
        rec.status = a.status
        if a.status == 200:
            resp = msgspec.json.decode(a.body)
            bid = resp["seatbid"][0]["bid"][0]
            rec.bid_price = float(bid["price"]) * (rates or {}).get(resp.get("cur") or "USD", 1.0)
            rec.campaign_id = bid.get("cid")
            rec.won, rec.price = resolve(rec.bid_price, opp.competing, opp.floor, opp.at)
        records.append(rec)
    return records
