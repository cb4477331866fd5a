"""What the ledger costs the bidder, and how fast its consumer goes.

Emission: the CPU the request path spends per event (``emit``: an encode and an append) and the
flush task's CPU per event (one pipelined XADD per batch), measured on the same events in the
same process against a real redis-server; the cost to the bidder is that per-event CPU times the
events per answered request (selected + response, and the notices that come back), as a share
of the CPU one request costs at the region's measured capacity (``capacity-<region>*.json``).

Consumer: events of a simulated run (bids from the in-process bidder and the exchange's
notices for them, duplicates included) written to a stream, then applied by one consumer; its
rate against the region's bid capacity, in events per bid.

Sweep: ``sweep_bids`` open bids (50,000) all past their deadline, expired by the consumer's
sweep; its rate in bids per second of sweep time, and what one sweep a second (each at most
``SWEEP_BUDGET_S``) can expire, against the region's bid rate (about 1,000 bids/s on the 2-core
box, and 5x that). Alone: ``python -m fleet.bench.ledger sweep [N]`` (its own redis-server).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from fleet.ledger.consumer import SWEEP_BATCH, SWEEP_BUDGET_S, LedgerConsumer
from fleet.ledger.emitter import EventEmitter
from fleet.ledger.events import Event, notice_event
from fleet.ledger.signing import NoticeSigner


def _outcome(rng: random.Random, bid: dict) -> list[tuple[str, float]]:
    price = bid["price"] * 0.7
    return [("win", price), ("bill", price)] if rng.random() < 0.5 else [("loss", price)]


def simulated_events(region: str, n_requests: int, seed: int = 1) -> tuple[list[Event], int]:
    """(events of the bid path and of the notices, number of requests answered with a bid)."""
    from fleet.pipeline.notices import parse_notice
    from fleet.harness.offline import bids_and_notices

    signer = NoticeSigner({"bench": b"b" * 32})
    events, notices, answered = bids_and_notices(region, n_requests, seed, signer, "bench", _outcome)
    for kind, query in notices:
        events.append(notice_event(kind, parse_notice(kind, query, region, signer), time.time()))
    return events, answered


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


REGION_BIDS_PER_S = 1_000.0  # a region's bid rate on the 2-core box (docs/ledger.md)


async def _sweep(url: str, region: str, n: int, spill: Path) -> dict:
    """``n`` selected bids whose deadline has passed, applied, then swept until none are due."""
    region = f"{region}-sweep"
    now = time.time()
    em = EventEmitter(region, url, spill)
    em.emit_many([Event(f"selected:s{i}", "selected", now - 60, region, f"s{i}", f"sa{i}", "1", f"c{i % 50}",
                        price=1000.0, user=f"u{i}", bid_ts=now - 60, until=now - 1) for i in range(n)])
    await em.close()
    c = LedgerConsumer(region, url, expire_s=3600)
    await c.ensure_group()
    await c.drain()
    calls = []
    while True:
        t0 = time.perf_counter()
        k = await c.sweep()
        if not k:
            break
        calls.append((k, time.perf_counter() - t0))
    # one script call (what Redis runs without answering anyone else)
    t0 = time.perf_counter()
    await c._sweep(keys=[c.prefix], args=[time.time(), SWEEP_BATCH])
    empty_call_ms = (time.perf_counter() - t0) * 1000
    left = await c.redis.zcard(c.prefix + "open")
    await c.close()
    swept, secs = sum(k for k, _ in calls), sum(t for _, t in calls)
    rate = swept / secs
    return {"due_bids": n, "expired": swept, "left_open": left, "sweep_calls": len(calls), "seconds": secs,
            "bids_per_s": rate, "batch": SWEEP_BATCH, "ms_per_batch": SWEEP_BATCH / rate * 1000,
            "empty_call_ms": empty_call_ms, "budget_s": SWEEP_BUDGET_S, "max_call_s": max(t for _, t in calls),
            "expirable_per_s": rate * SWEEP_BUDGET_S,  # one sweep a second, each within its budget
            "vs_region_bids_1x": rate * SWEEP_BUDGET_S / REGION_BIDS_PER_S,
            "vs_region_bids_5x": rate * SWEEP_BUDGET_S / (5 * REGION_BIDS_PER_S)}


def sweep_bench(url: str, region: str, n: int, spill_dir: Path) -> dict:
    doc = asyncio.run(_sweep(url, region, n, spill_dir / "bench-sweep.bin"))
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in doc.items()}


def run(url: str, region: str, requests: int, capacity_rps: float | None, spill_dir: Path,
        sweep_bids: int = 50_000) -> dict:
    events, answered = simulated_events(region, requests)
    per_request = len(events) / requests
    emission = asyncio.run(_emission(url, events, spill_dir / "bench-emit.bin"))
    dup = events + random.Random(2).sample(events, len(events) // 10)  # 10% resent notices
    consumer = asyncio.run(_consume(url, region, dup, spill_dir / "bench-consume.bin"))
    doc = {"benchmark": "ledger", "region": region, "requests": requests, "answered_with_bid": answered,
           "events": len(events), "events_per_request": round(per_request, 3), **{k: round(v, 3) for k, v in emission.items()},
           "consumer": {k: round(v, 3) if isinstance(v, float) else v for k, v in consumer.items()}}
    if sweep_bids:
        doc["sweep"] = sweep_bench(url, region, sweep_bids, spill_dir)
    if capacity_rps:
        per_req_us = 1e6 / capacity_rps  # CPU-seconds per request at capacity on one core's worth
        cost_us = per_request * (emission["emit_us_per_event"] + emission["flush_us_per_event"])
        doc["region_capacity_rps"] = capacity_rps
        doc["emission_share_of_request_cpu"] = round(cost_us / per_req_us, 4)
        doc["consumer_vs_capacity_events"] = round(consumer["events_per_s"] / (capacity_rps * per_request), 2)
    return doc


if __name__ == "__main__":  # python -m fleet.bench.ledger sweep [N]: the sweep alone
    import json
    import sys
    import tempfile

    from fleet.runtime import local

    if sys.argv[1:2] != ["sweep"]:
        sys.exit("usage: python -m fleet.bench.ledger sweep [N]  (the whole bench: fleet bench ledger)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    url, _, proc = local.start_redis(tmp / "redis")
    try:
        print(json.dumps(sweep_bench(url, "us-east", int(sys.argv[2]) if len(sys.argv) > 2 else 50_000, tmp), indent=2))
    finally:
        proc.terminate()
