"""The campaign index agrees with the plain targeting rules, and orders by value."""

from __future__ import annotations

import datetime as dt
import random

import msgspec

from fleet.campaigns.catalog import load_catalog
from fleet.campaigns.model import Campaign, Creative, Strategy, Targeting
from fleet.campaigns.synth import COUNTRIES, SEGMENTS, SIZES, synth_campaigns
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.targeting import CampaignIndex, ImpFacts, matches_linear

WHEN = dt.datetime(2026, 11, 23, 14, 30, tzinfo=dt.timezone.utc)  # a Monday afternoon


def random_facts(rng: random.Random) -> ImpFacts:
    fmt = rng.choice([("banner",), ("video",), ("native",), ("audio",), ("banner", "video")])
    return ImpFacts(
        country=rng.choice(COUNTRIES + [None]),
        device_type=rng.choice([1, 2, 4, 5, None]),
        os=rng.choice(["ios", "android", "windows", None]),
        domain=rng.choice(["news.example", "x.example", None]),
        publisher=rng.choice(["p1", "p2", None]),
        formats=fmt,
        banner_sizes=tuple(rng.sample(SIZES, 2)) if fmt == ("banner",) else (),
        deal_ids=tuple(rng.sample([f"deal-{i}" for i in range(50)], rng.randint(0, 2))),
        private_auction=rng.random() < 0.2,
        segments=tuple(rng.sample(SEGMENTS, rng.randint(0, 4))),
        when=WHEN + dt.timedelta(hours=rng.randrange(168)),
    )


def test_index_equals_linear_scan_on_a_large_catalog():
    campaigns = synth_campaigns(3000, seed=3)
    index = CampaignIndex(campaigns, today=WHEN.date())
    rng = random.Random(9)
    total = 0
    for _ in range(300):
        f = random_facts(rng)
        got = [c.id for c in index.iter_matches(index.match(f))]
        want = [c.id for c in index.campaigns if matches_linear(c, f)]
        assert got == want
        total += len(got)
    assert total > 1000  # the comparison is not vacuous


def test_matches_come_highest_max_bid_first():
    index = CampaignIndex(synth_campaigns(500, seed=4), today=WHEN.date())
    f = random_facts(random.Random(1))
    bids = [c.strategy.max_bid for c in index.iter_matches(index.all)]
    assert bids == sorted(bids, reverse=True)
    assert len(bids) == 500
    assert index.match(f) & ~index.all == 0


def _banner_campaign(cid, **targeting):
    return Campaign(id=cid, advertiser="a", adomain=["a.example"], budget_daily=1000,
                    creatives=[Creative(id=f"cr-{cid}", format="banner", w=300, h=250)],
                    strategy=Strategy(base_cpm=1.0, max_bid=2.0), targeting=Targeting(**targeting))


def test_flight_dates_and_dayparting_and_deals():
    ended = msgspec.structs.replace(_banner_campaign("ended"), flight_end=dt.date(2020, 1, 1))
    future = msgspec.structs.replace(_banner_campaign("future"), flight_start=dt.date(2099, 1, 1))
    night = _banner_campaign("night", hours_utc=[0, 1, 2])
    monday = _banner_campaign("monday", days_utc=[0])
    deal = _banner_campaign("deal", deals=["d1"])
    index = CampaignIndex([ended, future, night, monday, deal], today=WHEN.date())
    assert {c.id for c in index.campaigns} == {"night", "monday", "deal"}

    def ids(when, deals=(), private=False):
        f = ImpFacts("USA", 2, "ios", None, None, ("banner",), ((300, 250),), deals, private, (), when)
        return {c.id for c in index.iter_matches(index.match(f))}

    assert ids(WHEN) == {"monday"}
    assert ids(WHEN.replace(hour=1)) == {"monday", "night"}
    assert ids(WHEN + dt.timedelta(days=1)) == set()
    assert ids(WHEN, deals=("d1",)) == {"monday", "deal"}
    assert ids(WHEN, deals=("d1",), private=True) == {"deal"}


def test_bidder_dayparting_follows_its_clock(regions):
    catalog = load_catalog(regions.defaults.catalog)
    night = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc).timestamp()
    noon = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    req = {"imp": [{"id": "1", "banner": {"w": 160, "h": 600}}], "device": {"geo": {"country": "USA"}}}
    at_night = RegionBidder("us-east", regions, catalog, clock=lambda: night)
    at_noon = RegionBidder("us-east", regions, catalog, clock=lambda: noon)
    a = at_night.bid(msgspec.json.encode({"id": "n", **req}))
    b = at_noon.bid(msgspec.json.encode({"id": "d", **req}))
    assert a.status == 200 and b"c-daypart-night" in a.body
    assert b.status == 204
