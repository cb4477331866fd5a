"""Arrival and overload shedding at the replica: "degrade, never delay" under load.

Every bid request's arrival is the ingress's stamp (``fleet.pipeline.deadline.fleet_arrival``):
what it waited in HAProxy's queue and in the replica before the handler ran is its ``queue``
stage. A request whose queue time left less than ``shed_below_ms`` of even the longest budget the
region plans (``max_tmax_ms - network_allowance_ms``) is answered 204 at once, before decode,
with ``x-fleet-reason: overload`` and OpenRTB nbr 15 (insufficient auction time); one whose own
tmax leaves too little is shed the same way right after decode, before any stage runs. HAProxy
sheds in front of this (its queue ``max_queue`` deep, or no slot within ``bid_queue_ms``:
``fleet.runtime.haproxy_shim``), so what this catches waited inside the replica (its loop
stalled); HAProxy also answers for a replica that holds a bid past its budget. Shed answers are counted (``shed``,
``nobid.overload``), never traced one by one.
"""

from __future__ import annotations

from fleet.openrtb.nbr import NBR
from fleet.pipeline.deadline import ARRIVAL_HEADER, Deadline, fleet_arrival, longest_budget_s, now
from fleet.pipeline.request import Answer

REASON = "overload"
# The no-bid reason is 15, insufficient auction time (NBR.INSUFFICIENT_AUCTION_TIME); HAProxy sends the same.


class Shedder:
    def __init__(self, bidder, shed_below_ms: float):
        self.bidder = bidder
        self.min_s = shed_below_ms / 1000.0
        self.longest_s = longest_budget_s(bidder.spec.max_tmax_ms, bidder.spec.network_allowance_ms)

    def arrived(self, headers, handler: float) -> tuple[float, float]:
        """(the fleet's arrival, seconds queued): the stamp's, or the handler's reading."""
        arrival, queued, source = fleet_arrival(headers.get(ARRIVAL_HEADER), handler)
        b = self.bidder
        b.stats[f"arrival.{source}"] += 1
        b.latency.observe("queue", queued)
        return arrival, queued

    def before_decode(self, arrival: float, queued: float) -> Answer | None:
        """A 204 ``overload`` when not even the longest budget leaves a useful answer time."""
        t = now()
        if arrival + self.longest_s - t >= self.min_s:
            return None
        b = self.bidder
        b.stats["requests"] += 1
        b.stats["shed"] += 1
        a = b._no_bid(NBR.INSUFFICIENT_AUCTION_TIME, REASON)
        a.spent = {"total": t - arrival}
        b.latency.observe("total", a.spent["total"])
        return a

    def after_decode(self, dl: Deadline) -> Answer | None:
        """The same once the request's own tmax is known (before enrichment starts)."""
        if dl.at - now() >= self.min_s:
            return None
        self.bidder.stats["shed"] += 1
        return self.bidder._no_bid(NBR.INSUFFICIENT_AUCTION_TIME, REASON, dl)
