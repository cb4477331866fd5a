"""EU Digital Services Act transparency (``regs.ext.dsa``, the IAB DSA transparency extension).

When the request says transparency is required (``dsarequired`` 2, or 3: the publisher is an
online platform), a bid must say on whose behalf the ad is shown and who paid for it: the bid
carries ``ext.dsa`` with ``behalf`` and ``paid`` from the catalog (``Campaign.advertiser_name``,
``payer_name``) and ``adrender: 0`` (our creatives do not render the DSA notice themselves). A
campaign without both names does not bid there (``creative_fit.SlotRules``), and nothing bids
when the publisher says it cannot render the notice either (``pubrender: 0``): nobody would.
"""

from __future__ import annotations

from fleet.campaigns.model import Campaign
from fleet.openrtb.model import BidRequest, Dsa

REQUIRED = (2, 3)
NAME_MAX = 100  # the extension's limit on behalf / paid


def terms(req: BidRequest) -> Dsa | None:
    regs = req.regs
    return regs.ext.dsa if regs is not None and regs.ext is not None else None


def required(req: BidRequest) -> bool:
    d = terms(req)
    return d is not None and d.dsarequired in REQUIRED


def nobody_renders(req: BidRequest) -> bool:
    """Transparency required, the publisher cannot render it, and neither do we: no bid."""
    d = terms(req)
    return d is not None and d.dsarequired in REQUIRED and d.pubrender == 0


def names(c: Campaign) -> tuple[str, str] | None:
    """(on whose behalf, who paid), or None when the catalog does not say both."""
    if not c.advertiser_name or not c.payer_name:
        return None
    return c.advertiser_name[:NAME_MAX], c.payer_name[:NAME_MAX]


def bid_ext(c: Campaign) -> dict | None:
    """The bid's ``ext.dsa`` (None: the campaign cannot bid where DSA transparency is required)."""
    n = names(c)
    return None if n is None else {"behalf": n[0], "paid": n[1], "adrender": 0}
