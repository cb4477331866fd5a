"""Admission's cheap rejections: dedup window, IP ranges, crawlers, blocklists."""

from __future__ import annotations

import msgspec
import pytest

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
