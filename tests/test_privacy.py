"""The privacy decision (fleet/pipeline/privacy.py) and the privacy-string decoders
(fleet/openrtb/consent.py): the decision table, real TCF v2 / GPP / US strings, and attacks
(forged, truncated, garbage and oversized strings count as no consent and never raise)."""

from __future__ import annotations

import string

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iab_tcf import decode_v2

from fleet.cache.store import Profile
from fleet.config import PrivacySettings
from fleet.openrtb import consent
from fleet.openrtb.model import BidRequest
from fleet.pipeline.enrichment import enrich, identity
from fleet.pipeline.privacy import MEASUREMENT_ONLY, decide, measured
from privacy_strings import OUR_VENDOR, gpp_string, tc_string, us_national

FULL = tc_string(vendors=[OUR_VENDOR, 755], purposes=[1, 2, 3, 4, 7])
MEASURE = tc_string(vendors=[OUR_VENDOR], purposes=[1, 2, 7])
OTHER_VENDOR = tc_string(vendors=[755], purposes=[1, 2, 3, 4, 7])
# the GPP specification's example TC string: real, but no vendor and no purpose consented
SPEC_EXAMPLE = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"


def request(regs=None, user=None, device=None) -> BidRequest:
    body = {"id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    for key, value in (("regs", regs), ("user", user), ("device", device)):
        if value is not None:
            body[key] = value
    return msgspec.convert(body, BidRequest)


# -- decoders ------------------------------------------------------------------------------


def test_tcf_reads_purposes_and_our_vendor():
    tc = consent.tcf(FULL, OUR_VENDOR)
    assert tc is not None and tc.vendor and {1, 2, 3, 4, 7} <= tc.purposes
    assert consent.tcf(FULL, 999).vendor is False
    assert consent.tcf(tc_string(vendors=[OUR_VENDOR, 9], purposes=[1], ranged=True), OUR_VENDOR).vendor


def test_tcf_publisher_restriction_removes_a_purpose_for_our_vendor():
    s = tc_string(vendors=[OUR_VENDOR], purposes=[1, 2, 3, 4, 7], restrictions=[(3, 0, [OUR_VENDOR])])
    tc = consent.tcf(s, OUR_VENDOR)
    assert 3 not in tc.purposes and 4 in tc.purposes
    assert 3 in consent.tcf(s, 755).purposes  # the restriction names our vendor only


def test_the_gpp_specifications_example_string_decodes_to_no_consent():
    tc = consent.tcf(SPEC_EXAMPLE, OUR_VENDOR)
    assert tc is not None and not tc.vendor and not tc.purposes
    sections = consent.gpp("DBACNY~" + SPEC_EXAMPLE + "~1YNN")
    assert sections == {2: SPEC_EXAMPLE, 6: "1YNN"}


def test_gpp_header_ranges_and_us_national():
    assert consent.gpp("DBABjw~a~b") == {5: "a", 6: "b"}  # a range 5-6 (the spec's encoding)
    nat = consent.us_national(us_national(sale=1))
    assert nat is not None and nat.opted_out
    assert not consent.us_national(us_national()).opted_out
    assert consent.us_national(us_national(targeted=1, version=2)).opted_out


def test_us_privacy_strings():
    assert consent.us_privacy("1YYN") is True
    assert consent.us_privacy("1YNN") is False and consent.us_privacy("1---") is False
    for bad in ("", "1", "2YNN", "1YXN", "1YNNN", "YNN1"):
        assert consent.us_privacy(bad) is None


# -- the decision table --------------------------------------------------------------------

CASES = [
    ("nothing", {}, {}, {}, ""),
    ("coppa beats consent", {"coppa": 1, "gdpr": 1}, {"consent": FULL}, {}, "coppa"),
    ("gdpr, no string", {"gdpr": 1}, {}, {}, "gdpr_no_consent"),
    ("gdpr, full consent", {"gdpr": 1}, {"consent": FULL}, {}, ""),
    ("gdpr 2.5 placement", {"ext": {"gdpr": 1}}, {"ext": {"consent": FULL}}, {}, ""),
    ("gdpr, measurement only", {"gdpr": 1}, {"consent": MEASURE}, {}, MEASUREMENT_ONLY),
    ("gdpr, other vendor", {"gdpr": 1}, {"consent": OTHER_VENDOR}, {}, "tcf_no_vendor_consent"),
    ("gdpr, spec example", {"gdpr": 1}, {"consent": SPEC_EXAMPLE}, {}, "tcf_no_vendor_consent"),
    ("gdpr, vendor without purposes", {"gdpr": 1}, {"consent": tc_string(vendors=[OUR_VENDOR], purposes=[1])},
     {}, "tcf_no_purpose_consent"),
    ("gdpr, purposes 2 and 7 by legitimate interest",
     {"gdpr": 1}, {"consent": tc_string(vendors=[OUR_VENDOR], li_vendors=[OUR_VENDOR], purposes=[1],
                                        li_purposes=[2, 7])}, {}, MEASUREMENT_ONLY),
    ("gdpr, purpose 1 never by legitimate interest",
     {"gdpr": 1}, {"consent": tc_string(vendors=[OUR_VENDOR], li_vendors=[OUR_VENDOR], li_purposes=[1, 2, 7])},
     {}, "tcf_no_purpose_consent"),
    ("gdpr, garbage string", {"gdpr": 1}, {"consent": "not-a-tc-string"}, {}, "tcf_undecodable"),
    ("gdpr 0 ignores the string", {"gdpr": 0}, {"consent": "garbage!"}, {}, ""),
    ("gdpr, consent, but lmt", {"gdpr": 1}, {"consent": FULL}, {"lmt": 1}, "lmt"),
    ("measurement only, and dnt", {"gdpr": 1}, {"consent": MEASURE}, {"dnt": 1}, "dnt"),
    ("gpp tcf section", {"gpp": gpp_string({2: FULL}), "gpp_sid": [2]}, {}, {}, ""),
    ("gpp tcf section, other vendor", {"gpp": gpp_string({2: OTHER_VENDOR}), "gpp_sid": [2]}, {}, {},
     "tcf_no_vendor_consent"),
    ("gpp sid 2 without a string", {"gpp_sid": [2]}, {}, {}, "gdpr_no_consent"),
    ("gpp us national opt-out", {"gpp": gpp_string({7: us_national(sale=1)}), "gpp_sid": [7]}, {}, {},
     "gpp_us_opt_out"),
    ("gpp us national, no opt-out", {"gpp": gpp_string({7: us_national()}), "gpp_sid": [7]}, {}, {}, ""),
    ("gpp garbage", {"gpp": "~~~", "gpp_sid": [7]}, {}, {}, "gpp_undecodable"),
    ("gpp us national section garbage", {"gpp": gpp_string({7: "!!"}), "gpp_sid": [7]}, {}, {},
     "gpp_undecodable"),
    ("gpp uspv1 section opt-out", {"gpp": gpp_string({6: "1YYN"}), "gpp_sid": [6]}, {}, {}, "usp_opt_out"),
    ("gpp string without applicable sections", {"gpp": "garbage"}, {}, {}, ""),
    ("us_privacy opt-out", {"us_privacy": "1YYN"}, {}, {}, "usp_opt_out"),
    ("us_privacy 2.5 placement", {"ext": {"us_privacy": "1YYY"}}, {}, {}, "usp_opt_out"),
    ("us_privacy no opt-out", {"us_privacy": "1YNN"}, {}, {}, ""),
    ("us_privacy garbage", {"us_privacy": "yes"}, {}, {}, "usp_undecodable"),
    ("lmt", {}, {}, {"lmt": 1}, "lmt"),
    ("dnt", {}, {}, {"dnt": 1}, "dnt"),
]


@pytest.mark.parametrize("name,regs,user,device,reason", CASES, ids=[c[0] for c in CASES])
def test_decision_table(name, regs, user, device, reason):
    assert decide(request(regs or None, user or None, device or None)) == reason


def test_vendor_id_and_purposes_are_configuration():
    req = request({"gdpr": 1}, {"consent": OTHER_VENDOR})
    assert decide(req) == "tcf_no_vendor_consent"
    assert decide(req, PrivacySettings(vendor_id=755)) == ""
    strict = PrivacySettings(personalised_purposes=frozenset({1, 3, 4, 5}))
    assert decide(request({"gdpr": 1}, {"consent": FULL}), strict) == MEASUREMENT_ONLY


def test_measurement_only_keeps_the_id_for_caps_but_no_segments():
    req = request({"gdpr": 1}, {"id": "u1", "consent": MEASURE, "data": [{"segment": [{"id": "sports-fan"}]}]})
    reason = decide(req)
    assert reason == MEASUREMENT_ONLY and measured(reason)
    assert identity(req, reason) == "u1"
    user = enrich(req, blocked=reason, uid="u1")
    assert user.contextual_only and user.user_id == "u1" and user.segments == () and user.multiplier == 0.8
    stored = Profile(("runner",), 1.0, {"c-capped": (("e1", 1.0),)}, 0.0)
    user = enrich(req, stored, "hit", blocked=reason, uid="u1")
    assert user.segments == () and user.freq == stored.freq  # caps count stored events, no segments
    nobody = request({"gdpr": 1}, {"id": "u1", "consent": OTHER_VENDOR})
    assert identity(nobody, decide(nobody)) is None


# -- attacks -------------------------------------------------------------------------------


def test_a_truncated_string_is_no_consent_not_every_vendor():
    """The package reads bits past the end as set: a string cut after its header would consent
    to every vendor. The decoder checks the announced bitfield against the string's length."""
    full = tc_string(vendors=[OUR_VENDOR], purposes=[1, 2, 3, 4, 7])
    for cut in (40, 60, len(full) - 8):
        assert consent.tcf(full[:cut], OUR_VENDOR) is None
        assert decide(request({"gdpr": 1}, {"consent": full[:cut]})) == "tcf_undecodable"


def test_forged_strings_never_consent():
    forged = [
        "A" * 40, "B" * 300, "//////", "CO5rKAAO5rKAAAHABBENCWEgAPIAAAAAAAYg", FULL.lower(), FULL + "!",
        tc_string(vendors=[OUR_VENDOR], purposes=[1, 3, 4], version=1),  # a v1-shaped header
        "C" + "_" * 5000, "=" * 10, " " + FULL, FULL.replace("A", "\u00c5", 1), ".", "..", FULL[:1],
    ]
    for s in forged:
        assert decide(request({"gdpr": 1}, {"consent": s})) != "", s[:60]


def test_an_oversized_string_is_not_decoded():
    huge = FULL + "A" * consent.MAX_CHARS
    assert consent.tcf(huge, OUR_VENDOR) is None
    assert consent.gpp("DBABM~" + huge) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.~=!", max_size=400),
       st.lists(st.integers(-5, 20), max_size=4))
