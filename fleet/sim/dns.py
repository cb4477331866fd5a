"""The exchanges' global DNS, simulated as ``infra/terraform/modules/global`` configures Route 53.

One latency-routed name, one record per region, each behind an HTTP health check of the
region's own ``/<region>/ready`` every ``request_interval`` seconds; a region leaves the answer
set after ``failure_threshold`` failed checks in a row and comes back after as many passes in a
row (Route 53 uses the one threshold both ways). A resolver keeps an answer for the records'
TTL. When no region is healthy Route 53 answers as if all were (fail open). ``DnsSettings``
carries the module's defaults; ``tests/test_failover.py`` reads the Terraform files and fails
when they drift apart.

Routing: an auction goes to the region it was meant for (the exchange's own, or the far region
an exchange elsewhere is pinned to) while that region is in the answer set; otherwise to the
healthy region nearest the exchange (``fleet.control.failover.nearest_healthy``, the rule
control re-leases budget by), and the round trip to that region is what the auction's network
time becomes. The DNS is the slow path (30-60 s to move a lost region's exchanges); the
exchanges' own ejection (``fleet.sim.ejection``) moves them within a second, and takes the
DNS's answer as the first endpoint to try, so a region's traffic returns only once both have it
back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from fleet.control.failover import nearest_healthy


@dataclass(frozen=True)
class DnsSettings:
    interval_s: float = 10.0  # health_check.request_interval
    threshold: int = 3  # health_check.failure_threshold
    ttl_s: float = 30.0  # ttl of the latency records
    timeout_s: float = 2.0  # a check passes on a 2xx/3xx within this (Route 53: 2 s after connecting)


class DNS:
    """Health-checked, latency-routed answers with resolver caching (times: seconds into the run)."""

    def __init__(self, latency_ms: dict[str, dict[str, float]], settings: DnsSettings | None = None):
        self.latency_ms = latency_ms
        self.s = settings or DnsSettings()
        self.healthy = {r: True for r in latency_ms}
        self._streak = {r: 0 for r in latency_ms}  # checks in a row that disagree with the status
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}  # (exchange, meant) -> answer, expiry
        self.events: list[dict] = []  # status changes: {"t", "region", "event"}
        self.checks: list[tuple[float, str, bool]] = []

    def observe(self, region: str, ok: bool, t: float) -> None:
        """One health check's outcome."""
        self.checks.append((round(t, 3), region, ok))
        if ok == self.healthy[region]:
            self._streak[region] = 0
            return
        self._streak[region] += 1
        if self._streak[region] >= self.s.threshold:
            self.healthy[region] = ok
            self._streak[region] = 0
            self.events.append({"t": round(t, 3), "region": region, "event": "healthy" if ok else "unhealthy"})

    def answer(self, source: str, meant: str) -> str:
        """What the name server answers now (no caching)."""
        serving = [r for r, ok in self.healthy.items() if ok] or list(self.healthy)  # fail open
        if meant in serving:
            return meant
        return nearest_healthy(self.latency_ms, source, serving) or meant

    def resolve(self, source: str, meant: str, t: float) -> str:
        """The answer an exchange in ``source`` uses at ``t``: its resolver's until the TTL ends."""
        key = (source, meant)
        hit = self._cache.get(key)
        if hit is not None and t < hit[1]:
            return hit[0]
        ans = self.answer(source, meant)
        self._cache[key] = (ans, t + self.s.ttl_s)
        return ans


async def ready(session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout) -> bool:
    """One health check of a region (``<base><prefix>/ready``): healthy on a 2xx or 3xx in time,
    as a Route 53 HTTP check judges it; anything else, or no answer, is unhealthy."""
    try:
        async with session.get(url, timeout=timeout) as resp:
            await resp.read()
            return 200 <= resp.status < 400
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def health_checks(dns: DNS, session: aiohttp.ClientSession, base_url: str, prefixes: dict[str, str],
                        start: float, stop: asyncio.Event) -> None:
    """Probe every region's ``/ready`` each interval (all regions at once) until ``stop``."""
    timeout = aiohttp.ClientTimeout(total=dns.s.timeout_s)

    async def probe(region: str, prefix: str) -> None:
        t = time.perf_counter() - start
        dns.observe(region, await ready(session, f"{base_url}{prefix}/ready", timeout), t)

    while not stop.is_set():
        await asyncio.gather(*(probe(r, p) for r, p in prefixes.items()))
        try:
            await asyncio.wait_for(stop.wait(), dns.s.interval_s)
        except asyncio.TimeoutError:
            pass
