"""A short burst of exchange traffic to every region, over real HTTP, with a summary table.

This is what ``fleet up`` shows after the fleet is ready: that each region answers, how often it
bids, and how fast (client-side latency, which includes the ingress), beside what the region's own
books say of the same requests (``/stats`` before and after: the share of its requests it turned
into no-bids for the deadline, ``late (srv)``). ``on time`` is the client's share of answers back
within the request's own ``tmax``; ``shed``, of 204 ``overload`` answers (HAProxy's or the
replica's). The full exchange simulator with a market and
notices builds on the same request factory.
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
    on_time: int = 0  # answers back within the request's tmax, at the client
    shed: int = 0  # 204 overload answers (by HAProxy or the replica)
    server: dict = field(default_factory=dict)  # the region's /stats counters over the burst

    def server_share(self, key: str) -> float:
        n = self.server.get("requests", 0)
        return self.server.get(key, 0) / n if n else float("nan")

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
        req = factory.request()
        body = msgspec.json.encode(req)
        delay = start + i / rate - time.perf_counter()  # open loop at the set rate
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            async with client.post(url, data=body, headers=headers) as r:
                await r.read()
                status = r.status
                tally.shed += r.headers.get("x-fleet-reason") == "overload"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.errors += 1
            tally.error_kinds[type(exc).__name__] += 1
            return
        ms = (time.perf_counter() - t0) * 1000
        tally.latencies_ms.append(ms)
        tally.statuses[status] += 1
        tally.on_time += status in (200, 204) and ms <= req.get("tmax", 120)

    tally.sent = n
    before = await _server_counts(client, base, prefix)
    await asyncio.gather(*(one(i) for i in range(n)))
    after = await _server_counts(client, base, prefix)
    if before is not None and after is not None:
        tally.server = {k: after.get(k, 0) - before.get(k, 0) for k in SERVER_COUNTS}
    return tally


SERVER_COUNTS = ("requests", "late_suppressed", "shed")


async def _server_counts(client: aiohttp.ClientSession, base: str, prefix: str) -> dict | None:
    """The region's bidder counters (one replica's: the default is one per region)."""
    try:
        async with client.get(f"{base}{prefix}/stats") as r:
            return (await r.json()).get("bidder", {}) if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


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
    """Client side (answers, latency, on time within tmax) beside the server's late and shed shares."""
    head = (f"{'region':<14}{'sent':>6}{'answered':>10}{'bid':>6}{'no-bid':>8}{'other':>7}{'p50 ms':>9}"
            f"{'p90 ms':>9}{'p99 ms':>9}{'on time':>9}{'shed':>7} | {'late (srv)':>10}")
    lines = [head, "-" * len(head)]
    for t in tallies:
        other = t.sent - t.answered
        on_time = t.on_time / t.sent if t.sent else float("nan")
        lines.append(
            f"{t.region:<14}{t.sent:>6}{t.answered:>10}{t.statuses[200]:>6}{t.statuses[204]:>8}"
            f"{other:>7}{t.pct(0.5):>9.2f}{t.pct(0.9):>9.2f}{t.pct(0.99):>9.2f}{on_time:>9.1%}"
            f"{t.shed / t.sent if t.sent else 0:>7.1%} | {t.server_share('late_suppressed'):>10.1%}"
        )
    return "\n".join(lines)
