"""Stage 8, respond: the BidResponse, its markup and the notice URLs the exchange will call.

Markup is built for the winning offers only (never for candidates that lost): HTML for banners,
VAST in the version the imp plays (``markup_vast``), Native 1.2 (``markup_native``). Notice URLs
point at this region's ``/notice/{win|bill|loss|click}`` endpoints (https for an imp with
``secure: 1``) and carry the OpenRTB substitution macros for the exchange to fill, plus the bid's
own identity so a notice can be tied back to the bid.
"""

from __future__ import annotations

import html
import itertools
import os

from fleet.ledger.signing import encode
from fleet.openrtb.model import Bid, BidResponse, Imp, SeatBid
from fleet.partners.wrap import partner_bid
from fleet.pipeline import dsa
from fleet.pipeline.auction import Offer
from fleet.pipeline.markup_native import fill, native_markup, native_spec
from fleet.pipeline.markup_vast import vast, vast_version

MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}


class BidIds:
    """Unique, cheap bid ids: a per-process random tag and a counter."""

    def __init__(self) -> None:
        self.tag = os.urandom(5).hex()
        self._n = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.tag}{next(self._n):x}"


def response_currency(accepted: list[str], fleet: str, rates: dict[str, float]) -> str | None:
    """The currency to answer in: the fleet's when the request accepts it (or names none), else
    the first accepted one we can convert, else None (no bid)."""
    if not accepted or fleet in accepted:
        return fleet
    for c in accepted:
        if c.upper() in rates:
            return c.upper()
    return None


NOTICE_KINDS = ("win", "bill", "loss", "click")
# What each kind's URL asks the exchange to substitute (``fleet.pipeline.notices`` reads it).
MACROS = {"win": "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}", "bill": "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}",
          "loss": "&lr=${AUCTION_LOSS}&px=${AUCTION_MIN_TO_WIN}", "click": ""}
# The longest notice query we mint: the notice route refuses queries over 4,096 characters
# (``fleet.pipeline.notices.MAX_QUERY``), and the exchange's substitutions may add some.
MAX_NOTICE_QUERY = 3_800


class NoticeUrlTooLong(ValueError):
    """The exchange's ids would make a notice URL we could not accept back."""


def notice_urls(base: str, bid_id: str, offer: Offer, region: str, ts_ms: int,
                publisher: str | None = None, auction_id: str = "", signer=None, *,
                currency: str = "", test: bool = False, expires_at: float | None = None) -> dict[str, str]:
    """The bid's notice URLs by kind (win, bill, loss, click): its identity, the response
    currency and its deadline, each URL signed with its own kind when a signer is given (see
    ``fleet.ledger.signing``), then the ${...} macros left for the exchange to substitute.

    Besides the identity they carry the publisher and our bid (CPM, fleet currency), so a win or
    a loss can teach the win-rate model what that bid bought on that publisher, and the model
    version that priced it, so the ledger can say which version spent what. ``cu`` is what
    ``${AUCTION_CURRENCY}`` should have said: an exchange that leaves it unsubstituted is read
    in the response's currency, not the fleet's.
    """
    if offer.partner is None:
        campaign, creative = offer.campaign.id, offer.creative.id
    else:  # a partner's bid: its notices count for the partner (fleet.partners.wrap)
        campaign, creative = f"partner:{offer.partner.partner}", offer.partner.bid.crid or ""
    fields = {"a": auction_id, "i": offer.imp_id, "bid": bid_id, "c": campaign,
              "cr": creative, "r": region, "m": offer.source, "t": str(ts_ms),
              "p": publisher or "", "b": f"{offer.price:.4f}", "cu": currency}
    if test:
        fields["e"] = "1"
    # Encoded once (what ``urlencode`` would write) for the query all four URLs share and for
    # the signatures, which cover the same encoded text; only the kind differs per URL.
    enc = {k: encode(v) for k, v in fields.items()}
    if signer is None:
        ident = "&".join([f"{k}={v}" for k, v in enc.items()])
        return {kind: f"{base}/notice/{kind}?{ident}&n={kind}{MACROS[kind]}" for kind in NOTICE_KINDS}
    enc, sigs = signer.sign_encoded(enc, NOTICE_KINDS, expires_at)
    ident = "&".join([f"{k}={v}" for k, v in enc.items()])
    return {kind: f"{base}/notice/{kind}?{ident}&n={kind}&s={sigs[kind]}{MACROS[kind]}" for kind in NOTICE_KINDS}


def bill_window(imp: Imp, default_s: float, max_s: float) -> int:
    """Seconds a bid's notices are accepted (and its reservation held): the imp's ``exp`` when
    it states one (the exchange's own bound on auction-to-impression), else the default; never
    over ``max_s``."""
    exp = imp.exp
    window = exp if exp is not None and exp > 0 else default_s
    return int(min(window, max_s))


