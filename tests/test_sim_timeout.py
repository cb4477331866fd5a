"""The simulated exchange stops waiting for a bid at the request's own tmax (plus a margin), as a
real one does, not at a fixed client timeout: an answer it stopped waiting for is not answered in
time, and one that comes back after tmax but before it gave up is late. No Ray: a slow local
HTTP server stands in for a region."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from aiohttp import web

from fleet.config import load_regions
from fleet.sim.exchange import AuctionRecord, Exchanges, SimConfig
from fleet.sim.market import Market
from local_http import local_server

DELAY_S = 0.4  # well past a tmax of 80 ms plus the margin, well inside the old fixed 2 s


def _run(tmaxes: list[int], delay_s: float = DELAY_S) -> list[AuctionRecord]:
    """One auction per tmax (all to us-east, no simulated network), each answered 204 by a
    server that holds every bid request ``delay_s`` first."""
    regions = load_regions()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.Response(status=204)

    async def go() -> list[AuctionRecord]:
        async with local_server(handle) as base:
            market = Market(seed=3, regions=tuple(regions.regions))
            ex = Exchanges(market, regions, [], SimConfig(base_url=base), progress=lambda _: None)
            rng = random.Random(1)
            recs = []
            for tmax in tmaxes:
                opp = market.opportunity(rng, "us-east")
                opp.tmax = tmax
                recs.append(AuctionRecord(opp=opp, t=0.0, network_ms=0.0, region="us-east"))
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session:
                await asyncio.gather(*(ex.auction(session, r) for r in recs))
            return recs

    return asyncio.run(go())


def test_the_exchange_stops_waiting_at_the_requests_tmax_not_a_fixed_timeout():
    short, long_ = _run([80, 1000])
    # tmax 80 ms: the exchange gave up long before the 0.4 s answer (a fixed 2 s timeout took it
    # as a late 204): not answered, not in time, and said so as a timeout.
    assert short.status == 0 and short.late and short.timed_out
    assert short.server_ms > 0  # how long it waited is kept
    # tmax 1 s: the same slow server answers within it, on time.
    assert long_.status == 204 and not long_.late and not long_.timed_out


def test_the_exchange_timeout_is_the_tmax_plus_the_margin():
    ex = Exchanges(Market(seed=1), load_regions(), [], SimConfig(timeout_margin_ms=50.0))
    assert ex.wait_s(80) == 0.13
    assert ex.wait_s(150) == 0.2


def test_a_timed_out_auction_is_scored_as_late_not_as_a_fleet_error():
    """The scorecard's buckets: a timeout is an answer that did not come in time (the exchange's
    own clock), not an error the fleet answered."""
    from fleet.sim.scorecard import bucket_of

    (short,) = _run([80])
    assert bucket_of(short) == "late"
    refused = AuctionRecord(opp=short.opp, t=0.0, status=0)
    assert bucket_of(refused) == "error"
