"""An idle region's replica rests (docs/benchmarks.md, "Idle background"): its event-loop lag
watch samples every 20 ms while requests come, however sparse, and at most once a second after
a second without any (back within a second of the next request), as a cache shard's does. An
idle region's replica woke 50 times a second for a figure no request waited behind. No Ray."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path

from fleet.config import RegionAppArgs
from fleet.region.runtime import Region

FIXTURES = Path(__file__).parent / "fixtures"
HEADERS = {"x-openrtb-version": "2.6"}


def _request(rid: str) -> bytes:
    req = copy.deepcopy(json.loads((FIXTURES / "requests" / "banner_site_us.json").read_text())["request"])
    req["id"] = rid
    return json.dumps(req).encode()


def _samples(region: Region) -> int:
    return sum(region.stats()["loop_lag"].get("loop_lag", []))


def test_the_replica_samples_its_loop_lag_while_serving_and_rests_while_idle(regions):
    async def run():
        region = Region(RegionAppArgs(region="us-east", cache=False, telemetry=False, control=False, ledger=False),
                        config=regions)
        end = time.monotonic() + 10.0
        while not region.warm:  # its warm-up bids are requests too: done before the idle part
            assert time.monotonic() < end, region.warm_error
            await region.bid(_request(f"w-{time.monotonic()}"), HEADERS)
            await asyncio.sleep(0.05)
        before = _samples(region)
        for i in range(20):  # serving, sparsely (a request every 50 ms): sampled every 20 ms
            await region.bid(_request(f"r-{i}"), HEADERS)
            await asyncio.sleep(0.05)
        busy = _samples(region) - before
        await asyncio.sleep(1.1)  # a second without requests makes it idle
        settled = _samples(region)
        await asyncio.sleep(0.6)  # idle
        idle = _samples(region) - settled
        await region.stop()
        return busy, idle

    busy, idle = asyncio.run(run())
    assert busy >= 25  # ~1 s at 20 ms: not resting between two requests
    assert idle <= 1  # 0.6 s idle: at most one wake-up, not thirty
