"""Which of a campaign's creatives may fill an impression: format, size, duration, VAST version,
pods, native assets, https, attributes, and the request's block lists (bcat, badv, bapp).

The impression's rules are read once per impression into ``SlotRules`` (sets, not lists), so the
per-candidate check is a handful of set lookups. What the catalog cannot say (a creative's
placement, start delay or player) constrains nothing: ``plcmt``, ``startdelay`` and ``podid``
are carried, not checked (``docs/openrtb.md``).
"""

from __future__ import annotations

from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb.adomain import AdvertiserBlock
from fleet.openrtb.model import BidRequest, Imp
from fleet.pipeline import dsa
from fleet.pipeline.markup_native import fill, native_spec
from fleet.pipeline.markup_vast import vast_version

SKIPPABLE = 16  # creative attribute "user-initiated skippable"
# Sizes of a full-screen (``instl: 1``) banner that names none.
INTERSTITIAL_SIZES = frozenset({(320, 480), (480, 320), (768, 1024), (1024, 768), (360, 640), (640, 360)})


class Media:
    """A video or audio slot: what its creative must be."""

    __slots__ = ("mimes", "lo", "hi", "durs", "poddur", "version", "no_skip")

    def __init__(self, m, fmt: str):
        self.mimes = frozenset(m.mimes) or None
        self.lo, self.hi = m.minduration or 0, m.maxduration or 0
        self.durs = frozenset(m.rqddurs) or None  # 2.6: exactly one of these durations
        self.poddur = m.poddur or 0  # a dynamic pod's total: one ad cannot be longer
        self.version = vast_version(m.protocols, fmt)  # None: no VAST version we write
        self.no_skip = getattr(m, "skip", None) == 0  # the player will not let it be skipped

    def fits(self, cr: Creative) -> bool:
        d = cr.duration_s
        return not (
            self.version is None
            or (self.mimes is not None and cr.mime not in self.mimes)
            or (self.lo and d < self.lo) or (self.hi and d > self.hi)
            or (self.durs is not None and d not in self.durs)
            or (self.poddur and d > self.poddur)
            or (self.no_skip and SKIPPABLE in cr.attr)
        )


def seat_allowed(req: BidRequest, seat: str) -> bool:
    """The request's buyer seats allowed (``wseat``) and blocked (``bseat``) leave our own seat in
    (a partner's bids are judged by their seats: ``fleet.partners.validate``)."""
    return seat not in req.bseat and (not req.wseat or seat in req.wseat)


def secure_urls(cr: Creative) -> bool:
    """Every URL the creative's markup carries is https."""
    return (cr.click_url.startswith("https://") and cr.media_url.startswith("https://")
            and (not cr.image_url or cr.image_url.startswith("https://")))


class SlotRules:
    __slots__ = ("sizes", "battr", "media", "native", "secure", "bcat", "badv", "bapp", "dsa")

    def __init__(self, imp: Imp, req: BidRequest):
        b = imp.banner
        sizes = frozenset(b.sizes()) if b is not None else False
        if b is not None and not sizes and imp.instl == 1:
            sizes = INTERSTITIAL_SIZES
        self.sizes = (sizes or None) if b is not None else False
        self.battr = {"banner": frozenset(b.battr) if b is not None else frozenset()}
        self.media: dict[str, Media] = {}
        for fmt, m in (("video", imp.video), ("audio", imp.audio)):
            if m is not None:
                self.media[fmt] = Media(m, fmt)
                self.battr[fmt] = frozenset(m.battr)
        self.native = None
        if imp.native is not None:
            self.battr["native"] = frozenset(imp.native.battr)
            self.native = native_spec(imp.native)  # None: unreadable, nothing fits
        self.secure = imp.secure == 1
        self.bcat = frozenset(req.bcat)
        self.badv = AdvertiserBlock(req.badv)  # a blocked domain or its subdomains
        self.bapp = frozenset(req.bapp)
        # DSA transparency required: only campaigns that name advertiser and payer (None: nobody)
        self.dsa = None if dsa.nobody_renders(req) else dsa.required(req)

    def fits(self, cr: Creative, campaign: Campaign) -> bool:
        if self.dsa is None or (self.dsa and dsa.names(campaign) is None):
            return False
        fmt = cr.format
        if fmt == "banner":
            if self.sizes is False or (self.sizes is not None and (cr.w, cr.h) not in self.sizes):
                return False
        elif fmt == "native":
            if self.native is None or fill(self.native, cr, campaign) is None:
                return False
        else:
            media = self.media.get(fmt)
            if media is None or not media.fits(cr):
                return False
        if self.secure and not secure_urls(cr):
            return False
        battr = self.battr.get(fmt)
        if battr and cr.attr and not battr.isdisjoint(cr.attr):
            return False
        if self.bcat and not self.bcat.isdisjoint(cr.cat or campaign.cat):
            return False
        if self.badv and self.badv.blocks(campaign.adomain):
            return False
        if self.bapp and cr.bundle in self.bapp:
            return False
        return True

    def first_fit(self, campaign: Campaign) -> Creative | None:
        for cr in campaign.creatives:
            if self.fits(cr, campaign):
                return cr
        return None
