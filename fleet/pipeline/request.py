"""A request's state between the stages, and the answer it ends in.

``Admitted`` is a request through stage 1 (decoded, admitted, its deadline and tier planned) and
carries what admission decided once for every later stage: its publisher and domain
(``fleet.openrtb.inventory``), its privacy decision and the identity enrichment looks up.
``Pending`` is a request through stages 1-4, waiting for its candidates to be priced (locally,
or by the inference deployment when the region prices remotely). ``Answer`` is what the bid
path returns: status, body and headers, with what the caller hands on (events, trace facts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleet.cache.store import FreqEvent
from fleet.ledger.events import Event
from fleet.ml.features import FeatureBuilder, matrix
from fleet.openrtb.inventory import Inventory
from fleet.openrtb.model import BidRequest
from fleet.pipeline.deadline import Deadline
from fleet.pipeline.enrichment import UserContext


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    degraded: tuple[str, ...] = ()
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage, and "total"
    events: list[FreqEvent] = field(default_factory=list)  # exposures for the cache to count
    ledger: list[Event] = field(default_factory=list)  # bid selected / response sent
    dl: Deadline | None = None  # the request's deadline (tracing reads its budgets)


@dataclass(slots=True)
class Admitted:
    """A request through stage 1: decoded, admitted, its deadline and tier planned."""

    req: BidRequest
    version: str
    dl: Deadline
    floors: dict[str, float]
    tier: str
    currency: str
    accept_encoding: str | None
    uid: str | None  # whom enrichment looks up; None: contextual or anonymous
    inv: Inventory  # the request's publisher and domain
    privacy: str  # why user-level data is off limits ('' when it is allowed)
    supply: float = 1.0  # the supply chain's bid factor (fleet.pipeline.supply_chain; 1: as usual)


@dataclass(slots=True)
class Pending:
    """A request through stages 1-4, waiting for its candidates to be priced."""

    req: BidRequest
    version: str
    dl: Deadline
    user: UserContext
    paced: list  # (imp, campaign, creative, deal id, floor, auction type) per candidate
    had_candidates: bool
    floors: dict[str, float]
    tier: str
    currency: str
    wall: float
    accept_encoding: str | None
    inv: Inventory
    model: str | None = None  # the version asked to price (a canary's candidate, or the current)
    pricing_s: float = 0.0  # time the model call took
    winners: dict | None = None  # imp id -> the offer chosen and reserved (set by the auction)
    partner_offers: dict | None = None  # imp id -> partners' valid offers (stage 6, fleet.pipeline.fanout)
    offered: bool = False  # our own campaigns made an offer (set by the auction)
    fanout: object | None = None  # the request's partner calls (a fleet.pipeline.fanout.Round)

    def rows(self) -> np.ndarray:
        """One feature row per candidate, in ``paced`` order: what the model is called with."""
        builders: dict[str, FeatureBuilder] = {}
        rows = []
        for imp, c, cr, _deal, _floor, _at in self.paced:
            fb = builders.get(imp.id)
            if fb is None:
                fb = builders[imp.id] = FeatureBuilder(self.req, imp, self.user, self.floors[imp.id], self.inv)
            rows.append(fb.row(c, cr))
        return matrix(rows)
