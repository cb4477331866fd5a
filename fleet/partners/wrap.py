"""A winning partner bid as our bid: its markup and creative facts, our notice URLs.

The exchange calls our ``nurl``/``burl``/``lurl`` (signed, like any of our bids); the partner's
own URLs are not in our response: they travel in the bid's ``selected`` ledger event and are
fired from the ledger's path once our notice is durable (issue 21, contract item 3).
"""

from __future__ import annotations

from fleet.openrtb.model import Bid


def partner_bid(o, bid_id: str, urls: dict[str, str], rate: float, exp: int) -> Bid:
    """``o``: the winning ``Offer`` (its ``partner`` set); ``urls``: our notice URLs by kind;
    ``rate``: fleet currency -> response currency."""
    b = o.partner.bid
    return Bid(
        id=bid_id,
        impid=o.imp_id,
        price=round(o.price * rate, 6),
        adid=b.adid,
        nurl=urls["win"],
        burl=urls["bill"],
        lurl=urls["loss"],
        adm=b.adm,
        adomain=b.adomain,
        bundle=b.bundle,
        cid=b.cid,
        crid=b.crid,
        cat=b.cat,
        attr=b.attr,
        dealid=o.deal_id,
        w=b.w,
        h=b.h,
        mtype=b.mtype,
        exp=exp,
        ext={"pricing": o.source, "clickurl": urls["click"]},
    )
