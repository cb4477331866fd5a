"""Stage 7, the bidder's own auction: one bid per impression, floors and deals enforced.

Deal bids take precedence over open-market bids (that is what a deal buys), then price decides;
each campaign wins at most one impression of a request so an advertiser never bids against
itself on the same page.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.campaigns.model import Campaign, Creative


@dataclass(slots=True)
class Offer:
    imp_id: str
    campaign: Campaign
    creative: Creative
    price: float  # CPM in the fleet currency
    value: float
    deal_id: str | None
    source: str


def choose(offers_by_imp: dict[str, list[Offer]]) -> dict[str, Offer]:
    """Winners per impression, greedy from the best offer across the whole request."""
    ranked = sorted(
        (o for offers in offers_by_imp.values() for o in offers),
        key=lambda o: (o.deal_id is not None, o.price),
        reverse=True,
    )
    winners: dict[str, Offer] = {}
    used: set[str] = set()
    for o in ranked:
        if o.imp_id in winners or o.campaign.id in used:
            continue
        winners[o.imp_id] = o
        used.add(o.campaign.id)
    return winners
