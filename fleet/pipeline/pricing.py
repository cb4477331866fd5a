"""Stage 5, pricing: what one impression is worth to a campaign, and what to bid for it.

``offers`` is the stage: each candidate's price, lifted to its floor and capped (``meet_floor``).
``model_prices_many`` turns predicted click probabilities into values by the campaign's goal (CPC,
CPA, CPM) and shades first-price bids against a win-rate model. ``rule_price`` is the fallback: the campaign's base CPM,
made conservative when user data is missing, shaded in first-price auctions, capped by the
campaign's max bid. It costs microseconds, so it is what a late or failed model call falls to.
All prices are CPM in the fleet currency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleet.campaigns.model import Campaign
from fleet.pipeline.auction import Offer
from fleet.pipeline.deadline import now


@dataclass(frozen=True, slots=True)
class Price:
    value: float  # what the impression is worth to us (CPM)
    bid: float  # what we offer (CPM), after shading and the cap
    source: str  # "rule" or "model:<version>"


def rule_price(c: Campaign, *, first_price: bool, shade: float, multiplier: float = 1.0) -> Price:
    """``multiplier``: the enrichment stage's (under 1 when user data is missing or barred)."""
    value = c.strategy.base_cpm * multiplier
    bid = value * shade if first_price else value
    return Price(value=value, bid=min(bid, c.strategy.max_bid), source="rule")


def meet_floor(price: Price, floor: float, max_bid: float, fixed: bool = False) -> float | None:
    """The bid to send against a floor, or None when the campaign cannot defend the floor.

    A bid below its value but under the floor is lifted to the floor when the value (and the
    campaign's cap) still cover it: paying the floor is still worth it. A fixed-price deal
    (``at: 3``, OpenRTB 2.6) is bid at its price exactly, when worth it: shading or outbidding
    it would only misstate what the deal charges.
    """
    if fixed:
        return floor if min(price.value, max_bid) >= floor else None
    if price.bid >= floor:
        return price.bid
    if min(price.value, max_bid) >= floor:
        return floor
    return None


# --- model pricing -----------------------------------------------------------------------

POP_CTR = 0.005  # population click rate: what a CPM campaign's base price assumes
CVR_PRIOR = 0.1  # conversions per click assumed for CPA goals until conversions feed back


def click_value(c: Campaign) -> float:
    """What one click is worth to the campaign, in the fleet currency."""
    s = c.strategy
    if s.goal == "cpc" and s.target_cpc:
        return s.target_cpc
    if s.goal == "cpa" and s.target_cpa:
        return s.target_cpa * CVR_PRIOR
    return s.base_cpm / (1000.0 * POP_CTR)


