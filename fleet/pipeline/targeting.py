"""Stage 3, targeting: from an impression's facts to the eligible campaigns, via an inverted index.

Every targeting dimension keeps, for each value, the set of campaigns that name it, plus the set
of campaigns that do not constrain that dimension at all; sets are Python ints used as bitsets.
A lookup is one AND per dimension over ints of N bits (a few machine words per 64 campaigns,
done in C), so its cost grows with N/64 rather than with N Python-level checks.

Campaigns are indexed in order of their maximum bid, highest first, so the lowest set bits are
the most valuable matches: the bid path walks matches from the bottom and stops after a few
dozen that pass the per-creative checks (blocks, durations, caps). That is candidate retrieval;
pricing then ranks the retrieved few, as large DSPs do, instead of pricing thousands.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb.inventory import Inventory, inventory
from fleet.openrtb.model import BidRequest, Imp
from fleet.pipeline.creative_fit import SlotRules
from fleet.pipeline.enrichment import UserContext


def _bits(indices: list[int]) -> int:
    out = 0
    for i in indices:
        out |= 1 << i
    return out


_WINDOW = 512
_WINDOW_MASK = (1 << _WINDOW) - 1


class _Dimension:
    """value -> bitset of campaigns that name the value; ``free`` = campaigns that don't care."""

    __slots__ = ("by_value", "free")

    def __init__(self) -> None:
        self.by_value: dict = defaultdict(int)
        self.free = 0

    def add(self, idx: int, values) -> None:
        if not values:
            self.free |= 1 << idx
        for v in values:
            self.by_value[v] |= 1 << idx

    def match(self, value) -> int:
        return self.free | self.by_value.get(value, 0)

    def match_any(self, values) -> int:
        out = self.free
        get = self.by_value.get
        for v in values:
            out |= get(v, 0)
        return out


@dataclass(frozen=True, slots=True)
class ImpFacts:
    """What targeting needs to know about one impression (computed once per request)."""

    country: str | None
    device_type: int | None
    os: str | None
    domain: str | None
    publisher: str | None
    formats: tuple[str, ...]
    banner_sizes: tuple[tuple[int, int], ...]  # only for banner-only impressions
    deal_ids: tuple[str, ...]
    private_auction: bool
    segments: tuple[str, ...]  # empty when privacy forbids user-level targeting
    when: dt.datetime


def imp_facts(req: BidRequest, imp: Imp, inv: Inventory, segments: tuple[str, ...],
              when: dt.datetime) -> ImpFacts:
    """The impression's facts: the request's publisher and domain (``inv``), its device and
    geography, the impression's formats and deals, the user's ``segments``, the time."""
    dev = req.device
    pmp = imp.pmp
    formats = imp.formats()
    return ImpFacts(
        country=dev.geo.country if dev is not None and dev.geo is not None else None,
        device_type=dev.devicetype if dev is not None else None,
        os=dev.os if dev is not None else None,
        domain=inv.domain,
        publisher=inv.publisher,
        formats=formats,
        banner_sizes=tuple(imp.banner.sizes()) if formats == ("banner",) else (),
        deal_ids=tuple(d.id for d in pmp.deals) if pmp is not None else (),
        private_auction=bool(pmp is not None and pmp.private_auction == 1),
        segments=segments,
        when=when,
    )


def deal_terms(c: Campaign, deals: dict, floor: float, at: int, seat: str,
               to_fleet) -> tuple[str | None, float, int] | None:
    """What ``c`` bids on for an impression: (deal id, floor in the fleet currency, auction
    type). An open campaign takes the imp's ``floor`` and ``at``; a deal campaign its deal's own
    (section 3.2.12), or None when the impression offers it no deal open to our ``seat``.
    ``deals``: the impression's deals by id; ``to_fleet(amount, currency)``: the conversion."""
    if not c.targeting.deals:
        return None, floor, at
    deal = next((deals[d] for d in c.targeting.deals if d in deals), None)
    if deal is None or (deal.wseat and seat not in deal.wseat):
        return None
    deal_floor = to_fleet(deal.bidfloor, deal.bidfloorcur)
    if deal_floor is None:
        return None
    return deal.id, deal_floor, deal.at or at


def eligible(index: "CampaignIndex", req: BidRequest, imp: Imp, user: UserContext,
             when: dt.datetime) -> list[tuple[Campaign, Creative]]:
    """Every campaign (with its first fitting creative) targeting admits for ``imp``: the bid
    path's targeting without its candidate cap, frequency caps or deadline, for the simulator's
    oracle and for training data."""
    rules = SlotRules(imp, req)
    facts = imp_facts(req, imp, inventory(req), user.segments, when)
    return [(c, cr) for c in index.iter_matches(index.match(facts)) if (cr := rules.first_fit(c)) is not None]


@dataclass(slots=True)
class Candidate:
    campaign: Campaign
    creative: Creative
    deal_id: str | None = None
    ext: dict = field(default_factory=dict)


