"""A short burst of exchange traffic to every region, over real HTTP, with a summary table.

This is what ``fleet up`` shows after the fleet is ready: that each region answers, how often it
bids, and how fast (client-side latency, which includes the ingress). The full exchange simulator
with a market and notices builds on the same request factory.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import msgspec

from fleet.sim.traffic import RequestFactory


@dataclass
class RegionTally:
    region: str
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return self.statuses[200] + self.statuses[204]

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _region_burst(client: aiohttp.ClientSession, base: str, region: str, prefix: str, n: int,
                        rate: float, seed: int) -> RegionTally:
    factory = RequestFactory(region, seed)
    tally = RegionTally(region)
    url = f"{base}{prefix}/openrtb2/bid"
    headers = {"content-type": "application/json", "x-openrtb-version": "2.6"}
    start = time.perf_counter()

    async def one(i: int) -> None:
        body = msgspec.json.encode(factory.request())
        delay = start + i / rate - time.perf_counter()  # open loop at the set rate
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            async with client.post(url, data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.errors += 1
            tally.error_kinds[type(exc).__name__] += 1
            return
        tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
        tally.statuses[status] += 1

    tally.sent = n
    await asyncio.gather(*(one(i) for i in range(n)))
    return tally


async def run_burst(base: str, regions: dict[str, str], n: int = 200, rate: float = 100.0,
                    seed: int = 1) -> list[RegionTally]:
    # aiohttp rather than httpx here: on 2 shared cores the client's own CPU per request
    # shows up in the latency it measures, and aiohttp's is several times lower.
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        return list(await asyncio.gather(*(
            _region_burst(client, base, name, prefix, n, rate, seed + i)
            for i, (name, prefix) in enumerate(regions.items())
        )))


def format_table(tallies: list[RegionTally]) -> str:
    head = f"{'region':<14}{'sent':>6}{'answered':>10}{'bid':>6}{'no-bid':>8}{'other':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
    lines = [head, "-" * len(head)]
    for t in tallies:
        other = t.sent - t.answered
        lines.append(
            f"{t.region:<14}{t.sent:>6}{t.answered:>10}{t.statuses[200]:>6}{t.statuses[204]:>8}"
            f"{other:>7}{t.pct(0.5):>9.2f}{t.pct(0.9):>9.2f}{t.pct(0.99):>9.2f}"
        )
    return "\n".join(lines)