def test_arbitrary_strings_never_raise(s, sids):
    req = request({"gdpr": 1, "gpp": s, "gpp_sid": sids, "us_privacy": s[:4]}, {"consent": s})
    reason = decide(req)
    assert isinstance(reason, str)
    if reason == "":  # only a string that really consents may personalise
        tc = consent.tcf(s, OUR_VENDOR) if s else None
        sections = consent.gpp(s) or {}
        tc = tc or consent.tcf(sections.get(2, ""), OUR_VENDOR)
        assert tc is not None and tc.vendor and {1, 3, 4} <= tc.purposes


def test_decoded_strings_are_cached():
    consent.tcf.cache_clear()
    for _ in range(5):
        consent.tcf(FULL, OUR_VENDOR)
    info = consent.tcf.cache_info()
    assert info.misses == 1 and info.hits == 4 and info.maxsize == consent.CACHE


# -- the reference decoder (the iab-tcf package) agrees on every string the tests build -------


def reference(s: str, vendor_id: int) -> consent.Tcf:
    """What ``iab_tcf`` reads for ``vendor_id`` (restrictions applied as the fleet applies them)."""
    c = decode_v2(s)
    purposes = {p for p, on in c.purposes_consent.items() if on}
    li = {p for p, on in c.purposes_legitimate_interests.items() if on}
    for entry in c.pub_restriction_entries:
        if entry.is_in_range(vendor_id):
            if entry.restriction_type in (0, 1):
                li.discard(entry.purpose_id)
            if entry.restriction_type in (0, 2):
                purposes.discard(entry.purpose_id)
    return consent.Tcf(frozenset(purposes), frozenset(li), bool(c.is_vendor_allowed(vendor_id)),
                       bool(c.is_interest_allowed(vendor_id)))


