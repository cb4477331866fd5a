"""The oracle: which campaigns may buy an impression, what it is truly worth, and the best use of
a run's opportunities, written from the rules and the market's truth, not from the fleet's code.

Eligibility is the catalog's targeting applied to the OpenRTB request the exchange sent, for
every imp, at the time the auction happened (the run's start plus ``AuctionRecord.t``): flight dates, country,
device type, OS, format, banner sizes, domain allow and deny lists, publisher deny list, hour and
weekday (UTC), user segments, deals (a deal campaign only into its deals, open to our seat; an
open campaign never into a private auction), and a creative that fits the imp (``fleet.sim.fit``:
size, duration, mimes, VAST version, native assets, https, blocked attributes, bcat, badv, bapp).
These are the rules the fleet's ``fleet.pipeline.targeting.matches_linear`` and ``creative_fit``
state; ``tests/test_oracle.py`` holds the two to agreement on synthetic campaigns and requests,
so a change to either shows. Whether the user's segments may be used is the market's truth
(``Opportunity.user_level_allowed``: not under COPPA or LMT, and consent where GDPR applies),
not a reading of the consent string: what the user agreed to, which the fleet must read right.
The fleet's admission policy (its own block lists, crawler and data-centre checks) is left out:
it is the operator's choice, not a campaign's rule, and the simulated traffic never trips it.

Value of an impression to a campaign, in USD, is the true click probability (``Market.ctr``)
times the value of a click (``click_value``). An impression's truth is the market's for the
creative's format and, for a banner, its size: for the simulator's one-imp requests exactly the
opportunity's.

The allocation (``allocate``) takes options best value per dollar first, each paying just above
the competition (or the floor), within each campaign's budget for the run and its frequency cap
per user (at the auctions' own times), and optionally within a pool: the fleet's own spend.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, replace

from fleet.sim.catalog import Campaign, Creative
from fleet.sim.fit import banner_sizes, fits
from fleet.sim.market import Market, Opportunity

# A CPM campaign's value of a click: what its base CPM pays at this click rate. The advertiser's
# reference, stated by the simulator (the market's truth is the campaign's own click rate).
REFERENCE_CTR = 0.005
FORMATS = ("banner", "video", "native", "audio")


def click_value(market: Market, opp: Opportunity, c: Campaign) -> float:
    """What a click is worth to ``c``, USD: its target CPC; its target CPA times the true
    conversion rate; for a CPM campaign, its base CPM's worth at ``REFERENCE_CTR``."""
    s = c.strategy
    if s.goal == "cpc" and s.target_cpc:
        return s.target_cpc
    if s.goal == "cpa" and s.target_cpa:
        return s.target_cpa * market.cvr(opp, c)
    return s.base_cpm / (1000.0 * REFERENCE_CTR)


def impression_value(market: Market, opp: Opportunity, c: Campaign) -> float:
    """Expected value of one impression to ``c``, USD."""
    return market.ctr(opp, c) * click_value(market, opp, c)


# -- what the request says -----------------------------------------------------------------


@dataclass(frozen=True)
class RequestFacts:
    """The request-level facts targeting reads (once per request)."""

    publisher: str | None
    domain: str | None
    country: str | None
    device_type: int | None
    os: str | None
    segments: frozenset[str]  # empty when privacy forbids user-level data
    bcat: frozenset[str]
    badv: frozenset[str]
    bapp: frozenset[str]


def _get(d: dict | None, *path):
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def request_facts(req: dict, personal: bool) -> RequestFacts:
    """Publisher: the app's or site's ``publisher.id``, else its own ``id`` (a request naming
    both is an app's). Domain: an app's bundle, else its domain; the site's domain; else the
    publisher's domain; lower case. Segments: the request's, where ``personal`` (the user's
    data may be used)."""
    site, app = req.get("site"), req.get("app")
    inv = app if app is not None else site
    publisher = domain = None
    if inv is not None:
        publisher = _get(inv, "publisher", "id") or inv.get("id")
        domain = (app.get("bundle") or app.get("domain")) if app is not None else site.get("domain")
        domain = domain or _get(inv, "publisher", "domain")
    segments: set[str] = set()
    if personal:
        for data in _get(req, "user", "data") or ():
            segments.update(s["id"] for s in data.get("segment") or () if s.get("id"))
    return RequestFacts(
        publisher=publisher, domain=domain.lower() if domain else None,
        country=_get(req, "device", "geo", "country"), device_type=_get(req, "device", "devicetype"),
        os=_get(req, "device", "os"), segments=frozenset(segments),
        bcat=frozenset(req.get("bcat") or ()), badv=frozenset(req.get("badv") or ()),
        bapp=frozenset(req.get("bapp") or ()))


def imp_formats(imp: dict) -> tuple[str, ...]:
    return tuple(f for f in FORMATS if imp.get(f) is not None)


def imp_deals(imp: dict) -> list[dict]:
    return list(_get(imp, "pmp", "deals") or ())


# -- the rules -----------------------------------------------------------------------------