class WinRateModel:
    """P(win | bid) = sigmoid(slope * (ln bid - ln m)): logistic in the log of the bid.

    ``m`` is the bid that wins half the time, learned online from this region's own win and loss
    notices (one gradient step on the log-likelihood per notice) at two levels: per publisher,
    and per publisher and segment (the ad format: a publisher's video and banner markets clear
    at different prices). A price asks for the most specific level with ``min_obs`` notices
    behind it, then the publisher, then the region's shared anchor for the publisher (the cache
    shards' clearing-price level), then the population prior. See Pan et al., AdKDD 2020, "Bid
    shading by win-rate estimation and surplus maximization".
    """

    GRID = np.linspace(0.05, 1.0, 40)

    def __init__(self, median_cpm: float = 1.5, slope: float = 3.0, learning_rate: float = 0.05,
                 max_keys: int = 100_000, min_obs: int = 20):
        self.min_obs = min_obs
        self.prior = float(np.log(median_cpm))
        self.slope = slope
        self.lr = learning_rate
        self.max_keys = max_keys
        self.fitted: dict[str, tuple[float, int]] = {}  # key -> (ln m, observations)
        # ln m per publisher from the region's shared features (the cache shards' clearing
        # price levels): where a replica has no evidence of its own yet, it starts from the
        # region's rather than from the population prior.
        self.anchors: dict[str, float] = {}

    def log_m(self, key: str | None, segment: str | None = None) -> float:
        if key is None:
            return self.prior
        if segment is not None:
            entry = self.fitted.get(f"{key}|{segment}")
            if entry is not None and entry[1] >= self.min_obs:
                return entry[0]
        entry = self.fitted.get(key)
        return entry[0] if entry is not None else self.anchors.get(key, self.prior)

    def observe(self, key: str, segment: str | None, bid_cpm: float, won: bool) -> None:
        """One notice: both levels learn from it."""
        self.update(key, bid_cpm, won)
        if segment is not None:
            self.update(f"{key}|{segment}", bid_cpm, won)

    def set_anchors(self, price_levels: dict[str, float]) -> None:
        self.anchors = {k: float(np.log(v)) for k, v in price_levels.items() if v and v > 0}

    def update(self, key: str, bid_cpm: float, won: bool) -> None:
        if bid_cpm <= 0:
            return
        theta, n = self.fitted.get(key, (self.anchors.get(key, self.prior), 0))
        p = 1.0 / (1.0 + np.exp(-self.slope * (np.log(bid_cpm) - theta)))
        # d logL / d ln m = -k (y - p); the step shrinks as evidence accumulates, with a floor
        # so a publisher whose market moves is followed.
        step = max(self.lr / (1.0 + n / 100.0), 0.003)
        theta -= step * self.slope * ((1.0 if won else 0.0) - p)
        if key not in self.fitted and len(self.fitted) >= self.max_keys:
            return  # bounded: new keys wait; the prior serves them
        self.fitted[key] = (float(theta), n + 1)

    def shade(self, values: np.ndarray, key: str | None = None,
              segments: list[str | None] | None = None) -> np.ndarray:
        """The first-price bid maximising expected surplus (v - b) * W(b), per value (and per
        row's segment, when given)."""
        return self.shade_at(values, self.levels(key, segments))

    def levels(self, key: str | None, segments: list[str | None] | None = None):
        """ln m for ``shade_at``: one for the key, or a column of one per row's segment."""
        if segments is None:
            return self.log_m(key)
        return np.array([self.log_m(key, s) for s in segments])[:, None]

    def shade_at(self, values: np.ndarray, log_m) -> np.ndarray:
        """``shade`` at given levels (a number, or a column with one per row): element by
        element, so rows shaded together come out as they would alone."""
        bids = values[:, None] * self.GRID[None, :]
        win = 1.0 / (1.0 + np.exp(-self.slope * (np.log(np.maximum(bids, 1e-9)) - log_m)))
        best = np.argmax((values[:, None] - bids) * win, axis=1)
        return bids[np.arange(len(values)), best]


def click_values(ctrs: np.ndarray, campaigns: list[Campaign]) -> np.ndarray:
    """``1000 * ctr * click_value`` per row: what ``1000.0 * p * click_value(c)`` gives element by
    element (the same dtype and rounding: a Python float meets a float32 probability as float32),
    in two array operations instead of numpy scalar arithmetic per row."""
    p = np.asarray(ctrs)
    cv = [click_value(c) for c in campaigns]
    if cv and p.ndim == 1 and p.dtype in (np.float32, np.float64) and len(p) == len(cv):
        return (1000.0 * p) * np.array(cv, dtype=p.dtype)
    return np.array([1000.0 * x * v for x, v in zip(ctrs, cv)])


def score(ps: list, scorer, stats, spent: list[float] | None = None) -> list[np.ndarray | None]:
    """Click probabilities per request (``Pending``) from one call of the in-process model over
    all their rows, or None for a request priced by rule, flagged: one without candidates (no
    flag), without the version it asked for, past its pricing budget, or whose rows or call
    failed (a failing model costs a rule price, never the request). One request's failure is its
    own: a failed call of several is made again for each alone. In-process scoring costs tens of
    microseconds, most of it per call, not per row. ``spent``: filled with each request's share
    of the time (its own rows, the call's time by its share of the rows)."""
    out: list[np.ndarray | None] = [None] * len(ps)
    rows: dict[int, np.ndarray] = {}
    own: dict[int, float] = {}
    for n, p in enumerate(ps):
        if not p.paced:
            continue
        if scorer is None:
            if p.model is not None:  # the version asked for is not loaded: a rule price, flagged
                p.dl.degrade("pricing_rule_fallback")
                stats["pricing.model_missing"] += 1
        elif p.dl.over():
            p.dl.degrade("pricing_rule_fallback")
            stats["pricing.over_budget"] += 1
        else:
            t0 = now()
            try:
                rows[n] = p.rows()
            except Exception:
                p.dl.degrade("pricing_rule_fallback")
                stats["pricing.model_error"] += 1
            own[n] = now() - t0

    def call(ns: list[int]) -> bool:
        """One model call over these requests' rows: each its probabilities, and the call's time
        by its share of the rows; False when the call failed."""
        t0 = now()
        try:
            ctrs = scorer.predict(rows[ns[0]] if len(ns) == 1 else np.concatenate([rows[n] for n in ns]))
        except Exception:
            return False
        took, total, at = now() - t0, sum(len(rows[n]) for n in ns), 0
        for n in ns:
            k = len(rows[n])
            out[n], at = ctrs[at:at + k], at + k
            own[n] += took * k / total
        return True

    live = list(rows)
    if live and not call(live):
        for n in live:  # which one? each alone (a lone one is not called again): only a request
            # the model fails on falls back, and one whose budget the failed call used up
            if len(live) > 1 and ps[n].dl.over():
                ps[n].dl.degrade("pricing_rule_fallback")
                stats["pricing.over_budget"] += 1
            elif len(live) == 1 or not call([n]):
                ps[n].dl.degrade("pricing_rule_fallback")
                stats["pricing.model_error"] += 1
    if spent is not None:
        spent[:] = [own.get(n, 0.0) for n in range(len(ps))]
    return out


