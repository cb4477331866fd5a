"""Issue 22: OpenRTB as exchanges send it. Tolerance (what is coerced, dropped, counted, and what
is still a 400), identity order, no-bid reason codes, VAST by protocol, Native 1.2 assets."""

from __future__ import annotations

import copy
import json
from collections import Counter
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.campaigns.catalog import load_catalog
from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb import codec
from fleet.openrtb.model import BidRequest, Device, Native, User
from fleet.pipeline import deadline as deadline_mod
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.enrichment import identity
from fleet.pipeline.markup_native import fill, native_markup, native_spec
from fleet.pipeline.markup_vast import vast, vast_version
from fleet.runtime.haproxy_shim import DEADLINE_REASON, TMAX_REASON

BANNER = {"id": "1", "banner": {"format": [{"w": 300, "h": 250}]}, "bidfloor": 0.1}
BASE = {"id": "t1", "imp": [BANNER], "site": {"domain": "sports.example", "publisher": {"id": "pub-7"}},
        "device": {"ip": "81.2.69.160", "devicetype": 2, "geo": {"country": "USA"}}, "user": {"id": "u1"}}


@pytest.fixture(scope="module")
def catalog(regions):
    return load_catalog(regions.defaults.catalog)


@pytest.fixture
def bidder(regions, catalog):
    return RegionBidder("us-east", regions, catalog)


def _decode(obj) -> tuple[BidRequest, Counter]:
    counts: Counter = Counter()
    return codec.decode_request(json.dumps(obj).encode(), None, 1 << 16, counts), counts


def _with(path: str, value):
    """BASE with ``value`` at a dotted path (``imp.0.banner.w``)."""
    req = copy.deepcopy(BASE)
    node = req
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return req


# -- tolerance ------------------------------------------------------------------------------


def test_a_valid_request_takes_the_fast_path_and_repairs_nothing():
    req, counts = _decode(BASE)
    assert req.id == "t1" and counts == {}


@pytest.mark.parametrize("path,value,counter,read", [
    ("id", 123, "tolerated.coerced.id", lambda r: r.id == "123"),
    ("imp", BANNER, "tolerated.coerced.imp", lambda r: [i.id for i in r.imp] == ["1"]),
    ("imp.0.id", 1, "tolerated.coerced.imp[].id", lambda r: r.imp[0].id == "1"),
    ("tmax", "120", "tolerated.coerced.tmax", lambda r: r.tmax == 120),
    ("tmax", 120.0, "tolerated.coerced.tmax", lambda r: r.tmax == 120),
    ("imp.0.bidfloor", "0.5", "tolerated.coerced.imp[].bidfloor", lambda r: r.imp[0].bidfloor == 0.5),
    ("imp.0.secure", True, "tolerated.coerced.imp[].secure", lambda r: r.imp[0].secure == 1),
    ("regs", {"ext": {"gdpr": "0"}}, "tolerated.coerced.regs.ext.gdpr", lambda r: r.regs.ext.gdpr == 0),
    ("user", {"data": [{"segment": {"id": "x"}}]}, "tolerated.coerced.user.data[].segment",
     lambda r: [s.id for s in r.user.data[0].segment] == ["x"]),
    ("bcat", "IAB25", "tolerated.coerced.bcat", lambda r: r.bcat == ["IAB25"]),
    ("imp.0.banner.format.0.w", "300", "tolerated.coerced.imp[].banner.format[].w",
     lambda r: r.imp[0].banner.format[0].w == 300),
    ("device.geo", [], "tolerated.dropped.device.geo", lambda r: r.device.geo is None),
    ("imp.0.banner.battr", None, "tolerated.dropped.imp[].banner.battr", lambda r: r.imp[0].banner.battr == []),
    ("imp.0.banner.format", [{"w": 300, "h": 250}, "728x90"], "tolerated.dropped.imp[].banner.format[]",
     lambda r: len(r.imp[0].banner.format) == 1),
    ("user.data", "dmp", "tolerated.dropped.user.data", lambda r: r.user.data == []),
    ("imp.0.native", {"request": []}, "tolerated.dropped.imp[].native.request", lambda r: r.imp[0].native.request == ""),
    ("tmax", -5, "tolerated.tmax.negative", lambda r: r.tmax is None),
    ("site.page", {"url": "x"}, "tolerated.dropped.site.page", lambda r: r.site.page is None),
])
def test_a_wrong_optional_field_is_coerced_or_dropped_and_counted(path, value, counter, read):
    req, counts = _decode(_with(path, value))
    assert counts.get(counter) == 1, counts
    assert read(req)


