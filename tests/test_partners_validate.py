"""Partner bid validation's host and scheme rules (no servers): ``badv`` against a bid's
``adomain`` (``fleet.openrtb.adomain``: the blocked domain or its subdomains; a public suffix
blocks nothing, as in Prebid Server), the same rule for our own campaigns (``SlotRules``), and
secure imps refusing markup or win/bill URLs over ``http:`` (``insecure_creative``, Prebid
Server's secure-markup validation)."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import pytest

from fleet.campaigns.model import Campaign
from fleet.openrtb.adomain import AdvertiserBlock, is_public_suffix, normalize
from fleet.openrtb.model import BidRequest
from fleet.partners.validate import Validator
from fleet.pipeline.creative_fit import SlotRules

REQ = {"id": "v", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": {"id": "s"}}


def _judge(bid: dict, *, badv=(), secure=None) -> tuple[list, Counter]:
    req = json.loads(json.dumps(REQ))
    req["badv"] = list(badv)
    if secure is not None:
        req["imp"][0]["secure"] = secure
    v = Validator(msgspec.convert(req, BidRequest), {"1": 0.1}, {"USD": 1.0})
    drops: Counter = Counter()
    good = {"id": "b", "impid": "1", "price": 2.0, "adm": "<div/>", "adomain": ["fine.example"], "crid": "cr"}
    out = v.judge("p", "seat", json.dumps({"id": "v", "seatbid": [{"bid": [good | bid]}]}).encode(), drops)
    return out, drops


@pytest.mark.parametrize("raw,want", [
    ("Example.CO.uk", "example.co.uk"), ("https://www.example.co.uk:443/path?q=1", "example.co.uk"),
    (" www.shop.example.com. ", "shop.example.com"), ("user@ads.example.com", "ads.example.com"), ("", ""),
])
def test_domains_are_normalised_as_prebid_server_does(raw, want):
    assert normalize(raw) == want


@pytest.mark.parametrize("name,public", [
    ("com", True), ("uk", True), ("co.uk", True), ("com.au", True), ("co.jp", True), ("org.uk", True),
    ("example.co.uk", False), ("example.com", False), ("bbc.uk", False), ("co.example", False),
])
def test_public_suffixes_by_the_documented_rule(name, public):
    assert is_public_suffix(name) is public


@pytest.mark.parametrize("adomain,blocked", [
    ("example.co.uk", True), ("ads.example.co.uk", True), ("https://www.example.co.uk/x", True),
    ("EXAMPLE.co.uk", True),
    ("other.co.uk", False),  # shares only the public suffix: not the same advertiser
    ("myexample.co.uk", False),  # a suffix of the string, not of the labels
    ("example.co.uk.evil.com", False), ("co.uk", False),
])
def test_a_blocked_domain_blocks_itself_and_its_subdomains_only(adomain, blocked):
    out, drops = _judge({"adomain": [adomain]}, badv=["example.co.uk"])
    assert (drops == Counter({"blocked_adomain": 1})) is blocked and (out == []) is blocked


@pytest.mark.parametrize("entry", ["co.uk", "uk", "com", ".co.uk", "www.co.uk"])
def test_a_public_suffix_in_badv_blocks_no_advertiser(entry):
    for adomain in ("example.co.uk", "shop.example.com", "anything.com.au"):
        out, drops = _judge({"adomain": [adomain]}, badv=[entry, "blocked.example"])
        assert len(out) == 1 and not drops, (entry, adomain)
    out, drops = _judge({"adomain": ["x.blocked.example"]}, badv=[entry, "blocked.example"])
    assert drops == Counter({"blocked_adomain": 1})  # the rest of the list still holds


def test_one_blocked_domain_among_several_blocks_the_bid():
    _, drops = _judge({"adomain": ["fine.example", "cdn.bad.example"]}, badv=["bad.example"])
    assert drops == Counter({"blocked_adomain": 1})


def test_our_own_campaigns_follow_the_same_rule():
    req = msgspec.convert({**REQ, "badv": ["example.co.uk", "co.uk"]}, BidRequest)
    rules = SlotRules(req.imp[0], req)
    assert isinstance(rules.badv, AdvertiserBlock)
    cr = {"id": "cr", "format": "banner", "w": 300, "h": 250}

    def campaign(domain: str) -> Campaign:
        return msgspec.convert({"id": "c", "advertiser": "a", "adomain": [domain], "budget_daily": 10.0,
                                "creatives": [cr]}, Campaign)

    assert rules.first_fit(campaign("ads.example.co.uk")) is None
    assert rules.first_fit(campaign("other.co.uk")) is not None


# -- secure imps ------------------------------------------------------------------------------


@pytest.mark.parametrize("bid", [
    {"adm": "<img src='http://cdn.example/a.png'>"},
    {"adm": "<IMG SRC='HTTP://cdn.example/a.png'>"},
    {"adm": "<a href='https://c.example/?u=http%3A%2F%2Fland.example'>x</a>"},  # URL-encoded, as PBS reads it
    {"nurl": "http://p.example/win?p=${AUCTION_PRICE}"},
    {"burl": " HTTP://p.example/bill"},
])
def test_a_secure_imp_drops_a_bid_that_would_load_over_http(bid):
    out, drops = _judge(bid, secure=1)
    assert out == [] and drops == Counter({"insecure_creative": 1})
    out, drops = _judge(bid, secure=0)  # not a secure imp: the same bid competes
    assert len(out) == 1 and not drops
    out, drops = _judge(bid)
    assert len(out) == 1 and not drops


def test_a_secure_imp_keeps_https_markup_and_urls():
    bid = {"adm": "<img src='https://cdn.example/a.png'><a href='//c.example/'>", "nurl": "https://p.example/win",
           "burl": "https://p.example/bill", "lurl": "http://p.example/loss"}  # a loss notice never loads in a page
    out, drops = _judge(bid, secure=1)
    assert len(out) == 1 and not drops