vendor_ids = st.lists(st.integers(1, 3000), max_size=40) | st.lists(st.integers(1, 60), max_size=60)
purpose_ids = st.lists(st.integers(1, 24), max_size=10)


@settings(max_examples=300, deadline=None)
@given(vendor_ids, vendor_ids, purpose_ids, purpose_ids, st.booleans(),
       st.lists(st.tuples(st.integers(1, 24), st.integers(0, 2), st.lists(st.integers(1, 3000), min_size=1,
                                                                          max_size=3)), max_size=3),
       st.integers(1, 3000))
def test_agrees_with_the_iab_tcf_package(vendors, li_vendors, purposes, li_purposes, ranged, restrictions, probe):
    s = tc_string(vendors=vendors, li_vendors=li_vendors, purposes=purposes, li_purposes=li_purposes,
                  ranged=ranged, restrictions=restrictions)
    for vid in {probe, OUR_VENDOR, *vendors[:3], *li_vendors[:2]}:
        assert consent.tcf(s, vid) == reference(s, vid)


def test_agrees_on_the_specifications_example():
    assert consent.tcf(SPEC_EXAMPLE, 1) == reference(SPEC_EXAMPLE, 1)
    example = "CO5VTlWO5VTlWH1AAAENAwCwAIAAAAAAAIAAAAoAAAAA.YAAAAAAAAAA"  # iab-tcf's own example
    assert consent.tcf(example, 8) == reference(example, 8)
