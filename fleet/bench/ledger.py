"""What the ledger costs the bidder, and how fast its consumer goes.

Emission: the CPU the request path spends per event (``emit``: an encode and an append) and the
flush task's CPU per event (one pipelined XADD per batch), measured on the same events in the
same process against a real redis-server; the cost to the bidder is that per-event CPU times the
events per answered request (selected + response, and the notices that come back), as a share
of the CPU one request costs at the region's measured capacity (``capacity-<region>*.json``).

Consumer: events of a simulated run (bids from the in-process bidder and the exchange's
notices for them, duplicates included) written to a stream, then applied by one consumer; its
rate against the region's bid capacity, in events per bid.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

from fleet.ledger.consumer import LedgerConsumer
from fleet.ledger.emitter import EventEmitter
from fleet.ledger.events import Event, notice_event
from fleet.ledger.signing import NoticeSigner


def simulated_events(region: str, n_requests: int, seed: int = 1) -> tuple[list[Event], int]:
    """(events of the bid path and of the notices, number of requests answered with a bid)."""
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.pipeline.bidder import RegionBidder
    from fleet.pipeline.notices import parse_notice
    from fleet.sim.traffic import RequestFactory

    regions = load_regions()
    signer = NoticeSigner({"bench": b"b" * 32})
    bidder = RegionBidder(region, regions, load_catalog(regions.defaults.catalog), signer=signer)
    f, rng = RequestFactory(region, seed), random.Random(seed)
    out: list[Event] = []
    answered = 0
    for i in range(n_requests):
        req = f.request()
        req["id"] = f"bench-{seed}-{i}"
        a = bidder.bid(json.dumps(req).encode(), version="2.6")
        out.extend(a.ledger)
        if a.status != 200:
            continue
        answered += 1
        for sb in json.loads(a.body)["seatbid"]:
            for b in sb["bid"]:
                price = f"{b['price'] * 0.7:.4f}"
                kinds = [("win", "nurl"), ("bill", "burl")] if rng.random() < 0.5 else [("loss", "lurl")]
                for kind, key in kinds:
                    url = (b[key].replace("${AUCTION_PRICE}", price).replace("${AUCTION_CURRENCY}", "USD")
                           .replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", price))
                    n = parse_notice(kind, urlsplit(url).query, region, signer)
                    out.append(notice_event(kind, n, time.time()))
    return out, answered


async def _emission(url: str, events: list[Event], spill: Path) -> dict:
    em = EventEmitter("bench", url, spill, flush_s=0.05)
    t0 = time.process_time()
    for ev in events:
        em.emit(ev)  # what the request path does
    emit_cpu = time.process_time() - t0
    t0 = time.process_time()
    await em.flush()
    flush_cpu = time.process_time() - t0
    await em.close()
    return {"emit_us_per_event": emit_cpu / len(events) * 1e6, "flush_us_per_event": flush_cpu / len(events) * 1e6}


async def _consume(url: str, region: str, events: list[Event], spill: Path) -> dict:
    em = EventEmitter(region, url, spill)
    em.emit_many(events)
    await em.close()
    c = LedgerConsumer(region, url, expire_s=3600)
    await c.ensure_group()
    t0 = time.perf_counter()
    n = await c.drain()
    elapsed = time.perf_counter() - t0
    await c.close()
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed, "applied": c.applied,
            "duplicates": c.duplicates}


def run(url: str, region: str, requests: int, capacity_rps: float | None, spill_dir: Path) -> dict:
    events, answered = simulated_events(region, requests)
    per_request = len(events) / requests
    emission = asyncio.run(_emission(url, events, spill_dir / "bench-emit.bin"))
    dup = events + random.Random(2).sample(events, len(events) // 10)  # 10% resent notices
    consumer = asyncio.run(_consume(url, region, dup, spill_dir / "bench-consume.bin"))
    doc = {"benchmark": "ledger", "region": region, "requests": requests, "answered_with_bid": answered,
           "events": len(events), "events_per_request": round(per_request, 3), **{k: round(v, 3) for k, v in emission.items()},
           "consumer": {k: round(v, 3) if isinstance(v, float) else v for k, v in consumer.items()}}
    if capacity_rps:
        per_req_us = 1e6 / capacity_rps  # CPU-seconds per request at capacity on one core's worth
        cost_us = per_request * (emission["emit_us_per_event"] + emission["flush_us_per_event"])
        doc["region_capacity_rps"] = capacity_rps
        doc["emission_share_of_request_cpu"] = round(cost_us / per_req_us, 4)
        doc["consumer_vs_capacity_events"] = round(consumer["events_per_s"] / (capacity_rps * per_request), 2)
    return doc
