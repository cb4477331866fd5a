"""Which of a campaign's creatives may fill an impression: format, size, duration, attributes,
and the request's block lists (bcat, badv, bapp).

The impression's rules are read once per impression into ``SlotRules`` (sets, not lists), so the
per-candidate check is a handful of set lookups.
"""

from __future__ import annotations

from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb.model import BidRequest, Imp


class SlotRules:
    __slots__ = ("sizes", "battr", "media", "native_battr", "bcat", "badv", "bapp")

    def __init__(self, imp: Imp, req: BidRequest):
        b = imp.banner
        self.sizes = (frozenset(b.sizes()) or None) if b is not None else False
        self.battr = {"banner": frozenset(b.battr) if b is not None else frozenset()}
        # format -> (mimes or None, min duration, max duration) for video and audio
        self.media = {}
        for fmt, m in (("video", imp.video), ("audio", imp.audio)):
            if m is not None:
                self.media[fmt] = (frozenset(m.mimes) or None, m.minduration or 0, m.maxduration or 0)
                self.battr[fmt] = frozenset(m.battr)
        if imp.native is not None:
            self.battr["native"] = frozenset(imp.native.battr)
        self.bcat = frozenset(req.bcat)
        self.badv = frozenset(req.badv)
        self.bapp = frozenset(req.bapp)

    def fits(self, cr: Creative, campaign: Campaign) -> bool:
        fmt = cr.format
        if fmt == "banner":
            if self.sizes is False or (self.sizes is not None and (cr.w, cr.h) not in self.sizes):
                return False
        elif fmt == "native":
            if "native" not in self.battr:
                return False
        else:
            media = self.media.get(fmt)
            if media is None:
                return False
            mimes, lo, hi = media
            if (mimes is not None and cr.mime not in mimes) or (lo and cr.duration_s < lo) or (
                hi and cr.duration_s > hi
            ):
                return False
        battr = self.battr.get(fmt)
        if battr and cr.attr and not battr.isdisjoint(cr.attr):
            return False
        if self.bcat and not self.bcat.isdisjoint(cr.cat or campaign.cat):
            return False
        if self.badv and not self.badv.isdisjoint(campaign.adomain):
            return False
        if self.bapp and cr.bundle in self.bapp:
            return False
        return True

    def first_fit(self, campaign: Campaign) -> Creative | None:
        for cr in campaign.creatives:
            if self.fits(cr, campaign):
                return cr
        return None
