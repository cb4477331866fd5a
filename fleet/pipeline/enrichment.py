"""Stage 2, enrichment: who is this user, and may we use what we know about them.

Privacy decides first: COPPA, GDPR without consent, LMT or DNT make the request contextual only
(no user id, no segments, no per-user frequency capping). Until the cache shards land, the
profile is what the request itself carries (``user.data`` segments); the shard lookup plugs in
behind ``UserContext`` with the same degrade-to-defaults contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.openrtb.model import BidRequest


@dataclass(frozen=True, slots=True)
class UserContext:
    user_id: str | None
    segments: tuple[str, ...]
    contextual_only: bool
    reason: str = ""


CONTEXTUAL = UserContext(None, (), True)


def privacy_block(req: BidRequest) -> str:
    """Why user-level data is off limits for this request, or '' when it is allowed."""
    regs = req.regs
    if regs is not None:
        if regs.coppa == 1:
            return "coppa"
        gdpr = regs.gdpr if regs.gdpr is not None else (regs.ext.gdpr if regs.ext else None)
        if gdpr == 1:
            user = req.user
            consent = None
            if user is not None:
                consent = user.consent or (user.ext.consent if user.ext else None)
            if not consent:
                return "gdpr_no_consent"
    dev = req.device
    if dev is not None and (dev.lmt == 1 or dev.dnt == 1):
        return "lmt" if dev.lmt == 1 else "dnt"
    return ""


def enrich(req: BidRequest) -> UserContext:
    blocked = privacy_block(req)
    if blocked:
        return UserContext(None, (), True, blocked)
    user, dev = req.user, req.device
    uid = None
    segments: list[str] = []
    if user is not None:
        uid = user.id or user.buyeruid
        for data in user.data:
            segments.extend(s.id for s in data.segment if s.id)
    if uid is None and dev is not None:
        uid = dev.ifa
    return UserContext(uid, tuple(segments), False)