def price_job(p, ctrs: np.ndarray, source: str) -> tuple:
    """``model_prices_many``'s job for a request (``Pending``) and its probabilities: every
    candidate's campaign, whether its auction is first price, the request's multiplier and
    publisher, and each row's segment (its creative's format)."""
    paced = p.paced
    return (ctrs, [c[1] for c in paced], [c[5] not in (2, 3) for c in paced], p.user.multiplier, source,
            p.inv.publisher, [c[2].format for c in paced])


def model_prices_many(jobs: list[tuple], win_rate: WinRateModel) -> list[list[Price]]:
    """Value from each row's predicted click probability and its campaign's goal, shaded in
    first price, for one request or several (a job each, ``price_job``: probabilities,
    campaigns, first price or not per row, multiplier, source, publisher, segments). The
    first-price rows of all of them are shaded in one pass, with the same prices as one call
    each (shading is element by element, in float64 whatever the probabilities' dtype)."""
    values, levels, shading = [], [], []
    for n, (ctrs, campaigns, first_price, multiplier, _source, publisher, segments) in enumerate(jobs):
        v = click_values(ctrs, campaigns)
        v *= multiplier
        values.append(v)
        levels.append(win_rate.levels(publisher, segments) if any(first_price) else None)
        if levels[-1] is not None:
            shading.append(n)
    shaded = list(values)
    if len(shading) == 1:
        shaded[shading[0]] = win_rate.shade_at(values[shading[0]], levels[shading[0]])
    elif shading:
        out = win_rate.shade_at(np.concatenate([values[n] for n in shading]), np.concatenate(
            [levels[n] if isinstance(levels[n], np.ndarray) else np.full((len(values[n]), 1), levels[n])
             for n in shading]))
        at = 0
        for n in shading:
            shaded[n], at = out[at:at + len(values[n])], at + len(values[n])
    return [[Price(value=float(v), bid=float(min(s if fp else v, c.strategy.max_bid)), source=job[4])
             for v, s, fp, c in zip(values[n], shaded[n], job[2], job[1])]
            for n, job in enumerate(jobs)]


def offers(paced: list, priced: list[Price] | None, multiplier: float, shade: float) -> dict[str, list[Offer]]:
    """The offers per imp: each candidate (imp, campaign, creative, deal id, floor, auction
    type) at its model price (``priced``, in the same order) or else its rule price, lifted to
    its floor; a fixed-price deal (``at`` 3) bids the deal's price. No offer from a candidate that
    cannot defend its floor, or that would bid nothing."""
    out: dict[str, list[Offer]] = {}
    for n, (imp, c, cr, deal_id, floor, at) in enumerate(paced):
        price = priced[n] if priced is not None else rule_price(
            c, first_price=at not in (2, 3), shade=shade, multiplier=multiplier)
        bid = meet_floor(price, floor, c.strategy.max_bid, fixed=at == 3 and deal_id is not None)
        if bid is None or bid <= 0:
            continue
        out.setdefault(imp.id, []).append(Offer(imp.id, c, cr, bid, price.value, deal_id, price.source))
    return out