def targets(c: Campaign, r: RequestFacts, imp: dict, when: dt.datetime) -> bool:
    """The campaign's targeting admits ``imp`` of a request with facts ``r`` at ``when``
    (everything but the creative's fit and the deal's seat)."""
    t = c.targeting
    if t.countries and (r.country or "").upper() not in {x.upper() for x in t.countries}:
        return False
    if t.device_types and r.device_type not in t.device_types:
        return False
    if t.os and (r.os or "").lower() not in {x.lower() for x in t.os}:
        return False
    formats = imp_formats(imp)
    wanted = set(t.formats) if t.formats else {cr.format for cr in c.creatives}
    if not wanted & set(formats):
        return False
    if t.domains and r.domain not in {d.lower() for d in t.domains}:
        return False
    if t.hours_utc and when.hour not in t.hours_utc:
        return False
    if t.days_utc and when.weekday() not in t.days_utc:
        return False
    if t.segments and not r.segments & set(t.segments):
        return False
    if formats == ("banner",):  # a banner-only imp with sizes wants a campaign with one of them
        offered = banner_sizes(imp)
        ours = {(cr.w, cr.h) for cr in c.creatives if cr.format == "banner"}
        if offered and ours and not ours & offered:
            return False
    if r.domain is not None and r.domain in {d.lower() for d in t.domains_deny}:
        return False
    if r.publisher is not None and r.publisher in t.publishers_deny:
        return False
    deal_ids = {d.get("id") for d in imp_deals(imp)}
    if t.deals:
        return bool(deal_ids & set(t.deals))
    return _get(imp, "pmp", "private_auction") != 1


def open_deal(c: Campaign, imp: dict, seat: str | None) -> dict | None:
    """The imp's deal this campaign may bid into for ``seat`` (None: any seat), or None."""
    for d in imp_deals(imp):
        if d.get("id") in c.targeting.deals and (seat is None or not d.get("wseat") or seat in d["wseat"]):
            return d
    return None


def fitting(c: Campaign, r: RequestFacts, imp: dict) -> list[Creative]:
    return [cr for cr in c.creatives if fits(cr, c, imp, r.bcat, r.badv, r.bapp)]


def eligible(campaigns: list[Campaign], req: dict, when: dt.datetime, personal: bool, seat: str | None = None):
    """Every (imp, campaign, fitting creatives, deal or None) the rules admit, every imp;
    ``personal``: the user's segments may be used."""
    r = request_facts(req, personal)
    day = when.date()
    for imp in req.get("imp") or ():
        for c in campaigns:
            if not c.in_flight(day) or not targets(c, r, imp, when):
                continue
            deal = None
            if c.targeting.deals:
                deal = open_deal(c, imp, seat)
                if deal is None:
                    continue
            crs = fitting(c, r, imp)
            if crs:
                yield imp, c, crs, deal


# -- the best use of the run -----------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One auction the oracle could win: for which campaign, at what cost, worth what."""

    record: int
    campaign: str
    user: str
    t: float  # the auction's time, epoch seconds
    cost: float  # USD
    value: float  # USD
    ctr: float


def _truth(opp: Opportunity, cr: Creative) -> Opportunity:
    fmt, size = cr.format, ((cr.w, cr.h) if cr.format == "banner" else opp.size)
    return opp if (fmt, size) == (opp.fmt, opp.size) else replace(opp, fmt=fmt, size=size)


def assess(market: Market, campaigns: list[Campaign], index: int, opp: Opportunity, at: float,
           seat: str | None = None) -> tuple[set[str], Option | None]:
    """(campaigns eligible on any imp of the auction at ``at``, epoch seconds; the best option:
    most surplus over the price to beat)."""
    when = dt.datetime.fromtimestamp(at, dt.timezone.utc)
    ids: set[str] = set()
    best = None
    for imp, c, crs, deal in eligible(campaigns, opp.to_openrtb(), when, opp.user_level_allowed, seat):
        ids.add(c.id)
        floor = opp.floor
        if deal is not None and (deal.get("bidfloorcur") or "USD") == "USD":
            floor = max(floor, float(deal.get("bidfloor") or 0.0))
        cost = (max(opp.competing, floor) + 0.01) / 1000.0
        truth = max((_truth(opp, cr) for cr in crs), key=lambda o: impression_value(market, o, c))
        v = impression_value(market, truth, c)
        if v > cost and (best is None or v - cost > best.value - best.cost):
            best = Option(index, c.id, opp.user.id, at, cost, v, market.ctr(truth, c))
    return ids, best


def _cap_allows(times: list[float], t: float, count: int, window_s: int) -> bool:
    """``t`` joins ``times`` without any window of ``window_s`` holding more than ``count``."""
    new = sorted([*times, t])
    return all(sum(1 for x in new if s <= x < s + window_s) <= count for s in new if s <= t < s + window_s)


def allocate(options: list[Option], budgets: dict[str, float], caps: dict[str, tuple[int, int]],
             pool: float | None = None) -> dict[int, Option]:
    """Wins, by record: best value per dollar first, within budgets, caps and the ``pool``."""
    left = dict(budgets)
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    wins: dict[int, Option] = {}
    for o in sorted(options, key=lambda o: (-o.value / o.cost, o.record)):
        if left.get(o.campaign, 0.0) < o.cost or (pool is not None and pool < o.cost):
            continue
        cap = caps.get(o.campaign)
        if cap is not None and not _cap_allows(seen[o.campaign, o.user], o.t, *cap):
            continue
        left[o.campaign] -= o.cost
        if pool is not None:
            pool -= o.cost
        seen[o.campaign, o.user].append(o.t)
        wins[o.record] = o
    return wins
