"""The exchanges' outlier ejection (``fleet.sim.ejection``), driven with fake time, and once
wired into the simulated exchange against an in-process HTTP server (no Ray)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from fleet.config import load_regions
from fleet.sim.ejection import EjectionSettings, Ejector, failed
from local_http import local_server

LAT = load_regions().latency_ms


def test_what_counts_as_a_failure():
    """No answer, 404 and 5xx on the bid route fail; a no-bid (shed included) is an answer."""
    assert failed(0) and failed(404) and failed(500) and failed(503)
    assert not failed(200) and not failed(204) and not failed(400)


def test_endpoints_are_ordered_by_round_trip_from_the_exchange():
    ej = Ejector(LAT)
    assert ej.order("us-east", "us-east") == ["us-east", "eu-west", "ap-southeast"]
    assert ej.order("ap-southeast", "ap-southeast") == ["ap-southeast", "eu-west", "us-east"]
    # Where the DNS moved the region, its answer comes first.
    assert ej.order("us-east", "eu-west") == ["eu-west", "us-east", "ap-southeast"]


def test_consecutive_failures_eject_and_a_success_resets_the_count():
    ej = Ejector(LAT, EjectionSettings(consecutive=3))
    ej.record("us-east", 404, 0.0, 0.1)
    ej.record("us-east", 0, 0.0, 0.2)
    ej.record("us-east", 204, 0.0, 0.3)  # an answer: the count starts over
    ej.record("us-east", 500, 0.0, 0.4)
    ej.record("us-east", 0, 0.0, 0.5)
    assert ej.route("us-east", "us-east") == "us-east"
    ej.record("us-east", 404, 0.0, 0.6)  # third in a row
    assert ej.ejected("us-east")
    assert ej.route("us-east", "us-east") == "eu-west"
    assert ej.route("ap-southeast", "us-east") == "ap-southeast"  # a far exchange: the region nearest it
    assert ej.route("eu-west", "eu-west") == "eu-west"  # others unmoved
    assert ej.events == [{"t": 0.6, "region": "us-east", "event": "ejected", "for_s": 2.0}]


def test_backoff_doubles_to_its_cap_and_one_ready_check_per_period_readmits():
    s = EjectionSettings(consecutive=1, base_s=2.0, max_s=30.0)
    ej = Ejector(LAT, s)
    ej.record("us-east", 0, 0.0, 10.0)
    t, lengths = 10.0, []
    for _ in range(6):
        assert ej.due(t + 1.0) == []  # backoff not over
        until = ej._ep["us-east"].ejected_until
        lengths.append(round(until - t, 6))
        assert ej.due(until) == ["us-east"] and ej.due(until) == []  # one check at a time
        t = until
        ej.probed("us-east", False, t)
    assert lengths == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    t = ej._ep["us-east"].ejected_until
    assert ej.due(t) == ["us-east"]
    assert ej.route("us-east", "us-east") == "eu-west"  # ejected while the check is out
    ej.probed("us-east", True, t)
    assert ej.route("us-east", "us-east") == "us-east"
    assert ej.events[-1] == {"t": round(t, 3), "region": "us-east", "event": "readmitted"}
    # Failing again soon after: ejected for longer still (the cap); after max_s in the pool: base again.
    ej.record("us-east", 0, t + 1, t + 1)
    assert ej.events[-1]["for_s"] == 30.0
    ej.probed("us-east", True, t2 := t + 31)
    ej.record("us-east", 204, t2 + 31, t2 + 31)
    ej.record("us-east", 0, t2 + 32, t2 + 32)
    assert ej.events[-1]["for_s"] == 2.0


def test_stale_outcomes_say_nothing_about_a_readmitted_region():
    """Auctions sent before the ejection or the readmission come back late: they neither extend
    an ejection nor eject a region just readmitted."""
    ej = Ejector(LAT, EjectionSettings(consecutive=2))
    ej.record("us-east", 0, 0.0, 2.0)
    ej.record("us-east", 0, 0.0, 2.0)
    assert ej.ejected("us-east")
    for _ in range(10):
        ej.record("us-east", 0, 0.5, 2.1)  # in flight when it was ejected
    assert [e["event"] for e in ej.events] == ["ejected"]
    ej.due(4.0)
    ej.probed("us-east", True, 4.0)
    for _ in range(5):
        ej.record("us-east", 0, 1.0, 4.5)  # sent before the readmission
    assert not ej.ejected("us-east")


def test_with_every_region_ejected_it_sends_to_the_first_anyway():
    ej = Ejector(LAT, EjectionSettings(consecutive=1))
    for r in LAT:
        ej.record(r, 0, 0.0, 1.0)
    assert ej.route("eu-west", "eu-west") == "eu-west"


# -- wired into the simulated exchange ------------------------------------------------------------

def test_the_exchange_sends_a_failing_regions_auctions_to_the_next_nearest():
    """us-east's routes answer 404 (its application gone) from the start: after three failed
    auctions its exchanges send to eu-west and pay eu-west's round trip; nothing is resent."""
    from fleet.sim.exchange import Exchanges, SimConfig
    from fleet.sim.market import Market

    regions = load_regions()
    prefix = {s.route_prefix: n for n, s in regions.regions.items()}
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        region = prefix.get("/" + request.path.split("/")[1])
        seen.append(f"{region} {request.path.rsplit('/', 1)[-1]}")
        if region == "us-east":
            return web.Response(status=404)
        return web.Response(status=200 if request.path.endswith("/ready") else 204)

    async def go():
        async with local_server(handle) as base:
            cfg = SimConfig(base_url=base, duration_s=3.0, rate=60.0, seed=3,
                            diurnal_amplitude=0.0, burst_every_s=1e9, cross_region_share=0.0, grace_s=0.0)
            ej = Ejector(regions.latency_ms)
            ex = Exchanges(Market(seed=3, regions=tuple(regions.regions)), regions, [], cfg,
                           progress=lambda _: None, ejector=ej)
            return await ex.run(), ej

    records, ej = asyncio.run(go())
    meant = [r for r in records if r.opp.region == "us-east"]
    to_east = [r for r in meant if r.region == "us-east"]
    moved = [r for r in meant if r.region == "eu-west"]
    assert ej.events[0]["region"] == "us-east" and ej.events[0]["event"] == "ejected"
    assert all(r.status == 404 for r in to_east)
    assert len(to_east) < len(moved), (len(to_east), len(moved))
    assert moved and all(r.status == 204 and r.network_ms == LAT["us-east"]["eu-west"] for r in moved)
    # Each auction was sent once: the bid requests the server saw are the records, no resends.
    assert sum(1 for s in seen if s.endswith(" bid")) == len(records)
    assert all(r.region == r.opp.region for r in records if r.opp.region != "us-east")

