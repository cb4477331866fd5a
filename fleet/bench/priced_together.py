"""Pricing together against alone, in process: a region replica's CPU per request when the
requests that reach pricing in one pass of its loop share one model call and one shading pass
(``fleet.region.pricing.LocalPricing``), against each pricing alone, the same requests.

A region without Ray (no cache, ledger or control: what differs is pricing), the ctr/v1 model on
ONNX Runtime's CPU, requests from the simulator's factory with fresh ids, driven ``concurrency``
at a time (``asyncio.gather``: the requests a replica has under way at saturation all reach
pricing in the same pass). CPU time (``time.process_time``), best of ``rounds``, the variants
alternated within each round so a busy machine's drift falls on both.

    fleet bench pricing-together [--requests 3000] [--rounds 5] [--concurrency 1,2,4,8]
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec

HEADERS = {"x-openrtb-version": "2.6"}


def _region(together: bool):
    from fleet.config import RegionAppArgs, load_regions
    from fleet.region.runtime import Region

    regions = load_regions()
    spec = regions.regions["us-east"].model_copy(update={"max_tmax_ms": 600_000})  # no deadline drops
    config = regions.model_copy(update={"regions": {**regions.regions, "us-east": spec}})
    region = Region(RegionAppArgs(region="us-east", model_backend="onnx-cpu", cache=False, telemetry=False,
                                  control=False, ledger=False), config=config)
    region.reconfigure({"model": "ctr/v1"})
    region.local.together = together
    return region


async def _drive(region, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    t0 = time.process_time()
    bids = 0
    for i in range(0, len(bodies), concurrency):
        answers = await asyncio.gather(*(region.bid(b, HEADERS) for b in bodies[i:i + concurrency]))
        bids += sum(a.status == 200 for a in answers)
    return (time.process_time() - t0) / len(bodies) * 1e6, bids


def run(requests: int = 3000, rounds: int = 5, concurrency: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    from fleet.sim.traffic import RequestFactory

    factory = RequestFactory("us-east", seed=11)

    def bodies() -> list[bytes]:
        return [msgspec.json.encode({**factory.request(), "tmax": 600_000}) for _ in range(requests)]

    async def go() -> dict:
        regions = {"alone": _region(False), "together": _region(True)}
        for r in regions.values():  # warm both (the model's first calls, the caches)
            await _drive(r, bodies()[: requests // 5], 4)
        out = {}
        for c in concurrency:
            regions["together"].local.peers = lambda c=c: c  # what the bid front counts under way
            best = {k: float("inf") for k in regions}
            bids = {}
            for n in range(rounds):
                order = list(regions) if n % 2 == 0 else list(regions)[::-1]
                for k in order:
                    us, bids[k] = await _drive(regions[k], bodies(), c)
                    best[k] = min(best[k], us)
            shared = regions["together"].local
            out[str(c)] = {"alone_us": round(best["alone"], 1), "together_us": round(best["together"], 1),
                           "ratio": round(best["together"] / best["alone"], 3), "bids": bids}
        out["priced_together"] = {"passes": shared.batches, "requests": shared.batched}
        for r in regions.values():
            await r.stop()
        return out

    return {"benchmark": "priced_together", "requests": requests, "rounds": rounds,
            "method": "in process, CPU per request (process_time), best of rounds, variants alternated",
            "results": asyncio.run(go())}


def run_priced_together(out: Path, requests: int, rounds: int, concurrency: tuple[int, ...], log=print) -> dict:
    doc = run(requests, rounds, concurrency)
    for c, r in doc["results"].items():
        if c != "priced_together":
            log(f"concurrency {c}: alone {r['alone_us']} us, together {r['together_us']} us (x{r['ratio']})")
    out.write_text(json.dumps(doc, indent=1))
    return doc
