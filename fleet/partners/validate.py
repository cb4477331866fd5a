"""A partner's answer, judged bid by bid before anything of it can compete.

The answer is decoded loosely (each bid on its own) so one malformed bid costs that bid, not
the answer. A bid competes only with: a known ``impid`` (an imp the partner was offered), a
finite non-negative price in a currency we can convert, at or above its floor (the imp's, or the
deal's for a deal bid), ``adomain``/``cat``/``attr``/``bundle`` clear of the request's ``badv``
(a blocked domain or a subdomain of one, ``fleet.openrtb.adomain``), ``bcat``, the imp's
``battr`` and ``bapp``, its seat allowed by ``wseat``/``bseat`` (and by the deal's ``wseat``), a
``dealid`` among the imp's deals (required in a private auction), markup (``adm``) and notice URLs
of sane size, a creative id (``crid``: our notice URLs name it, and Prebid Server requires it
too), and on a secure imp (``secure: 1``) nothing a secure page cannot load: markup naming
an ``http:`` URL (or its URL-encoded ``http%3A``, Prebid Server's secure-markup markers) or an
``http://`` ``nurl``/``burl`` is dropped as ``insecure_creative``. Every dropped bid is counted by
its reason.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import msgspec

from fleet.openrtb.adomain import AdvertiserBlock
from fleet.openrtb.model import Bid, BidRequest, Imp
from fleet.partners.messages import PartnerUrls

MAX_CPM = 1_000.0  # fleet currency; above this a price is a bug or garbage, not a bid
MAX_ADM = 64 * 1024
MAX_URL = 2048
INSECURE_MARKERS = ("http:", "http%3a")  # in lower-cased markup: a URL a secure page will not load


class _SeatBid(msgspec.Struct):
    bid: list[msgspec.Raw] = []
    seat: str | None = None


class _Response(msgspec.Struct):
    id: str | None = None
    seatbid: list[_SeatBid] = []
    cur: str | None = None
    nbr: int | None = None


@dataclass(slots=True)
class PartnerBid:
    """A valid partner bid, ready to compete (prices CPM)."""

    partner: str
    imp_id: str
    price: float  # fleet currency
    partner_price: float  # as the partner bid it
    partner_cur: str
    seat: str
    bid: Bid  # the partner's bid as sent (adm, adomain, crid, ...)

    @property
    def key(self) -> str:
        """One imp per partner campaign per request, as for our own campaigns."""
        return f"partner:{self.partner}:{self.bid.cid or self.bid.id}"

    @property
    def urls(self) -> PartnerUrls:
        return PartnerUrls(nurl=self.bid.nurl, burl=self.bid.burl, lurl=self.bid.lurl)


def insecure(bid: Bid) -> bool:
    """Markup or a win/bill URL a secure (https) page cannot use."""
    adm = bid.adm.lower() if bid.adm else ""
    if any(m in adm for m in INSECURE_MARKERS):
        return True
    return any(u is not None and u.lstrip()[:5].lower() == "http:" for u in (bid.nurl, bid.burl))


def _battr(imp: Imp) -> set[int]:
    out: set[int] = set()
    for obj in (imp.banner, imp.video, imp.audio, imp.native):
        if obj is not None:
            out.update(obj.battr)
    return out


class Validator:
    """The request's rules, read once; ``judge`` per partner answer."""

    def __init__(self, req: BidRequest, floors: dict[str, float], rates: dict[str, float]):
        self.req = req
        self.floors = floors  # fleet currency, only the imps partners were offered
        self.rates = rates
        self.imps = {imp.id: imp for imp in req.imp if imp.id in floors}
        self.badv = AdvertiserBlock(req.badv)
        self.bcat = set(req.bcat)
        self.bapp = set(req.bapp)
        self.wseat = set(req.wseat)
        self.bseat = set(req.bseat)

    def judge(self, partner: str, default_seat: str, body: bytes,
              drops: Counter) -> list[PartnerBid] | None:
        """The valid bids of an answer; None when the answer itself is unreadable (an error)."""
        try:
            resp = msgspec.json.decode(body, type=_Response)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
            drops["malformed_response"] += 1
            return None
        if resp.id is not None and resp.id != self.req.id:
            drops["wrong_request_id"] += sum(len(sb.bid) for sb in resp.seatbid) or 1
            return []
        cur = (resp.cur or "USD").upper()
        rate = self.rates.get(cur)
        out = []
        for sb in resp.seatbid:
            seat = sb.seat or default_seat
            for raw in sb.bid:
                reason, pb = self._one(partner, seat, raw, cur, rate)
                if reason:
                    drops[reason] += 1
                else:
                    out.append(pb)
        return out

    def _one(self, partner: str, seat: str, raw, cur: str, rate: float | None):
        try:
            b = msgspec.json.decode(raw, type=Bid)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
            return "malformed_bid", None
        imp = self.imps.get(b.impid)
        if imp is None:
            return "unknown_imp", None
        if not b.id:
            return "no_bid_id", None
        if not b.crid:
            return "no_crid", None
        price = b.price
        if not math.isfinite(price) or price < 0:
            return "bad_price", None
        if rate is None:
            return "unknown_currency", None
        fleet_price = price * rate
        if fleet_price > MAX_CPM:
            return "implausible_price", None
        if not b.adm:
            return "no_adm", None
        if len(b.adm) > MAX_ADM:
            return "adm_too_large", None
        if any(u is not None and len(u) > MAX_URL for u in (b.nurl, b.burl, b.lurl)):
            return "url_too_long", None
        if imp.secure == 1 and insecure(b):
            return "insecure_creative", None
        if self.badv.blocks(b.adomain):
            return "blocked_adomain", None
        if self.bcat.intersection(b.cat):
            return "blocked_cat", None
        if b.attr and _battr(imp).intersection(b.attr):
            return "blocked_attr", None
        if b.bundle and b.bundle in self.bapp:
            return "blocked_app", None
        if seat in self.bseat or (self.wseat and seat not in self.wseat):
            return "seat_not_allowed", None
        floor = self.floors[imp.id]
        deals = {d.id: d for d in imp.pmp.deals} if imp.pmp is not None else {}
        if b.dealid is not None:
            deal = deals.get(b.dealid)
            if deal is None:
                return "unknown_deal", None
            if deal.wseat and seat not in deal.wseat:
                return "deal_seat_not_allowed", None
            deal_rate = self.rates.get((deal.bidfloorcur or "USD").upper())
            if deal_rate is None:
                return "unknown_currency", None
            floor = deal.bidfloor * deal_rate
        elif imp.pmp is not None and imp.pmp.private_auction == 1:
            return "private_auction_needs_deal", None
        if fleet_price < floor - 1e-9 or fleet_price <= 0:
            return "below_floor", None
        return "", PartnerBid(partner, imp.id, fleet_price, price, cur, seat, b)
