"""Stage 8, respond: the BidResponse, its markup and the notice URLs the exchange will call.

Markup is built for the winning offers only (never for candidates that lost). Notice URLs point
at this region's ``/notice/{win|bill|loss}`` endpoints and carry the OpenRTB substitution macros
for the exchange to fill, plus the bid's own identity so a notice can be tied back to the bid.
"""

from __future__ import annotations

import html
import itertools
import os
from urllib.parse import quote, urlencode

import msgspec

from fleet.openrtb.model import Bid, BidResponse, Imp, SeatBid
from fleet.pipeline.auction import Offer

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
    fields = {"a": auction_id, "i": offer.imp_id, "bid": bid_id, "c": offer.campaign.id,
              "cr": offer.creative.id, "r": region, "m": offer.source, "t": str(ts_ms),
              "p": publisher or "", "b": f"{offer.price:.4f}", "cu": currency}
    if test:
        fields["e"] = "1"
    if signer is not None:
        fields, sigs = signer.sign_kinds(fields, NOTICE_KINDS, expires_at)
    else:
        sigs = None
    ident = urlencode(fields, quote_via=quote)
    out = {}
    for kind in NOTICE_KINDS:
        url = f"{base}/notice/{kind}?{ident}&n={kind}" + (f"&s={sigs[kind]}" if sigs else "")
        if kind in ("win", "bill"):
            url += "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}"
        elif kind == "loss":
            url += "&lr=${AUCTION_LOSS}&px=${AUCTION_MIN_TO_WIN}"
        out[kind] = url
    return out


def bill_window(imp: Imp, default_s: float, max_s: float) -> int:
    """Seconds a bid's notices are accepted (and its reservation held): the imp's ``exp`` when
    it states one (the exchange's own bound on auction-to-impression), else the default; never
    over ``max_s``."""
    exp = imp.exp
    window = exp if exp is not None and exp > 0 else default_s
    return int(min(window, max_s))


def _native_asset_ids(imp: Imp) -> tuple[int | None, int | None]:
    """The request's title and main-image asset ids (Native 1.2), tolerant of both wrappings."""
    try:
        spec = msgspec.json.decode(imp.native.request) if imp.native and imp.native.request else {}
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # the exchange's string, not ours
        return None, None
    if isinstance(spec, dict) and isinstance(spec.get("native"), dict):
        spec = spec["native"]
    title = image = None
    assets = spec.get("assets", []) if isinstance(spec, dict) else []
    for a in assets if isinstance(assets, list) else []:
        if not isinstance(a, dict) or not isinstance(a.get("id"), int):
            continue
        if title is None and isinstance(a.get("title"), dict):
            title = a["id"]
        elif image is None and isinstance(a.get("img"), dict):
            image = a["id"]
    return title, image


def markup(offer: Offer, imp: Imp, click_notice: str | None = None) -> str:
    """The creative's markup; ``click_notice`` (our signed click URL) is its click tracker
    where the format has one (VAST ``ClickTracking``, Native ``link.clicktrackers``)."""
    cr = offer.creative
    click = html.escape(cr.click_url, quote=True)
    if cr.format == "banner":
        img = html.escape(cr.image_url or f"https://cdn.advertiser.example/{cr.id}.png", quote=True)
        return (
            f'<a href="{click}" target="_blank"><img src="{img}" width="{cr.w}" '
            f'height="{cr.h}" alt="{html.escape(cr.title)}"></a>'
        )
    if cr.format in ("video", "audio"):
        dur = f"00:00:{cr.duration_s:02d}" if cr.duration_s < 60 else f"00:{cr.duration_s // 60:02d}:{cr.duration_s % 60:02d}"
        size = f' width="{cr.w}" height="{cr.h}"' if cr.format == "video" else ""
        version = "4.0" if cr.format == "video" else "4.1"
        return (
            f'<VAST version="{version}"><Ad id="{html.escape(cr.id)}"><InLine>'
            f"<AdSystem>fleet</AdSystem><AdTitle>{html.escape(cr.title or cr.id)}</AdTitle>"
            f"<Impression/><Creatives><Creative id=\"{html.escape(cr.id)}\"><Linear>"
            f"<Duration>{dur}</Duration><MediaFiles>"
            f'<MediaFile delivery="progressive" type="{html.escape(cr.mime)}"{size}>'
            f"<![CDATA[{cr.media_url}]]></MediaFile></MediaFiles>"
            f"<VideoClicks><ClickThrough><![CDATA[{cr.click_url}]]></ClickThrough>"
            + (f"<ClickTracking><![CDATA[{click_notice}]]></ClickTracking>" if click_notice else "")
            + "</VideoClicks>"
            "</Linear></Creative></Creatives></InLine></Ad></VAST>"
        )
    title_id, image_id = _native_asset_ids(imp)
    assets = [
        {"id": 1 if title_id is None else title_id, "title": {"text": cr.title or cr.id}},
        {
            "id": 2 if image_id is None else image_id,
            "img": {"url": cr.image_url or f"https://cdn.advertiser.example/{cr.id}.png",
                    "w": cr.w or 1200, "h": cr.h or 627},
        },
    ]
    return msgspec.json.encode(
        {"native": {"ver": "1.2", "assets": assets,
                    "link": {"url": cr.click_url, **({"clicktrackers": [click_notice]} if click_notice else {})}}}
    ).decode()


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
) -> BidResponse:
    """``rate`` converts fleet-currency prices into the response currency (units per USD);
    ``windows``: the default and the longest notice window (``bill_window``); ``bid_ids``: the
    ids the bids were reserved under (else new ones). Raises ``NoticeUrlTooLong``."""
    bids = []
    for imp_id, o in winners.items():
        bid_id = bid_ids[imp_id] if bid_ids else ids()
        cr, imp = o.creative, imps[imp_id]
        exp = bill_window(imp, *windows)
        urls = notice_urls(base_url, bid_id, o, region, ts_ms, publisher, request_id, signer,
                           currency=currency, test=test, expires_at=ts_ms / 1000.0 + exp)
        if max(len(u) - u.index("?") for u in urls.values()) > MAX_NOTICE_QUERY:
            raise NoticeUrlTooLong(imp_id)
        bids.append(
            Bid(
                id=bid_id,
                impid=imp_id,
                price=round(o.price * rate, 6),
                adid=cr.id,
                nurl=urls["win"],
                burl=urls["bill"],
                lurl=urls["loss"],
                adm=markup(o, imp, urls["click"]),
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
                exp=exp,
                # the model version (or rule) that priced this bid; our click notice, for formats
                # whose markup has no click tracker of its own
                ext={"pricing": o.source, "clickurl": urls["click"]},
            )
        )
    return BidResponse(
        id=request_id, seatbid=[SeatBid(bid=bids, seat=seat)], bidid=ids(), cur=currency, ext=ext
    )
