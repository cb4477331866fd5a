"""The OpenRTB fixture corpus, in-process and through the real Serve ingress."""

from __future__ import annotations

import httpx
import pytest

from corpus import check_answer, check_tolerated, wire
from conftest import load_fixtures
from fleet.campaigns.catalog import load_catalog
from fleet.pipeline.bidder import RegionBidder

REQUESTS = load_fixtures("requests")
MALFORMED = load_fixtures("malformed")


@pytest.fixture(scope="module")
def bidders(regions):
    catalog = load_catalog(regions.defaults.catalog)
    return {name: RegionBidder(name, regions, catalog) for name in regions.regions}


def _bid(bidder, body, headers):
    return bidder.bid(body, content_encoding=headers.get("content-encoding"),
                      accept_encoding=headers.get("accept-encoding"),
                      version=headers.get("x-openrtb-version"))


@pytest.mark.parametrize("name,case", REQUESTS, ids=[n for n, _ in REQUESTS])
def test_request_in_process(bidders, name, case):
    body, headers = wire(case)
    bidder = bidders[case["region"]]
    before = dict(bidder.stats)
    a = _bid(bidder, body, headers)
    check_answer(case, a.status, a.headers, a.body)
    check_tolerated(case, before, bidder.stats)


@pytest.mark.parametrize("name,case", MALFORMED, ids=[n for n, _ in MALFORMED])
def test_malformed_in_process(bidders, name, case):
    body, headers = wire(case)
    a = _bid(bidders["us-east"], body, headers)
    assert a.status == case["expect_status"], a.reason
    assert a.reason


@pytest.mark.slow
@pytest.mark.parametrize("name,case", REQUESTS, ids=[n for n, _ in REQUESTS])
def test_request_over_http(fleet_http, regions, name, case):
    body, headers = wire(case)
    prefix = regions.regions[case["region"]].route_prefix
    stats = f"{fleet_http}{prefix}/stats"
    before = httpx.get(stats, timeout=10).json()["bidder"] if "tolerated" in case["expect"] else {}
    r = httpx.post(f"{fleet_http}{prefix}/openrtb2/bid", content=body, headers=headers, timeout=10)
    check_answer(case, r.status_code, dict(r.headers), r.content)
    if "tolerated" in case["expect"]:  # counted on the region's /stats (one replica per region)
        check_tolerated(case, before, httpx.get(stats, timeout=10).json()["bidder"])


@pytest.mark.slow
@pytest.mark.parametrize("name,case", MALFORMED, ids=[n for n, _ in MALFORMED])
def test_malformed_over_http(fleet_http, name, case):
    body, headers = wire(case)
    r = httpx.post(f"{fleet_http}/us-east/openrtb2/bid", content=body, headers=headers, timeout=10)
    assert r.status_code == case["expect_status"], r.text[:200]
    assert r.json()["error"]


@pytest.mark.slow
def test_duplicate_request_id_over_http(fleet_http):
    case = dict(REQUESTS)["banner_site_us"]
    body, headers = wire({**case, "request": {**case["request"], "id": "dup-over-http"}})
    first = httpx.post(f"{fleet_http}/us-east/openrtb2/bid", content=body, headers=headers)
    second = httpx.post(f"{fleet_http}/us-east/openrtb2/bid", content=body, headers=headers)
    assert first.status_code == 200
    assert second.status_code == 204
    assert second.headers["x-openrtb-nbr"] == "2"
    assert second.headers["x-fleet-reason"] == "duplicate_request_id"


@pytest.mark.slow
def test_stats_report_the_event_loop_lag(fleet_http):
    """/stats carries the replica's event-loop lag beside the stage histograms (a slow shard and
    a busy replica look alike in an awaited stage's tail; the lag tells them apart)."""
    import time

    from fleet.obs.histogram import quantile

    first = httpx.get(f"{fleet_http}/us-east/stats").json()["loop_lag"].get("loop_lag", [])
    # the monitor samples every 20 ms while requests come (a replica without any rests: back
    # within a second of the next one)
    case = dict(REQUESTS)["banner_site_us"]
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        body, headers = wire({**case, "request": {**case["request"], "id": f"lag-{time.monotonic()}"}})
        httpx.post(f"{fleet_http}/us-east/openrtb2/bid", content=body, headers=headers, timeout=10)
        time.sleep(0.02)
    lag = httpx.get(f"{fleet_http}/us-east/stats").json()["loop_lag"]["loop_lag"]
    assert sum(lag) > sum(first) + 10
    assert quantile(lag, 0.5) is not None and quantile(lag, 0.5) < 1.0  # seconds: a live loop


@pytest.mark.slow
def test_bids_are_served_by_the_regions_bid_front(fleet_http, regions):
    """Every region's bids come through its replica's bid front (fleet/serve/bid_front.py), past
    Serve's HTTP; the answers above are that path's. A region whose front did not start (or whose
    HAProxy does not route to it) would still answer, through Serve: this is what says which."""
    case = dict(REQUESTS)["banner_site_us"]
    for name, spec in regions.regions.items():
        stats = f"{fleet_http}{spec.route_prefix}/stats"
        before = httpx.get(stats, timeout=10).json()["bid_front"]
        body, headers = wire({**case, "region": name, "request": {**case["request"], "id": f"front-{name}"}})
        r = httpx.post(f"{fleet_http}{spec.route_prefix}/openrtb2/bid", content=body, headers=headers, timeout=10)
        after = httpx.get(stats, timeout=10).json()["bid_front"]
        assert r.status_code in (200, 204) and after["serving"], (name, after)
        assert after["requests"] == before["requests"] + 1, (name, before, after)
