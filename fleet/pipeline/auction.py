"""Stage 7, the bidder's own auction: one bid per impression, floors and deals enforced.

Deal bids take precedence over open-market bids (that is what a deal buys), then price decides;
each campaign wins at most one impression of a request so an advertiser never bids against
itself on the same page. A demand partner's valid bid (stage 6, ``fleet.pipeline.fanout``) is
an offer like ours, under the same rules: its ``partner`` is set and it has no campaign of ours;
one partner campaign (its ``cid``) wins at most one impression too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.campaigns.model import Campaign, Creative

if TYPE_CHECKING:
    from fleet.partners.validate import PartnerBid


@dataclass(slots=True)
class Offer:
    imp_id: str
    campaign: Campaign | None  # None: a partner's bid
    creative: Creative | None
    price: float  # CPM in the fleet currency
    value: float
    deal_id: str | None
    source: str
    partner: PartnerBid | None = None

    @property
    def key(self) -> str:
        """Who may win only once per request: our campaign, or the partner's."""
        return self.partner.key if self.partner is not None else self.campaign.id


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
        if o.imp_id in winners or o.key in used:
            continue
        winners[o.imp_id] = o
        used.add(o.key)
    return winners