@pytest.mark.parametrize("path,value,read", [
    ("regs", {"coppa": "yes"}, lambda r: r.regs.coppa == 1),
    ("regs", {"gdpr": [1]}, lambda r: r.regs.gdpr == 1),
    ("regs", {"ext": {"gdpr": "maybe"}}, lambda r: r.regs.ext.gdpr == 1),
    ("device.lmt", "?", lambda r: r.device.lmt == 1),
    ("device.dnt", {}, lambda r: r.device.dnt == 1),
    ("at", "first", lambda r: r.at == 1),
])
def test_an_unreadable_privacy_or_auction_flag_takes_its_restrictive_value(path, value, read):
    req, _ = _decode(_with(path, value))
    assert read(req)


def test_an_unreadable_coppa_flag_keeps_user_data_out(bidder):
    a = bidder.bid(json.dumps(_with("regs", {"coppa": "1 "})).encode(), version="2.6")
    assert a.status == 200 and json.loads(a.body)["ext"]["fleet"]["contextual"] == "coppa"


@pytest.mark.parametrize("obj", [
    {"imp": [BANNER]},  # no id
    {**BASE, "id": {"a": 1}},
    {**BASE, "id": None},
    {**BASE, "id": ""},
    {"id": "x"},  # no imp
    {**BASE, "imp": []},
    {**BASE, "imp": "banner"},
    {**BASE, "imp": [{"banner": {}}]},  # an imp without an id
    {**BASE, "imp": [{**BANNER, "id": None}]},
    {**BASE, "imp": [{**BANNER, "id": ["1"]}]},
    {**BASE, "imp": [{"id": "1"}]},  # no media object
    {**BASE, "imp": [{"id": "1", "banner": "300x250"}]},  # none it can read
    {**BASE, "imp": [{**BANNER, "bidfloor": "a lot"}]},  # no floor it can read: no imp left
    [BASE],
])
def test_what_the_bidder_cannot_do_without_is_still_a_400(bidder, obj):
    a = bidder.bid(json.dumps(obj).encode(), version="2.6")
    assert a.status == 400, a.body
    assert json.loads(a.body)["nbr"] == 2


def test_an_imp_or_deal_it_cannot_read_is_dropped_and_counted():
    deals = {"deals": [{"id": "d1", "bidfloor": "x"}, {"id": "d2", "bidfloor": -1}, {"id": "d3", "bidfloor": 2}]}
    req, counts = _decode({**BASE, "imp": [{**BANNER, "pmp": deals}, {"id": "2"},
                                           {**BANNER, "id": "3", "bidfloor": -0.5}]})
    assert [i.id for i in req.imp] == ["1"]
    assert [d.id for d in req.imp[0].pmp.deals] == ["d3"]
    assert counts["tolerated.dropped.imp[].pmp.deals[].bidfloor"] == 1
    assert counts["tolerated.deal.bad_floor"] == 1
    assert counts["tolerated.imp.no_media"] == 1 and counts["tolerated.imp.bad_floor"] == 1


def test_duplicate_imp_ids_bid_on_the_first_only(bidder):
    second = {**BANNER, "banner": {"format": [{"w": 728, "h": 90}]}}
    a = bidder.bid(json.dumps({**BASE, "imp": [BANNER, second]}).encode(), version="2.6")
    bids = [b for sb in json.loads(a.body)["seatbid"] for b in sb["bid"]]
    assert [(b["impid"], b["w"]) for b in bids] == [("1", 300)]
    assert bidder.stats["tolerated.imp.duplicate_id"] == 1


