"""Admission's cheap rejections: dedup window, IP ranges, crawlers, blocklists."""

from __future__ import annotations

import ipaddress

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.config import AdmissionPolicy
from fleet.openrtb.model import BidRequest
from fleet.openrtb.nbr import NBR
from fleet.pipeline.admission import Admission, DedupWindow, IpRanges, Rejected


def test_dedup_window_forgets_after_the_window_and_stays_bounded():
    t = [0.0]
    d = DedupWindow(window_s=10, capacity=3, clock=lambda: t[0])
    assert not d.seen("a")
    assert d.seen("a")
    t[0] = 11
    assert not d.seen("a")  # expired, then recorded again
    for k in "bcd":
        assert not d.seen(k)
    assert len(d._seen) <= 3
    assert not d.seen("a")  # evicted by capacity: the oldest goes first


def test_ip_ranges_v4_and_v6():
    r = IpRanges(["52.0.0.0/11", "10.0.0.0/8", "2001:db8::/32", "10.1.0.0/16"])
    assert "52.31.255.255" in r and "52.0.0.0" in r
    assert "52.32.0.0" not in r and "51.255.255.255" not in r
    assert "10.200.1.1" in r
    assert "2001:db8::1" in r and "2001:db9::1" not in r
    assert "not an ip" not in r
    assert int(ipaddress.ip_address("10.0.0.1")) in r and b"10.0.0.1" not in r  # not text: as ipaddress reads it


def _reference_in(cidrs: list[str], ip: str) -> bool:
    """Membership as the standard library says it, without the code under test."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)


CIDRS = ["52.0.0.0/11", "10.0.0.0/8", "0.0.0.0/32", "255.255.255.0/24", "2001:db8::/32", "::ffff:0:0/96"]
NEAR_IPS = st.text(alphabet="0123456789.:xabf%+- \n\x00\u0661", max_size=20) | st.ip_addresses().map(str) | \
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))) | \
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(f"{n:02d}" for n in t))


@settings(max_examples=500, deadline=None)
@given(NEAR_IPS)
def test_ip_ranges_agree_with_the_standard_library_on_any_text(ip):
    """The IPv4 fast path (the C parser) must take exactly what ``ipaddress`` takes: a form it
    reads differently (leading zeros, short forms, stray spaces) would turn a data-centre check."""
    assert (ip in IpRanges(CIDRS)) == _reference_in(CIDRS, ip)


def _req(**kw) -> BidRequest:
    base = {"id": "x", "imp": [{"id": "1", "banner": {}}]}
    return msgspec.convert({**base, **kw}, BidRequest)


@pytest.mark.parametrize(
    "kw,nbr",
    [
        ({"device": {"ua": "Mozilla/5.0 (compatible; bingbot/2.0)"}}, NBR.KNOWN_WEB_SPIDER),
        ({"device": {"ip": "203.0.113.7"}}, NBR.DATACENTER_IP),
        ({"device": {"ipv6": "2001:db8::5"}}, NBR.DATACENTER_IP),
        ({"site": {"publisher": {"id": "pub-fraud-7"}}}, NBR.BLOCKED_PUBLISHER),
        ({"app": {"domain": "Blocked.Example"}}, NBR.BLOCKED_PUBLISHER),
        # an app's bundle does not hide its blocked domain, nor a site its blocked publisher domain
        ({"app": {"bundle": "com.fine.app", "domain": "blocked.example"}}, NBR.BLOCKED_PUBLISHER),
        ({"site": {"domain": "ok.example", "publisher": {"domain": "mfa-content.example"}}}, NBR.BLOCKED_PUBLISHER),
    ],
)
def test_rejections_carry_reason_codes(kw, nbr, regions):
    adm = Admission(regions.admission)
    with pytest.raises(Rejected) as exc:
        adm.check(_req(**kw))
    assert exc.value.nbr == nbr


def test_clean_request_passes():
    adm = Admission(AdmissionPolicy(crawler_ua_patterns=["bot"], datacenter_cidrs=["52.0.0.0/11"]))
    adm.check(_req(device={"ua": "Mozilla/5.0 (iPhone)", "ip": "81.2.69.160"}, site={"domain": "ok.example"}))
