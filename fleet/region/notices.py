"""A replica's notice path: durable in the ledger before acknowledged, counted only after.

A notice is parsed, verified and admitted (``fleet.pipeline.notices``), then written to the
region's ledger stream and acknowledged only once durable (``EventEmitter.emit_durable``). Only
then does the replica count it: control takes a replica's spend as already in the ledger's
stream (docs/control.md), so

- a notice that reached the stream settles at once (pacing, the win-rate model);
- a notice acknowledged from the spill file (Redis away) waits until the file is replayed
  (``EventEmitter.on_replayed``), and a bill's hold is pinned meanwhile, past the bid's deadline
  if need be, so its money stays held until it counts.

A resent notice (exchanges resend) is acknowledged again and recorded again (the ledger dedups
money) but teaches nothing twice; the publisher statistics of the cache (win/loss feedback) also
count it once.
"""

from __future__ import annotations

from fleet.ledger.events import notice_event
from fleet.pipeline.notices import NoticeCounter, NoticeSettlement

MAX_UNSTREAMED = 200_000  # acknowledged from the spill, settled on its replay; beyond: held until the deadline
MAX_SEEN = 200_000  # (kind, bid id) remembered for the once-only effects


class NoticePath:
    def __init__(self, region: str, bidder, counter: NoticeCounter, emitter=None, cache=None,
                 before_durable=None):
        self.region = region
        self.bidder = bidder
        self.counter = counter
        self.settlement = NoticeSettlement(bidder)
        self.emitter = emitter
        self.cache = cache
        self.before_durable = before_durable  # called before the first durable write (the region's loops)
        self._seen: dict[tuple[str, str], None] = {}
        self.unstreamed: list = []  # acknowledged from the spill file, settled on its replay
        if emitter is not None:
            emitter.on_replayed = self.settle_unstreamed

    async def handle(self, kind: str, query: str) -> tuple[int, str]:
        """(status, reason): 200 once the notice is durable (and counted, or held to count)."""
        status, reason, notice = self.counter.handle(kind, query, self.region, admit=self.settlement.admit)
        if status != 200:
            return status, reason
        where = "stream"
        if self.emitter is not None:
            if self.before_durable is not None:
                self.before_durable()
            where = await self.emitter.emit_durable(notice_event(kind, notice, self.bidder.clock()))
        first = self.first(notice)
        if first:  # a replayed notice teaches nothing twice (its loss reason is unsigned)
            if where == "stream":
                self.settlement.learn(notice)
            elif len(self.unstreamed) < MAX_UNSTREAMED:
                # acknowledged but not in the stream yet: its money stays held, past the bid's
                # deadline if need be, until the replay lets it count
                self.unstreamed.append(notice)
                pin = getattr(self.bidder.budget, "pin", None)
                if pin is not None and notice.kind == "bill":
                    pin(notice.bid_id)
        if first and self.cache is not None and notice.publisher and notice.kind in ("win", "loss"):
            self.cache.feedback(notice.publisher, notice.kind == "win", notice.price)
        return 200, ""

    def settle_unstreamed(self) -> None:
        """Notices acknowledged from the spill file settle once it reached the stream."""
        held, self.unstreamed = self.unstreamed, []
        for notice in held:
            self.settlement.learn(notice)

    def first(self, notice) -> bool:
        """False for a notice this replica already saw (exchanges resend): publisher statistics
        count each win or loss once. Bounded; the ledger dedups for money."""
        key = (notice.kind, notice.bid_id)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.pop(next(iter(self._seen)))
        return True
