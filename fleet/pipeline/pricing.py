"""Stage 5, pricing: what one impression is worth to a campaign, and what to bid for it.

``rule_price`` is the fallback that stays when the model arrives: the campaign's base CPM,
made conservative when user data is missing, shaded in first-price auctions, capped by the
campaign's max bid. It costs microseconds, so it is what a late or failed model call falls to.
All prices are CPM in the fleet currency.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.campaigns.catalog import Campaign

CONTEXTUAL_MULTIPLIER = 0.8  # bid less when we know less (no user-level data)


@dataclass(frozen=True, slots=True)
class Price:
    value: float  # what the impression is worth to us (CPM)
    bid: float  # what we offer (CPM), after shading and the cap
    source: str  # "rule" or "model:<version>"


def rule_price(c: Campaign, *, first_price: bool, shade: float, contextual_only: bool) -> Price:
    value = c.strategy.base_cpm * (CONTEXTUAL_MULTIPLIER if contextual_only else 1.0)
    bid = value * shade if first_price else value
    return Price(value=value, bid=min(bid, c.strategy.max_bid), source="rule")


def meet_floor(price: Price, floor: float, max_bid: float) -> float | None:
    """The bid to send against a floor, or None when the campaign cannot defend the floor.

    A bid below its value but under the floor is lifted to the floor when the value (and the
    campaign's cap) still cover it: paying the floor is still worth it.
    """
    if price.bid >= floor:
        return price.bid
    if min(price.value, max_bid) >= floor:
        return floor
    return None
