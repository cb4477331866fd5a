"""Control's reads of the regions' ledgers (billing truth), off the request path.

Every ``READ_EVERY_S`` (at a control tick) each region's caught-up mark and finalized spend for
the flights' days are read in one MULTI/EXEC and merged into the pacer's books
(``fleet.control.spend``). A failed read changes nothing: the last good read stands and no
replica delta is dropped, so control counts at least what the replicas reported. Every
``DRIFT_EVERY_S`` the dashboard's drift figure compares, per region, what the replicas reported
for today's daily flights (provisional) with the ledger's finalized spend for the day.
"""

from __future__ import annotations

import logging

from fleet.control.pacer import DAY_S, Pacer
from fleet.control.spend import flight_days, read_ledger

log = logging.getLogger("fleet.control")
READ_EVERY_S = 1.0
DRIFT_EVERY_S = 10.0


def ledger_days(pacer: Pacer, now: float) -> list[int]:
    """The UTC days whose finalized spend the flights need (none after today), and today."""
    today = int(now // DAY_S)
    days = {today}
    for cp in pacer.campaigns.values():
        days.update(d for d in flight_days(cp.flight.start, cp.flight.end) if d <= today)
    return sorted(days)


def merge_ledger(pacer: Pacer, region: str, caught_up: float, hashes: dict[int, dict[str, float]]) -> None:
    """One read of a region's ledger into the pacer's books: finalized spend per day (campaign ->
    spend; empty when the day's key is missing) and its caught-up mark (``fleet.control.spend``)."""
    seen = pacer.seen.setdefault(region, {})
    for day, h in hashes.items():
        if h:
            seen[day] = h
    for day in [d for d in seen if d < max(hashes, default=0) - 8]:
        del seen[day]
    for cid, cp in pacer.campaigns.items():
        f = cp.flight
        days = flight_days(f.start, f.end)
        cp.book.merge(region, caught_up, {d: (h.get(cid, 0.0) if h else None)
                                          for d, h in hashes.items() if d in days})


class LedgerView:
    def __init__(self, regions, pacer: Pacer):
        self.regions = list(regions)
        self.pacer = pacer
        self.last_read = float("-inf")
        self.last_drift = 0.0
        self.reads = 0
        self.read_failures = 0
        self.up = True  # the last read succeeded (or none was tried)
        self.drift: dict[str, dict] = {}  # region -> pacing's spend against the ledger's, today

    async def refresh(self, redis, now: float) -> bool:
        """Read the ledgers into the books if it is time; False when the read failed."""
        if redis is None or now - self.last_read < 0.9 * READ_EVERY_S:  # a tick a little early reads too
            return True
        self.last_read = now
        try:
            got = await read_ledger(redis, self.regions, ledger_days(self.pacer, now))
        except Exception as exc:  # the last good read stands; no delta is dropped
            self.read_failures += 1
            if self.up:
                log.warning("ledger not read (last good read stands): %s", exc)
            self.up = False
            return False
        self.up = True
        self.reads += 1
        for region, (caught_up, hashes) in got.items():
            merge_ledger(self.pacer, region, caught_up, hashes)
        if now - self.last_drift >= DRIFT_EVERY_S:
            self.last_drift = now
            self._drift(now, got)
        return True

    def _drift(self, now: float, got: dict) -> None:
        """Per region: spend the replicas reported for today's daily flights against the ledger's
        finalized spend for the UTC day. Positive: the replicas counted more."""
        day = int(now // DAY_S)
        daily = [cid for cid, cp in self.pacer.campaigns.items()
                 if cp.flight.daily and int(cp.flight.start // DAY_S) == day]
        for region, (_, hashes) in got.items():
            h = hashes.get(day, {})
            ledger = sum(h.get(cid, 0.0) for cid in daily)
            pacing = sum(self.pacer.campaigns[cid].book.reported.get(region, 0.0) for cid in daily)
            self.drift[region] = {"pacing": round(pacing, 6), "ledger": round(ledger, 6),
                                  "drift": round((pacing - ledger) / ledger, 5) if ledger > 0 else None, "t": now}
