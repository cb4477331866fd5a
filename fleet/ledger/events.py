"""Ledger events: what happened to a bid, each with a stable id.

The id is the event kind and the bid id (``win:<bid>``), so the exchange calling a burl three
times, a replayed spill file or a consumer re-reading its pending entries all name the same
event, and the ledger counts it once.
"""

from __future__ import annotations

import msgspec

from fleet.partners.messages import PartnerUrls

KINDS = ("selected", "response", "win", "billed", "lost", "expired", "click", "ivt")


class Event(msgspec.Struct, omit_defaults=True, array_like=True):
    id: str
    kind: str
    ts: float
    region: str
    bid: str = ""
    auction: str = ""
    imp: str = ""
    campaign: str = ""
    creative: str = ""
    model: str = ""
    publisher: str = ""
    price: float = 0.0  # CPM: our bid (selected), the clearing price (win, billed)
    user: str = ""  # whom the impression counts toward (selected only; never in URLs)
    reason: int = 0  # loss reason (lost)
    # Appended fields (array_like: an older event decodes with their defaults).
    bid_ts: float = 0.0  # the bid's own time (notices): spend counts on the bid's UTC day
    until: float = 0.0  # selected: the bid's notice deadline (unix s); open until then
    flag: str = ""  # comma-separated: "unpriced" (price unreadable: counted at our bid), "test"
    # A partner's winning bid (issue 21; selected only): the partner, its own notice URLs as it
    # sent them (macros unfilled; fired from the ledger's path), its price and currency.
    partner: str = ""
    partner_urls: PartnerUrls | None = None
    partner_price: float = 0.0
    partner_cur: str = ""
    partner_bid: str = ""  # the partner's own bid id and seat: its ${AUCTION_BID_ID}, ${AUCTION_SEAT_ID}
    partner_seat: str = ""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Event)


def encode(ev: Event) -> bytes:
    return _enc.encode(ev)


def decode(raw: bytes) -> Event:
    return _dec.decode(raw)


def notice_event(kind: str, notice, ts: float) -> Event:
    """The event for a verified notice (``fleet.pipeline.notices.Notice``)."""
    k = {"win": "win", "bill": "billed", "loss": "lost", "click": "click"}[kind]
    return Event(f"{k}:{notice.bid_id}", k, ts, notice.region, notice.bid_id, notice.auction_id or "",
                 notice.imp_id or "", notice.campaign, notice.creative, notice.model or "",
                 notice.publisher or "", notice.price or 0.0, "", notice.loss_reason or 0,
                 notice.bid_ts_ms / 1000.0, 0.0, ",".join(notice.flags))