def test_site_and_app_is_read_as_the_app_and_the_sites_domain_still_blocks(bidder):
    both = {**BASE, "app": {"bundle": "com.example.reader", "publisher": {"id": "pub-app"}}}
    a = bidder.bid(json.dumps(both).encode(), version="2.6")
    assert a.status == 200 and bidder.stats["tolerated.site_and_app"] == 1
    assert "p=pub-app" in json.loads(a.body)["seatbid"][0]["bid"][0]["nurl"]  # the app's publisher
    blocked = {**both, "id": "t2", "site": {"domain": "mfa-content.example"}}
    a = bidder.bid(json.dumps(blocked).encode(), version="2.6")
    assert (a.status, a.headers["x-openrtb-nbr"]) == (204, "7")


# -- identity, no-bid reasons -------------------------------------------------------------


def test_identity_prefers_our_synced_id():
    def req(user, ifa="dev-1"):
        return BidRequest(id="r", imp=[], user=None if user is None else User(**user), device=Device(ifa=ifa))

    assert identity(req({"id": "exch-1", "buyeruid": "ours-1"}), "") == "ours-1"
    assert identity(req({"id": "exch-1"}), "") == "exch-1"
    assert identity(req({"id": "", "buyeruid": ""}), "") == "dev-1"
    assert identity(req(None), "") == "dev-1"
    assert identity(req({"buyeruid": "ours-1"}), "coppa") is None


def test_running_out_of_time_is_nbr_15_insufficient_auction_time(bidder):
    a = bidder.bid(json.dumps({**BASE, "tmax": 5}).encode(), version="2.6")
    assert (a.status, a.body, a.headers["x-openrtb-nbr"], a.headers["x-fleet-reason"]) == (
        204, b"", "15", TMAX_REASON)  # the same answer HAProxy gives in front of the replica
    late = bidder.bid(json.dumps({**BASE, "id": "late"}).encode(), version="2.6", arrival=deadline_mod.now() - 1.0)
    assert (late.status, late.body, late.headers["x-openrtb-nbr"], late.headers["x-fleet-reason"]) == (
        204, b"", "15", DEADLINE_REASON)


# -- VAST ---------------------------------------------------------------------------------

VIDEO = Creative(id="cr-v", format="video", w=640, h=360, duration_s=75, mime="video/mp4", title="T & Co")
AUDIO = Creative(id="cr-a", format="audio", duration_s=30, mime="audio/mpeg")


@pytest.mark.parametrize("protocols,version", [
    ([], "4.0"), ([2], "2.0"), ([5], "2.0"), ([3, 6], "3.0"), ([2, 3, 7], "4.0"), ([8], "4.0"),
    ([11], "4.1"), ([14, 2], "4.2"), ([1], None), ([9, 10], None), ([4], None),
])
def test_the_vast_version_is_the_highest_the_player_takes_that_we_write(protocols, version):
    assert vast_version(protocols, "video") == version


@pytest.mark.parametrize("version", ["2.0", "3.0", "4.0", "4.1", "4.2"])
@pytest.mark.parametrize("cr", [VIDEO, AUDIO], ids=["video", "audio"])
def test_vast_markup_is_well_formed_with_our_trackers(version, cr):
    bill = "https://x.example/us-east/notice/bill?bid=b1&n=bill&px=${AUCTION_PRICE}"
    click = "https://x.example/us-east/notice/click?bid=b1&n=click"
    root = ET.fromstring(vast(cr, version, impression=bill, click_notice=click, serving_id="b1"))
    assert root.get("version") == version
    assert root.find("./Ad/InLine/Impression").text == bill
    assert root.find(".//VideoClicks/ClickTracking").text == click
    assert root.find(".//Linear/Duration").text == ("00:01:15" if cr is VIDEO else "00:00:30")
    assert root.find(".//MediaFile").get("type") == cr.mime
    assert (root.find(".//UniversalAdId") is not None) == version.startswith("4")
    assert (root.find("./Ad/InLine/AdServingId") is not None) == (version in ("4.1", "4.2"))


def _one_creative(regions, cr: Creative) -> RegionBidder:
    c = Campaign(id="c-1", advertiser="adv", adomain=["a.example"], budget_daily=1e6, creatives=[cr])
    return RegionBidder("us-east", regions, [c])


