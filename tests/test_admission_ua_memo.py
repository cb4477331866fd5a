"""Admission remembers its crawler verdict per user agent (``Admission.is_crawler``): the same
answer every time, bounded memory whatever the traffic sends."""

from __future__ import annotations

import msgspec
import pytest

from fleet.config import AdmissionPolicy
from fleet.openrtb.model import BidRequest
from fleet.openrtb.nbr import NBR
from fleet.pipeline.admission import Admission, Rejected


def _req(n: int, ua: str) -> BidRequest:
    return msgspec.convert({"id": f"r{n}", "imp": [{"id": "1", "banner": {}}], "device": {"ua": ua}}, BidRequest)


def test_a_remembered_verdict_is_the_patterns_verdict_every_time():
    adm = Admission(AdmissionPolicy(crawler_ua_patterns=["bot", "curl/"]))
    for n in range(3):
        with pytest.raises(Rejected) as exc:
            adm.check(_req(2 * n, "Mozilla/5.0 (compatible; BingBot/2.0)"))  # the pattern ignores case
        assert exc.value.nbr == NBR.KNOWN_WEB_SPIDER
        adm.check(_req(2 * n + 1, "Mozilla/5.0 (iPhone)"))


def test_unique_user_agents_do_not_grow_the_memory_without_bound():
    adm = Admission(AdmissionPolicy(crawler_ua_patterns=["bot"]))
    for n in range(10_000):
        assert adm.is_crawler(f"agent-{n}") is False
        assert len(adm._ua_verdicts) <= 4096
    assert adm.is_crawler("a robot") and adm.is_crawler("a robot")
