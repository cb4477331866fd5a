"""Arbitrary JSON and mutated valid requests never produce a 5xx (or an exception); a wrong
optional field never produces a 400 either (issue 22)."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_fixtures
from fleet.campaigns.catalog import load_catalog
from fleet.pipeline.bidder import RegionBidder

ALLOWED = {200, 204, 400, 413}
SEEDS = [case["request"] for _, case in load_fixtures("requests")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@st.composite
def mutated_requests(draw):
    """A valid corpus request with a few fields deleted, retyped or replaced by arbitrary JSON."""
    req = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    req["id"] = f"fz-{draw(st.integers(0, 2**62))}"
    for _ in range(draw(st.integers(1, 4))):
        # Walk to a random container inside the request.
        node = req
        for _ in range(draw(st.integers(0, 4))):
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            children = [k for k in keys if isinstance(node[k], (dict, list)) and node[k]]
            if not children:
                break
            node = node[draw(st.sampled_from(children))]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(json_values)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return req


# Paths whose loss may leave nothing to bid on (a 400 by design: docs/openrtb.md); every other
# field of a request is optional, and a wrong value there must never cost the request.
NOT_OPTIONAL = {"id", "imp", "imp[]", "imp[].id", "imp[].banner", "imp[].video", "imp[].audio", "imp[].native",
                "imp[].bidfloor", "imp[].bidfloorcur"}


def _paths(node, path=(), shape=""):
    """(path, shape) of every field and list item under ``node``; shape drops list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        sub = f"{shape}[]" if isinstance(k, int) else (f"{shape}.{k}" if shape else k)
        yield (*path, k), sub
        yield from _paths(v, (*path, k), sub)


@st.composite
def wrong_optional_fields(draw):
    """A valid corpus request with one to three optional fields (at any depth) replaced by
    arbitrary JSON: a wrong type, null, an object for a list, a list for a number..."""
    req = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    req["id"] = f"fo-{draw(st.integers(0, 2**62))}"
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, shape in _paths(req) if shape not in NOT_OPTIONAL]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = req
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = draw(json_values)
    return req


@pytest.fixture(scope="module")
def bidder(regions):
    return RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_arbitrary_json_in_process(bidder, value):
    a = bidder.bid(json.dumps(value).encode(), version="2.6")
    assert a.status in ALLOWED


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=mutated_requests())
def test_mutated_requests_in_process(bidder, req):
    a = bidder.bid(json.dumps(req).encode(), version="2.6")
    assert a.status in ALLOWED
    if a.status == 200:
        json.loads(a.body)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=wrong_optional_fields())
def test_a_wrong_optional_field_is_never_a_400_in_process(bidder, req):
    a = bidder.bid(json.dumps(req).encode(), version="2.6")
    assert a.status in (200, 204), (a.status, a.body[:300])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_in_process(bidder, raw):
    assert bidder.bid(raw, version="2.6").status in ALLOWED
    assert bidder.bid(raw, content_encoding="gzip", version="2.6").status in ALLOWED


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=mutated_requests(), value=json_values)
def test_fuzz_over_http_never_5xx(fleet_http, req, value):
    with httpx.Client(base_url=fleet_http, timeout=10) as client:
        headers = {"content-type": "application/json", "x-openrtb-version": "2.6"}
        r1 = client.post("/eu-west/openrtb2/bid", content=json.dumps(req), headers=headers)
        r2 = client.post("/eu-west/openrtb2/bid", content=json.dumps(value), headers=headers)
    assert r1.status_code in ALLOWED, r1.text[:200]
    assert r2.status_code in ALLOWED, r2.text[:200]


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=wrong_optional_fields())
def test_a_wrong_optional_field_is_never_a_400_over_http(fleet_http, req):
    r = httpx.post(f"{fleet_http}/us-east/openrtb2/bid", content=json.dumps(req), timeout=10,
                   headers={"content-type": "application/json", "x-openrtb-version": "2.6"})
    assert r.status_code in (200, 204), r.text[:300]


# -- inputs a fuzzer found (2026-11-23): each was an exception, so a 500 behind Serve --------------

@pytest.mark.parametrize("raw", [b'{"id":"\xff","imp":[]}', b'{"id":"a","imp":[{"id":"\xc3"}]}',
                                 b'{"id":"\xed\xa0\x80","imp":[]}'])
def test_invalid_utf8_in_a_string_field_is_a_400(bidder, raw):
    import gzip

    for body, enc in ((raw, None), (gzip.compress(raw), "gzip")):
        a = bidder.bid(body, content_encoding=enc, version="2.6")
        assert a.status == 400 and "UTF-8" in a.body.decode()


def test_a_deeply_nested_native_request_string_is_answered(bidder):
    body = json.dumps({"id": "deep-native", "imp": [{"id": "1", "native": {"request": "[" * 1000 + "]" * 1000}}]})
    a = bidder.bid(body.encode(), version="2.6")
    assert a.status in (200, 204)
    if a.status == 200:
        json.loads(a.body)


def test_a_response_that_cannot_be_built_is_a_no_bid_that_gives_its_reservations_back(regions):
    """Whatever breaks while the response is built (here the notice signer), the answer is a
    no-bid with a reason and the budget reserved for its bids is released."""
    class BrokenSigner:
        def sign(self, fields):
            raise RuntimeError("signing key unreadable")

    catalog = load_catalog(regions.defaults.catalog)
    ok = RegionBidder("us-east", regions, catalog)
    seed = next(s for s in SEEDS if ok.bid(json.dumps({**s, "id": "probe"}).encode(), version="2.6").status == 200)
    broken = RegionBidder("us-east", regions, catalog, signer=BrokenSigner())
    a = broken.bid(json.dumps(seed).encode(), version="2.6")
    assert (a.status, a.headers["x-fleet-reason"]) == (204, "respond_error")
    assert broken.stats["errors.respond"] == 1 and broken.budget.reserved == {}


def test_imps_past_the_limit_are_not_bid_on(bidder):
    """A request of 2,500 imps (64 KB) once took 67-300 ms of one event loop; past ``max_imps``
    the imps are counted and left out, so the work per request is bounded."""
    before = bidder.stats["imp.over_limit"]
    body = json.dumps({"id": "many-imps", "imp": [{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(200)]})
    a = bidder.bid(body.encode(), version="2.6")
    assert a.status in (200, 204)
    assert bidder.stats["imp.over_limit"] - before == 200 - bidder.max_imps
    if a.status == 200:
        assert all(int(b["impid"]) < bidder.max_imps for sb in json.loads(a.body)["seatbid"] for b in sb["bid"])
