"""The simulator's oracle: independent of the fleet's code, in agreement with its rules, judging
each auction at its own time, and able to catch a fleet whose targeting is broken."""

from __future__ import annotations

import ast
import datetime as dt
import random
from pathlib import Path

import msgspec
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.campaigns.model import Campaign, Creative, Strategy, Targeting
from fleet.campaigns.synth import COUNTRIES, SEGMENTS, SIZES, synth_campaigns
from fleet.config import REPO_ROOT
from fleet.harness.auctions import Clock, auctions, bidders
from fleet.openrtb.inventory import inventory
from fleet.openrtb.model import BidRequest
from fleet.pipeline.creative_fit import SlotRules
from fleet.pipeline.enrichment import enrich, privacy_block
from fleet.pipeline.targeting import imp_facts, matches_linear
from fleet.sim import oracle
from fleet.sim.catalog import campaign as sim_campaign
from fleet.sim.catalog import read_catalog
from fleet.sim.exchange import AuctionRecord
from fleet.sim.market import Market
from fleet.sim.scorecard import score

WHEN = dt.datetime(2026, 11, 23, 14, 30, tzinfo=dt.timezone.utc)  # a Monday afternoon
FORBIDDEN = ("fleet.pipeline", "fleet.serve", "fleet.region", "fleet.harness")


def test_sim_imports_nothing_of_the_fleets_bid_path():
    """``fleet/sim`` is the outside world: a bug in the bid path must not be shared by the oracle."""
    found = []
    for path in sorted((REPO_ROOT / "fleet" / "sim").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(path.name, n) for n in names if n.startswith(FORBIDDEN)]
    assert found == []