class CampaignIndex:
    """Inverted index over the catalog; build once per catalog version, query per impression."""

    def __init__(self, campaigns: list[Campaign], today: dt.date | None = None):
        today = today or dt.datetime.now(dt.timezone.utc).date()
        live = [c for c in campaigns if c.in_flight(today)]
        self.campaigns = sorted(live, key=lambda c: (-c.strategy.max_bid, c.id))
        self.country = _Dimension()
        self.device = _Dimension()
        self.os = _Dimension()
        self.format = _Dimension()
        self.domain = _Dimension()
        self.hour = _Dimension()
        self.day = _Dimension()
        self.segment = _Dimension()
        self.deal = _Dimension()
        self.banner_size = _Dimension()  # applied to banner-only impressions with sizes
        self.deny_domain: dict[str, int] = defaultdict(int)
        self.deny_publisher: dict[str, int] = defaultdict(int)
        self.open_market = 0  # campaigns allowed outside deals
        for i, c in enumerate(self.campaigns):
            t = c.targeting
            self.country.add(i, [x.upper() for x in t.countries])
            self.device.add(i, t.device_types)
            self.os.add(i, [x.lower() for x in t.os])
            self.format.add(i, t.formats or sorted({cr.format for cr in c.creatives}))
            self.domain.add(i, [x.lower() for x in t.domains])
            self.hour.add(i, t.hours_utc)
            self.day.add(i, t.days_utc)
            self.segment.add(i, t.segments)
            self.deal.add(i, t.deals)
            sizes = {(cr.w, cr.h) for cr in c.creatives if cr.format == "banner"}
            if sizes:
                for size in sizes:
                    self.banner_size.by_value[size] |= 1 << i
            else:
                self.banner_size.free |= 1 << i
            for d in t.domains_deny:
                self.deny_domain[d.lower()] |= 1 << i
            for p in t.publishers_deny:
                self.deny_publisher[p] |= 1 << i
            if not t.deals:
                self.open_market |= 1 << i
        self.all = (1 << len(self.campaigns)) - 1

    def __len__(self) -> int:
        return len(self.campaigns)

    def match(self, f: ImpFacts) -> int:
        """Bitset of campaigns whose targeting admits the impression."""
        m = self.all
        m &= self.country.match(f.country.upper() if f.country else None)
        if not m:
            return 0
        m &= self.device.match(f.device_type)
        m &= self.os.match(f.os.lower() if f.os else None)
        m &= self.format.match_any(f.formats)
        m &= self.domain.match(f.domain)
        m &= self.hour.match(f.when.hour)
        m &= self.day.match(f.when.weekday())
        m &= self.segment.match_any(f.segments)
        if f.banner_sizes:
            m &= self.banner_size.match_any(f.banner_sizes)
        if not m:
            return 0
        if f.domain is not None:
            m &= ~self.deny_domain.get(f.domain, 0)
        if f.publisher is not None:
            m &= ~self.deny_publisher.get(f.publisher, 0)
        # Deal campaigns bid only into their deals; open campaigns stay out of private auctions.
        deal_bits = 0
        for d in f.deal_ids:
            deal_bits |= self.deal.by_value.get(d, 0)
        market = deal_bits if f.private_auction else (deal_bits | self.open_market)
        return m & market

    def iter_matches(self, bits: int):
        """Yield campaigns of a bitset, lowest index (highest max bid) first.

        Works on 512-bit windows: isolating the lowest bit of a small int is far cheaper than of
        a 10,000-bit one, and callers usually stop after ``max_candidates`` (16).
        """
        campaigns = self.campaigns
        base = 0
        while bits:
            w = bits & _WINDOW_MASK
            while w:
                low = w & -w
                yield campaigns[base + low.bit_length() - 1]
                w ^= low
            bits >>= _WINDOW
            base += _WINDOW


def matches_linear(c: Campaign, f: ImpFacts) -> bool:
    """The targeting rules as a plain predicate: the index's specification and its oracle."""
    t = c.targeting
    country = f.country.upper() if f.country else None
    if t.countries and country not in {x.upper() for x in t.countries}:
        return False
    if t.device_types and f.device_type not in t.device_types:
        return False
    if t.os and (f.os.lower() if f.os else None) not in {x.lower() for x in t.os}:
        return False
    formats = t.formats or {cr.format for cr in c.creatives}
    if not set(formats) & set(f.formats):
        return False
    if t.domains and f.domain not in {d.lower() for d in t.domains}:
        return False
    if t.hours_utc and f.when.hour not in t.hours_utc:
        return False
    if t.days_utc and f.when.weekday() not in t.days_utc:
        return False
    if t.segments and not set(t.segments) & set(f.segments):
        return False
    if f.banner_sizes:
        sizes = {(cr.w, cr.h) for cr in c.creatives if cr.format == "banner"}
        if sizes and not sizes & set(f.banner_sizes):
            return False
    if f.domain is not None and f.domain in {d.lower() for d in t.domains_deny}:
        return False
    if f.publisher is not None and f.publisher in t.publishers_deny:
        return False
    if t.deals:
        return bool(set(t.deals) & set(f.deal_ids))
    return not f.private_auction
