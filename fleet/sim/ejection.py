"""Client-side outlier ejection: how an exchange stops sending to a failing bidder region within
a second or two, long before the global DNS moves it (30-60 s: three failed checks 10 s apart,
then the resolvers' 30 s TTL; ``fleet.sim.dns``).

Bidders publish regional endpoints beside the global name, and an exchange orders a bidder's
endpoints by round trip from where it sits (``regions.yaml``'s latency matrix): the region the DNS
answered first, then the others nearest first. Like Envoy's outlier detection in front of an
exchange's bidder adapters, it counts each region's outcomes: ``consecutive`` failures in a row
(no answer at all: refused, reset, timed out; or 404/5xx on the bid route) eject the region for a
backoff that starts at ``base_s`` and doubles with each ejection in a row up to ``max_s``. While
a region is ejected its auctions go straight to the next endpoint in the order, and the round trip
to that one is what they pay. When the backoff runs out one ``/<region>/ready`` check (one request,
no auction spent on it) decides: a pass readmits the region, a failure ejects it again for twice
as long. A region that stays in the pool for ``max_s`` after a readmission starts over at
``base_s``. When every endpoint is ejected the exchange sends to the first anyway (Envoy's panic
mode: ejecting everyone would answer nothing).

A 204 (no bid, shed included) and a late answer are answers: they never count as failures. An
exchange does not resend a bid request within an auction, so an auction already sent to a region
that fails is lost; ejection only steers the auctions that come after.

``N = 3``: at this bench's rate (about 27 auctions/s meant for us-east) three failures take about
a tenth of a second; fewer would eject a region for one reset connection.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from fleet.sim.dns import ready


@dataclass(frozen=True)
class EjectionSettings:
    consecutive: int = 3  # failures in a row that eject (Envoy's consecutive_5xx, default 5)
    base_s: float = 2.0  # first ejection (Envoy's base_ejection_time: 30 s)
    max_s: float = 30.0  # longest ejection, and how long a readmitted region must last to start over
    probe_timeout_s: float = 1.0  # the /ready check passes on a 2xx/3xx within this
    probe_every_s: float = 0.25  # how often the prober looks for a backoff that ran out


def failed(status: int) -> bool:
    """An outcome that counts against the region: no answer (0), 404 or 5xx on the bid route."""
    return status == 0 or status == 404 or status >= 500


@dataclass
class _Endpoint:
    fails: int = 0  # failures in a row since admitted
    ejected_until: float | None = None  # None: in the pool
    ejections: int = 0  # ejections in a row (the backoff's exponent)
    admitted_at: float = float("-inf")  # outcomes of auctions sent before this are stale
    probing: bool = False


class Ejector:
    """One exchange-side pool of bidder regions (times: seconds into the run)."""

    def __init__(self, latency_ms: dict[str, dict[str, float]], settings: EjectionSettings | None = None):
        self.latency_ms = latency_ms
        self.s = settings or EjectionSettings()
        self._ep = {r: _Endpoint() for r in latency_ms}
        self.events: list[dict] = []  # {"t", "region", "event": ejected|readmitted, "for_s"}

    def ejected(self, region: str) -> bool:
        return self._ep[region].ejected_until is not None

    def order(self, source: str, first: str) -> list[str]:
        """The endpoints an exchange in ``source`` tries for an auction the DNS sent to ``first``."""
        row = self.latency_ms[source]
        return [first] + sorted((r for r in row if r != first), key=lambda r: (row[r], r))

    def route(self, source: str, first: str) -> str:
        """The first endpoint in the pool (``first`` itself when every one is ejected)."""
        return next((r for r in self.order(source, first) if not self.ejected(r)), first)

    def record(self, region: str, status: int, sent_t: float, t: float) -> None:
        """An auction sent to ``region`` at ``sent_t`` came back with ``status`` at ``t``."""
        ep = self._ep[region]
        if ep.ejected_until is not None or sent_t < ep.admitted_at:
            return  # sent before the region was (re)admitted: says nothing about it now
        if not failed(status):
            ep.fails = 0
            if ep.ejections and t - ep.admitted_at >= self.s.max_s:
                ep.ejections = 0
            return
        ep.fails += 1
        if ep.fails >= self.s.consecutive:
            self._eject(region, t)

    def _eject(self, region: str, t: float) -> None:
        ep = self._ep[region]
        backoff = min(self.s.base_s * 2 ** ep.ejections, self.s.max_s)
        ep.ejections += 1
        ep.fails = 0
        ep.ejected_until = t + backoff
        self.events.append({"t": round(t, 3), "region": region, "event": "ejected", "for_s": backoff})

    def due(self, t: float) -> list[str]:
        """Ejected regions whose backoff ran out and that no check is out for (now one is)."""
        out = []
        for region, ep in self._ep.items():
            if ep.ejected_until is not None and not ep.probing and t >= ep.ejected_until:
                ep.probing = True
                out.append(region)
        return out

    def probed(self, region: str, ok: bool, t: float) -> None:
        """The ``/ready`` check of a region ``due`` returned: readmit it, or eject it for longer."""
        ep = self._ep[region]
        ep.probing = False
        if ok:
            ep.ejected_until = None
            ep.fails = 0
            ep.admitted_at = t
            self.events.append({"t": round(t, 3), "region": region, "event": "readmitted"})
        else:
            ep.ejected_until = None
            self._eject(region, t)


async def probes(ej: Ejector, session: aiohttp.ClientSession, base_url: str, prefixes: dict[str, str],
                 start: float, stop: asyncio.Event) -> None:
    """Check each ejected region's ``/ready`` once its backoff runs out, until ``stop``."""
    timeout = aiohttp.ClientTimeout(total=ej.s.probe_timeout_s)

    async def probe(region: str) -> None:
        ok = await ready(session, f"{base_url}{prefixes[region]}/ready", timeout)
        ej.probed(region, ok, time.perf_counter() - start)

    pending: set[asyncio.Task] = set()
    while not stop.is_set():
        for region in ej.due(time.perf_counter() - start):
            task = asyncio.create_task(probe(region))
            pending.add(task)
            task.add_done_callback(pending.discard)
        try:
            await asyncio.wait_for(stop.wait(), ej.s.probe_every_s)
        except asyncio.TimeoutError:
            pass
    if pending:
        await asyncio.gather(*pending)