def test_a_secure_imp_gets_https_everywhere_and_no_creative_with_an_http_url(regions):
    plain = Creative(id="cr-http", format="banner", w=300, h=250, image_url="http://cdn.example/a.png")
    b = _one_creative(regions, plain)
    assert b.bid(json.dumps(BASE).encode(), version="2.6").status == 200
    secure = {**BASE, "id": "t2", "imp": [{**BANNER, "secure": 1}]}
    assert b.bid(json.dumps(secure).encode(), version="2.6").status == 204
    b = _one_creative(regions, Creative(id="cr-https", format="banner", w=300, h=250))
    bid = json.loads(b.bid(json.dumps(secure).encode(), version="2.6").body)["seatbid"][0]["bid"][0]
    assert all(bid[k].startswith("https://") for k in ("nurl", "burl", "lurl"))
    assert bid["ext"]["clickurl"].startswith("https://") and "http://" not in bid["adm"]


def test_a_skippable_creative_does_not_fill_a_slot_the_player_will_not_skip(regions):
    cr = Creative(id="cr-skip", format="video", w=640, h=360, duration_s=15, attr=[16])
    b = _one_creative(regions, cr)
    imp = {"id": "1", "video": {"mimes": ["video/mp4"], "protocols": [7]}}
    for n, (skip, status) in enumerate(((0, 204), (1, 200), (None, 200))):
        v = {**imp, "video": {**imp["video"], **({} if skip is None else {"skip": skip})}}
        assert b.bid(json.dumps({**BASE, "id": f"s{n}", "imp": [v]}).encode(), version="2.6").status == status


# -- Native -------------------------------------------------------------------------------

NATIVE_CR = Creative(id="cr-n", format="native", w=1200, h=627, title="Today's headlines")
NATIVE_CAMPAIGN = Campaign(id="c-n", advertiser="adv-news", adomain=["n.example"], budget_daily=1.0,
                           creatives=[NATIVE_CR])

assets = st.lists(st.fixed_dictionaries({
    "id": st.integers(0, 20),
    "required": st.sampled_from([0, 1]),
}, optional={
    "title": st.fixed_dictionaries({}, optional={"len": st.integers(0, 40)}),
    "img": st.fixed_dictionaries({}, optional={"type": st.sampled_from([1, 2, 3]), "w": st.sampled_from([0, 80, 1200]),
                                                "h": st.sampled_from([0, 80, 627]), "wmin": st.integers(0, 1500)}),
    "data": st.fixed_dictionaries({"type": st.integers(1, 12)}, optional={"len": st.integers(0, 20)}),
    "video": st.just({"mimes": ["video/mp4"]}),
}), max_size=6)


@settings(max_examples=300, deadline=None)
@given(assets=assets, wrapped=st.booleans(), as_object=st.booleans())
def test_native_fills_only_the_requests_asset_ids_and_every_required_one(assets, wrapped, as_object):
    body = {"ver": "1.1" if wrapped else "1.2", "assets": assets}
    request = {"native": body} if wrapped else body
    spec = native_spec(Native(request=request if as_object else json.dumps(request)))
    ids = [a["id"] for a in assets]
    if spec is None:
        assert not assets or len(set(ids)) != len(ids)
        return
    filled = fill(spec, NATIVE_CR, NATIVE_CAMPAIGN)
    if filled is None:
        return  # no bid for this imp
    doc = json.loads(native_markup(spec, filled, NATIVE_CR, click_notice="https://c", impression="https://b"))
    root = doc["native"] if wrapped else doc
    assert ("native" in doc) == wrapped and root["ver"] == ("1.1" if wrapped else "1.2")
    got = [a["id"] for a in root["assets"]]
    assert got and set(got) <= set(ids) and len(got) == len(set(got))
    assert {a["id"] for a in assets if a["required"]} <= set(got)
    assert root["link"]["clicktrackers"] == ["https://c"]


def test_a_title_longer_than_asked_is_no_fit_when_required_and_left_out_when_optional():
    for required, expect in ((1, None), (0, [{"id": 2, "img": {"url": "https://cdn.advertiser.example/cr-n.png",
                                                                "w": 1200, "h": 627}}])):
        spec = native_spec(Native(request=json.dumps({"assets": [
            {"id": 1, "required": required, "title": {"len": 5}}, {"id": 2, "img": {"type": 3}}]})))
        assert fill(spec, NATIVE_CR, NATIVE_CAMPAIGN) == expect
