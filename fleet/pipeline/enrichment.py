"""Stage 2, enrichment: who is this user, what do we know about them, and may we use it.

Privacy decides first, once per request (``fleet.pipeline.privacy``, at admission; the admitted
request carries the decision): COPPA, GDPR without the TCF consent we need, a US opt-out, LMT or
DNT make the request contextual only (no identity, no lookup, no segments, no per-user frequency
capping); TCF consent to measurement but not to personalisation keeps the identity for frequency
caps and exposure counts only (no segments, stored or sent). Otherwise the identity is
``user.buyeruid`` (our synced id), then ``user.id``, then ``device.ifa`` (``docs/cache.md`` says
why), and the region's cache shards supply the stored profile (segments, last seen, frequency events). How the lookup went decides the rest:

- ``hit``: stored segments join the request's own, and frequency caps count the stored events;
- ``miss``, ``timeout``, ``error``: population defaults (the request's segments only, caps on
  this replica's own counts) and a conservative bid multiplier; the decision is flagged;
- ``cold_user``: a miss for a user this replica never looked up (``fleet.pipeline.first_sight``):
  the same defaults and multiplier, counted apart and not flagged (a first sight is not a fault);
- ``off``: no cache configured (in-process use): the request's segments, no flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.cache.store import Profile
from fleet.config import PrivacySettings
from fleet.openrtb.model import BidRequest
from fleet.pipeline import privacy

DEGRADED_LOOKUPS = ("miss", "timeout", "error")  # a cold user's first-sight miss is not one
CONTEXTUAL_MULTIPLIER = 0.8  # bid less when we may not know the user
DEFAULT_MULTIPLIER = 0.9  # bid less when we could not look the user up in time


@dataclass(frozen=True, slots=True)
class UserContext:
    user_id: str | None
    segments: tuple[str, ...]
    contextual_only: bool
    reason: str = ""  # why contextual (privacy), when it is
    lookup: str = "off"  # hit | miss | cold_user | timeout | error | off | skipped
    freq: dict[str, tuple[tuple[str, float], ...]] | None = field(default=None)  # from the cache
    multiplier: float = 1.0  # applied to values: less knowledge, lower bids

    @property
    def defaulted(self) -> bool:
        """Population defaults stood in because something went wrong (flagged as degraded)."""
        return self.lookup in DEGRADED_LOOKUPS


CONTEXTUAL = UserContext(None, (), True, lookup="skipped", multiplier=CONTEXTUAL_MULTIPLIER)


def privacy_block(req: BidRequest, settings: PrivacySettings = privacy.DEFAULT) -> str:
    """Why user-level data is off limits for this request, or '' when it is allowed (the one
    decision: ``fleet.pipeline.privacy.decide``)."""
    return privacy.decide(req, settings)


def identity(req: BidRequest, blocked: str) -> str | None:
    """The user key to look up, or None (``blocked``: the request's privacy decision, or nobody
    to look up)."""
    if not privacy.measured(blocked):
        return None
    user, dev = req.user, req.device
    # Our own synced id first: ``buyeruid`` is the id our cookie sync mapped for this exchange,
    # the key our profiles were stored under, the same on every exchange that syncs with us.
    # ``user.id`` is the exchange's own id for the user (another key space: it finds only what
    # this exchange's traffic taught us); the device id last (apps without a sync).
    uid = (user.buyeruid or user.id) if user is not None else None
    if not uid and dev is not None:
        uid = dev.ifa
    return uid or None


def request_segments(req: BidRequest) -> list[str]:
    out: list[str] = []
    if req.user is not None:
        for data in req.user.data:
            out.extend(s.id for s in data.segment if s.id)
    return out


def enrich(req: BidRequest, profile: Profile | None = None, lookup: str = "off",
           default_multiplier: float = DEFAULT_MULTIPLIER, *, blocked: str | None = None,
           uid: str | None = None) -> UserContext:
    """The user context. ``blocked`` and ``uid``: the privacy decision and the identity the
    admitted request carries (``fleet.pipeline.request.Admitted``); without them (the oracle,
    training) both are decided here."""
    if blocked is None:
        blocked = privacy_block(req)
        uid = identity(req, blocked)
    if blocked and privacy.measured(blocked) and uid is not None:  # measurement only: caps, no segments
        freq = profile.freq if profile is not None else None
        return UserContext(uid, (), True, blocked, lookup, freq, CONTEXTUAL_MULTIPLIER)
    if blocked:
        return UserContext(None, (), True, blocked, "skipped", None, CONTEXTUAL_MULTIPLIER)
    segments = request_segments(req)
    if uid is None:
        return UserContext(None, tuple(segments), False, lookup="off")
    if profile is not None:
        seen = set(segments)
        segments.extend(s for s in profile.segments if s not in seen)
        return UserContext(uid, tuple(segments), False, lookup="hit", freq=profile.freq)
    multiplier = default_multiplier if lookup in DEGRADED_LOOKUPS or lookup == "cold_user" else 1.0
    return UserContext(uid, tuple(segments), False, lookup=lookup, multiplier=multiplier)