def secure_base(base: str) -> str:
    """The https form of our notice base, for an imp that asks for secure creatives (``imp.secure:
    1``): TLS terminates in front of the ingress (``docs/ingress.md``), which serves both."""
    return "https://" + base[len("http://"):] if base.startswith("http://") else base


def markup(offer: Offer, imp: Imp, urls: dict[str, str] | None = None, bid_id: str = "") -> str:
    """The creative's markup, with our notices where the format has a place for them: the click
    notice (a banner's click beacon, VAST ``ClickTracking``, Native ``link.clicktrackers``) and the
    billing notice as the impression tracker (VAST ``Impression``, Native ``eventtrackers``)."""
    cr = offer.creative
    urls = urls or {}
    click_notice, impression = urls.get("click"), urls.get("bill")
    if cr.format == "banner":
        click = html.escape(cr.click_url, quote=True)
        img = html.escape(cr.image_url or f"https://cdn.advertiser.example/{cr.id}.png", quote=True)
        beacon = (f' data-ct="{html.escape(click_notice, quote=True)}" onclick="new Image().src=this.dataset.ct"'
                  if click_notice else "")
        return (
            f'<a href="{click}" target="_blank"{beacon}><img src="{img}" width="{cr.w}" '
            f'height="{cr.h}" alt="{html.escape(cr.title)}"></a>'
        )
    if cr.format in ("video", "audio"):
        m = imp.video if cr.format == "video" else imp.audio
        version = vast_version(m.protocols if m is not None else [], cr.format)
        if version is None:
            raise ValueError(f"imp {imp.id!r}: no VAST version we write")  # creative_fit prevents it
        return vast(cr, version, impression=impression or "", click_notice=click_notice, serving_id=bid_id)
    spec = native_spec(imp.native)
    assets = fill(spec, cr, offer.campaign) if spec is not None else None
    if assets is None:
        raise ValueError(f"imp {imp.id!r}: native assets not fillable")  # creative_fit prevents it
    return native_markup(spec, assets, cr, click_notice=click_notice, impression=impression)


def build_response(
    request_id: str,
    winners: dict[str, Offer],
    imps: dict[str, Imp],
    *,
    base_url: str,
    region: str,
    seat: str,
    currency: str,
    rate: float,
    ids: BidIds,
    ts_ms: int,
    ext: dict | None,
    publisher: str | None = None,
    signer=None,
    windows: tuple[float, float] = (900.0, 3600.0),
    test: bool = False,
    bid_ids: dict[str, str] | None = None,
    dsa_required: bool = False,
) -> BidResponse:
    """``rate`` converts fleet-currency prices into the response currency (units per USD);
    ``windows``: the default and the longest notice window (``bill_window``); ``bid_ids``: the
    ids the bids were reserved under (else new ones). Raises ``NoticeUrlTooLong``."""
    bids = []
    for imp_id, o in winners.items():
        bid_id = bid_ids[imp_id] if bid_ids else ids()
        cr, imp = o.creative, imps[imp_id]
        exp = bill_window(imp, *windows)
        base = secure_base(base_url) if imp.secure == 1 else base_url
        urls = notice_urls(base, bid_id, o, region, ts_ms, publisher, request_id, signer,
                           currency=currency, test=test, expires_at=ts_ms / 1000.0 + exp)
        if max(len(u) - u.index("?") for u in urls.values()) > MAX_NOTICE_QUERY:
            raise NoticeUrlTooLong(imp_id)
        if o.partner is not None:
            bids.append(partner_bid(o, bid_id, urls, rate, exp))
            continue
        bids.append(
            Bid(
                id=bid_id,
                impid=imp_id,
                price=round(o.price * rate, 6),
                adid=cr.id,
                nurl=urls["win"],
                burl=urls["bill"],
                lurl=urls["loss"],
                adm=markup(o, imp, urls, bid_id),
                adomain=o.campaign.adomain,
                bundle=cr.bundle,
                cid=o.campaign.id,
                crid=cr.id,
                cat=cr.cat or o.campaign.cat,
                attr=cr.attr,
                dealid=o.deal_id,
                w=cr.w or None,
                h=cr.h or None,
                mtype=MTYPE[cr.format],
                dur=cr.duration_s if cr.format in ("video", "audio") else None,
                exp=exp,
                # the model version (or rule) that priced this bid; our click notice, for formats
                # whose markup has no click tracker of its own
                ext={"pricing": o.source, "clickurl": urls["click"],
                     **({"dsa": dsa.bid_ext(o.campaign)} if dsa_required else {})},
            )
        )
    return BidResponse(
        id=request_id, seatbid=[SeatBid(bid=bids, seat=seat)], bidid=ids(), cur=currency, ext=ext
    )