def test_the_import_check_would_see_one(tmp_path: Path):
    src = "def f():\n    from fleet.pipeline.targeting import eligible\n"
    mods = [n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    assert mods == ["fleet.pipeline.targeting"] and mods[0].startswith(FORBIDDEN)


# -- agreement with the fleet's plain rules --------------------------------------------------

EXTRA = [  # what the synthetic catalog does not exercise: allow and deny lists, days, blocks
    Campaign(id="x-domains", advertiser="a", adomain=["a.example"], budget_daily=1, cat=["IAB1"],
             creatives=[Creative(id="x1", format="banner", w=300, h=250, attr=[3])],
             targeting=Targeting(domains=["News.example", "com.example.reader"], days_utc=[0, 1])),
    Campaign(id="x-deny", advertiser="b", adomain=["b.example"], budget_daily=1, cat=["IAB2"],
             creatives=[Creative(id="x2", format="video", duration_s=30, mime="video/webm", cat=["IAB7"]),
                        Creative(id="x3", format="banner", w=320, h=50, bundle="com.example.game")],
             targeting=Targeting(domains_deny=["X.example"], publishers_deny=["p2"], formats=["video", "banner"])),
    Campaign(id="x-audio", advertiser="c", adomain=["c.example"], budget_daily=1,
             creatives=[Creative(id="x4", format="audio", duration_s=15, mime="audio/mpeg"),
                        Creative(id="x7", format="video", duration_s=30, attr=[16])],
             targeting=Targeting(os=["IOS"], countries=["usa"], device_types=[1, 4])),
    Campaign(id="x-interstitial", advertiser="e", adomain=["e.example"], budget_daily=1,
             creatives=[Creative(id="x8", format="banner", w=320, h=480), Creative(id="x9", format="banner", w=1, h=1)]),
    Campaign(id="x-native", advertiser="d", adomain=["d.example"], budget_daily=1,
             creatives=[Creative(id="x5", format="native", attr=[1], title="Hello"),
                        Creative(id="x6", format="native", w=1200, h=627, title="A longer title",
                                 click_url="http://d.example/")],
             targeting=Targeting(deals=["deal-1", "deal-2"], segments=["seg-1", "seg-2"])),
]


NATIVE_REQUESTS = [
    "{}", "not json",
    '{"ver":"1.2","assets":[{"id":1,"required":1,"title":{"len":90}},{"id":2,"required":1,"img":{"type":3,"w":1200,"h":627}}]}',
    '{"native":{"ver":"1.1","assets":[{"id":1,"required":1,"title":{"len":5}},{"id":2,"data":{"type":1,"len":20}}]}}',
    '{"assets":[{"id":1,"img":{"type":1,"wmin":50,"hmin":50}},{"id":2,"required":1,"data":{"type":1}}]}',
    '{"assets":[{"id":1,"img":{"wmin":600,"hmin":300}},{"id":1,"title":{}}]}',
]


def random_request(rng: random.Random) -> dict:
    imps = []
    for i in range(rng.randint(1, 3)):
        imp: dict = {"id": str(i + 1)}
        for fmt in rng.sample(["banner", "video", "native", "audio"], rng.choice([1, 1, 1, 2])):
            if fmt == "banner":
                sizes = rng.sample(SIZES, rng.randint(0, 2))
                imp["banner"] = {"format": [{"w": w, "h": h} for w, h in sizes],
                                 "battr": rng.sample([1, 3, 5], rng.randint(0, 1))}
                if rng.random() < 0.3:
                    imp["banner"].update(w=300, h=250)
            elif fmt in ("video", "audio"):
                imp[fmt] = {"mimes": rng.sample(["video/mp4", "video/webm", "audio/mpeg"], rng.randint(0, 2)),
                            "minduration": rng.choice([None, 5, 20]), "maxduration": rng.choice([None, 15, 30]),
                            "battr": rng.sample([1, 3], rng.randint(0, 1))}
            else:
                imp["native"] = {"request": rng.choice(NATIVE_REQUESTS), "battr": rng.sample([1, 2], rng.randint(0, 1))}
        if rng.random() < 0.2:
            imp["secure"] = 1
        if rng.random() < 0.2:
            imp["instl"] = 1
        if "video" in imp and rng.random() < 0.5:
            imp["video"].update(protocols=rng.sample([1, 2, 7, 9], rng.randint(1, 2)), skip=rng.choice([0, 1]),
                                rqddurs=rng.sample([15, 30], rng.randint(0, 1)), poddur=rng.choice([None, 20]))
        if rng.random() < 0.3:
            imp["pmp"] = {"private_auction": rng.randint(0, 1),
                          "deals": [{"id": f"deal-{rng.randrange(5)}"} for _ in range(rng.randint(1, 2))]}
        imps.append(imp)
    req: dict = {"id": "r", "imp": imps,
                 "device": {"devicetype": rng.choice([1, 2, 4, 5, None]),
                            "os": rng.choice(["ios", "Android", "windows", None]),
                            "lmt": rng.choice([0, 0, 0, 1]), "dnt": rng.choice([0, 0, 0, 1]),
                            "geo": {"country": rng.choice(COUNTRIES + ["usa", None])}},
                 "user": {"id": "u1", "data": [
                     {"segment": [{"id": s} for s in rng.sample(SEGMENTS[:8], rng.randint(0, 3))]}]},
                 "regs": {"coppa": rng.choice([0, 0, 0, 1]), "gdpr": rng.choice([None, 0, 1])},
                 "bcat": rng.sample(["IAB1", "IAB7", "IAB20"], rng.randint(0, 1)),
                 "badv": rng.sample(["a.example", "b.example"], rng.randint(0, 1)),
                 "bapp": rng.sample(["com.example.game"], rng.randint(0, 1))}
    if rng.random() < 0.5:
        req["user"]["consent"] = "CPXx"
    pub = {"id": rng.choice(["p1", "p2"])} if rng.random() < 0.7 else None
    if rng.random() < 0.5:
        req["site"] = {"id": "s1", "domain": rng.choice(["news.example", "X.example", "y.example", None]),
                       "publisher": pub}
    elif rng.random() < 0.8:
        req["app"] = {"id": "a1", "bundle": rng.choice(["com.example.reader", None]),
                      "domain": rng.choice(["x.example", None]), "publisher": pub}
    return req


def _pairs():
    fleet = synth_campaigns(400, seed=5) + EXTRA + load_catalog(REPO_ROOT / "fleet/campaigns/catalog.yaml")
    ours = {c.id: c for c in read_catalog("fleet/campaigns/catalog.yaml", root=REPO_ROOT)}
    for c in fleet:  # the file's campaigns as the simulator reads the file; the others via their data
        yield c, ours.get(c.id) or sim_campaign(msgspec.to_builtins(c))


def test_oracle_rules_agree_with_the_fleets_plain_rules():
    """Targeting (``matches_linear``) and creative fit (``SlotRules``), every imp, on synthetic
    campaigns and requests, and on the committed catalog read from its file."""
    pairs = list(_pairs())
    rng = random.Random(17)
    admitted = fitted = 0
    for _ in range(300):
        raw = random_request(rng)
        req = msgspec.convert(raw, BidRequest)
        when = WHEN + dt.timedelta(hours=rng.randrange(168))
        personal = privacy_block(req) == ""  # the privacy decision given: the rules after it are compared
        facts = oracle.request_facts(raw, personal)
        segments = enrich(req).segments
        for imp, raw_imp in zip(req.imp, raw["imp"]):
            f = imp_facts(req, imp, inventory(req), segments, when)
            rules = SlotRules(imp, req)
            for fc, sc in pairs:
                want = matches_linear(fc, f)
                assert oracle.targets(sc, facts, raw_imp, when) == want, (fc.id, raw)
                fit = [cr.id for cr in fc.creatives if rules.fits(cr, fc)]
                assert [cr.id for cr in oracle.fitting(sc, facts, raw_imp)] == fit, (fc.id, raw)
                admitted += want
                fitted += bool(want and fit)
    assert admitted > 2000 and fitted > 500  # not vacuous


def test_the_simulators_catalog_reader_keeps_what_the_file_says():
    ours = {c.id: c for c in read_catalog("fleet/campaigns/catalog.yaml", root=REPO_ROOT)}
    fleet = load_catalog("fleet/campaigns/catalog.yaml")
    assert set(ours) == {c.id for c in fleet}
    for c in fleet:
        o = ours[c.id]
        assert (o.flight_start, o.flight_end, o.budget_daily, o.strategy.goal) == (
            c.flight_start, c.flight_end, c.budget_daily, c.strategy.goal)
        assert o.freq_cap == ((c.freq_cap.count, c.freq_cap.window_s) if c.freq_cap else None)
        assert [cr.id for cr in o.creatives] == [cr.id for cr in c.creatives]


# -- time, value, allocation -----------------------------------------------------------------


NIGHT = Campaign(id="x-night", advertiser="n", adomain=["n.example"], budget_daily=100000.0,
                 creatives=[Creative(id="xn", format="banner", w=300, h=250)],
                 strategy=Strategy(base_cpm=9.0, max_bid=20.0), targeting=Targeting(hours_utc=[0, 1, 2, 3, 4, 5]))


def test_each_auction_is_judged_at_its_own_time():
    """A night campaign (hours 0-5 UTC) is eligible for an auction at 05:59:30 and not for one
    at 06:00:30, whatever the time the scorecard runs."""
    market = Market(seed=3, regions=("us-east",))
    rng = random.Random(1)
    opp = next(o for o in (market.opportunity(rng, "us-east") for _ in range(5000))
               if o.fmt == "banner" and o.size == (300, 250))
    at = dt.datetime(2026, 11, 23, 5, 59, 30, tzinfo=dt.timezone.utc).timestamp()
    night = sim_campaign(msgspec.to_builtins(NIGHT))
    assert oracle.assess(market, [night], 0, opp, at)[0] == {"x-night"}
    assert oracle.assess(market, [night], 0, opp, at + 60)[0] == set()


def test_click_value_is_the_simulators_own():
    market = Market(seed=3, regions=("us-east",))
    opp = market.opportunity(random.Random(2), "us-east")
    cpm = sim_campaign({"id": "m", "budget_daily": 1, "creatives": [], "strategy": {"base_cpm": 2.0}})
    cpc = sim_campaign({"id": "k", "budget_daily": 1, "creatives": [], "strategy": {"goal": "cpc", "target_cpc": 0.7}})
    assert oracle.click_value(market, opp, cpm) == pytest.approx(2.0 / (1000 * oracle.REFERENCE_CTR))
    assert oracle.click_value(market, opp, cpc) == 0.7
    assert oracle.impression_value(market, opp, cpc) == pytest.approx(0.7 * market.ctr(opp, cpc))


def test_allocation_keeps_budgets_caps_and_the_pool():
    opts = [oracle.Option(i, "c", "u1" if i < 5 else f"u{i}", 1000.0 + i, 0.001, 0.01 - i * 1e-4, 0.01)
            for i in range(10)]
    capped = oracle.allocate(opts, {"c": 1.0}, {"c": (2, 3600)})
    assert sorted(capped) == [0, 1, 5, 6, 7, 8, 9]  # two for u1 within the hour, the rest once each
    assert sorted(oracle.allocate(opts, {"c": 0.0035}, {})) == [0, 1, 2]  # the budget
    assert sorted(oracle.allocate(opts, {"c": 1.0}, {}, pool=0.002)) == [0, 1]  # the fleet's spend


# -- the scorecard catches a broken fleet ------------------------------------------------------


@pytest.fixture(scope="module")
def run(regions):
    """One in-process run of the committed fleet: 1,500 auctions over an afternoon hour."""
    market = Market(seed=7, regions=tuple(regions.regions))
    start = dt.datetime(2026, 11, 23, 13, 0, tzinfo=dt.timezone.utc).timestamp()
    ours = read_catalog(regions.defaults.catalog, root=REPO_ROOT)

    def play(fleet_catalog, shift_s: float = 0.0, extra=()):
        clock = Clock(start)
        fleet_catalog = list(fleet_catalog) + list(extra)
        fleet = bidders(regions, fleet_catalog, clock)
        if shift_s:  # the fleet's targeting reads a clock that is off by ``shift_s``
            for b in fleet.values():
                b.clock = lambda c=clock: c.t + shift_s
        recs = auctions(market, fleet, clock, n=1500, start=start, gap_s=2.0)
        truth = ours + [sim_campaign(msgspec.to_builtins(c)) for c in extra]
        return score(market, recs, truth, 3000.0, start=start, seat=regions.defaults.seat)

    return play, load_catalog(regions.defaults.catalog)


def test_the_committed_fleet_bids_only_where_the_rules_admit(run):
    play, catalog = run
    card = play(catalog)
    t = card["targeting"]
    assert t["fleet_bids"] > 300 and t["outside_targeting"] == 0 and t["unknown_campaign"] == 0
    h = card["headline"]
    assert h["oracle_at_fleet_spend"]["spend_usd"] <= h["fleet"]["spend_usd"] + 1e-9
    assert h["oracle_at_fleet_spend"]["value_usd"] <= card["oracle"]["value_usd"]
    assert h["fleet_vs_oracle_at_fleet_spend"]["value"] == pytest.approx(
        h["fleet"]["value_usd"] / h["oracle_at_fleet_spend"]["value_usd"], abs=1e-3)


def test_a_fleet_loader_that_drops_countries_is_caught(run):
    """A fleet whose catalog lost the country lists bids abroad: the oracle, reading the file
    itself, counts those bids as outside targeting, by campaign."""
    play, catalog = run
    broken = [msgspec.structs.replace(c, targeting=msgspec.structs.replace(c.targeting, countries=[]))
              for c in catalog]
    card = play(broken)
    out = card["targeting"]["outside_by_campaign"]
    assert card["targeting"]["outside_targeting"] > 0
    assert set(out) <= {c.id for c in catalog if c.targeting.countries} and out


def test_a_fleet_targeting_at_the_wrong_hour_is_caught(run):
    """Dayparting on a clock 16 hours off: a night campaign bids in the afternoon (on time, it
    does not)."""
    play, catalog = run
    assert "x-night" not in play(catalog, extra=[NIGHT])["per_campaign"]
    card = play(catalog, shift_s=16 * 3600, extra=[NIGHT])
    assert card["targeting"]["outside_by_campaign"].get("x-night", 0) > 0


def test_a_campaign_the_fleet_never_admits_shows(run):
    """A campaign lost to the fleet (targeting nobody) is one the oracle still finds worth
    buying; the fleet's bids for it are 0 and value against the oracle at its spend falls."""
    play, catalog = run
    good = play(catalog)
    lost = max(good["per_campaign"], key=lambda cid: good["per_campaign"][cid]["fleet_bids"])
    broken = [msgspec.structs.replace(c, targeting=msgspec.structs.replace(c.targeting, countries=["ZZZ"]))
              if c.id == lost else c for c in catalog]
    bad = play(broken)
    assert bad["per_campaign"][lost]["fleet_bids"] == 0 and bad["per_campaign"][lost]["oracle_worth_buying"] > 0
    assert bad["targeting"]["outside_targeting"] == 0
    assert (bad["headline"]["fleet_vs_oracle_at_fleet_spend"]["value"]
            < good["headline"]["fleet_vs_oracle_at_fleet_spend"]["value"])
