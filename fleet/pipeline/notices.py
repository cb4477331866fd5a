"""Win, billing, loss and click notices: validate what the exchange substituted, then count.

The bid path puts the bid's identity and the OpenRTB macros in every notice URL; here the
exchange's call comes back. With a signer (``fleet.ledger.signing``) the signature, the URL's
own kind and the bid's deadline are checked first: a forged, tampered, kind-swapped or late
notice is a 403, counted, and creates nothing. Then what the exchange filled in:
- a win or bill whose price cannot be read (unsubstituted, empty, encrypted, not a finite
  non-negative number) is kept as an ``unpriced`` notice at our signed bid, an upper bound on
  what the exchange may charge, flagged for reconciliation: the impression happened, and a 400
  would lose its spend (exchanges do not retry). Without a signed bid it is a 400;
- an unsubstituted or missing currency is the response's (signed ``cu``), not the fleet's;
- a missing identity field or a notice for another region is a 400.
``NoticeSettlement`` judges the unsigned figures against the bid (``admit``: the price in the
fleet's currency, never above the bid) and settles what a counted notice means for the replica
(``learn``: pacing settles the bid's reservation, wins and outbid losses teach the win-rate
model). Durability and idempotent spend are the ledger's (``fleet.ledger``); the order (durable,
then counted) is the region's (``fleet.region.notices``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from fleet.ledger.signing import SignatureError

KINDS = ("win", "bill", "loss", "click")
IDENTITY = ("bid", "c", "cr", "r", "t")
MAX_QUERY = 4096


class NoticeError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str
    bid_id: str
    campaign: str
    creative: str
    region: str
    bid_ts_ms: int
    auction_id: str | None
    imp_id: str | None
    price: float | None  # clearing price (win/bill) or minimum to win (loss), CPM
    currency: str | None
    loss_reason: int | None
    publisher: str | None = None
    our_bid: float | None = None  # what we bid, CPM (from the bid's own URL)
    model: str | None = None  # what priced the bid: "rule" or "model:<version>"
    flags: tuple[str, ...] = ()  # "unpriced" (price unreadable: counted at our bid), "test"


def _price(raw: str | None) -> float | str:
    """The price, or why it cannot be read."""
    if raw is None or raw == "":
        return "missing price"
    if raw.startswith("${"):
        return "price macro not substituted"
    try:
        value = float(raw)
    except ValueError:
        return "price is not a number"
    if not math.isfinite(value) or value < 0:
        return "price must be finite and non-negative"
    return value


def _macro_free(raw: str | None) -> str | None:
    return raw if raw and not raw.startswith("${") else None


def parse_notice(kind: str, query: str, region: str, signer=None) -> Notice:
    if kind not in KINDS:
        raise NoticeError(404, f"unknown notice kind {kind!r}")
    if len(query) > MAX_QUERY:
        raise NoticeError(400, "query too long")
    q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if signer is not None:
        try:
            signer.verify(q, kind)
        except SignatureError as exc:
            raise NoticeError(403, exc.reason) from None
    elif q.get("n") and q["n"] != kind:
        raise NoticeError(403, "kind swapped")
    missing = [k for k in IDENTITY if not q.get(k)]
    if missing:
        raise NoticeError(400, f"missing identity fields {missing}")
    if q["r"] != region:
        raise NoticeError(400, "notice for another region")
    try:
        ts = int(q["t"])
    except ValueError:
        raise NoticeError(400, "bad bid time") from None
    flags: list[str] = []
    loss = None
    if kind == "loss":
        lr = q.get("lr", "")
        if lr and not lr.startswith("${"):
            try:
                loss = int(lr)
            except ValueError:
                raise NoticeError(400, "loss reason is not an integer") from None
    our_bid = _price(q.get("b"))
    our_bid = our_bid if isinstance(our_bid, float) else None
    price = _price(q.get("px"))
    # The clearing price is in the response's currency (signed ``cu``): an exchange that leaves
    # the macro out means it; one that states another contradicts the signature, and is read in
    # ``cu`` all the same, flagged (read as stated, a USD bill called JPY would count 1/150).
    stated, signed_cur = _macro_free(q.get("cur")), _macro_free(q.get("cu"))
    currency = signed_cur or stated
    if stated and signed_cur and stated.upper() != signed_cur.upper():
        flags.append("currency_mismatch")
    if isinstance(price, str):
        if kind in ("win", "bill"):
            if our_bid is None:
                raise NoticeError(400, price)
            # What the exchange charged cannot be read: it charged at most our bid (in the
            # fleet's currency), so that is what counts, flagged.
            price, currency = our_bid, None
            flags.append("unpriced")
        else:
            price = None
    if q.get("e") == "1":
        flags.append("test")
    auc = _macro_free(q.get("a") or q.get("auc"))
    imp = _macro_free(q.get("i") or q.get("imp"))
    return Notice(
        kind=kind,
        bid_id=q["bid"],
        campaign=q["c"],
        creative=q["cr"],
        region=q["r"],
        bid_ts_ms=ts,
        auction_id=auc,
        imp_id=imp,
        price=price,
        currency=currency,
        loss_reason=loss,
        publisher=q.get("p") or None,
        our_bid=our_bid,
        model=q.get("m") or None,
        flags=tuple(flags),
    )


class NoticeCounter:
    """Counts valid and refused notices per kind (the ledger replaces this with events)."""

    def __init__(self, signer=None) -> None:
        self.signer = signer
        self.counts: Counter[str] = Counter()
        self.spend_cpm: Counter[str] = Counter()

    def handle(self, kind: str, query: str, region: str,
               admit: Callable[[Notice], Notice | str] | None = None) -> tuple[int, str, Notice | None]:
        """``admit`` judges what the signature cannot cover (the exchange fills in the price and
        its currency): it returns the notice to count (its price converted), or a reason, which
        refuses it with a 400."""
        try:
            n = parse_notice(kind, query, region, self.signer)
            if admit is not None:
                n = admit(n)
                if isinstance(n, str):
                    self.counts["implausible"] += 1
                    raise NoticeError(400, n)
        except NoticeError as exc:
            self.counts[f"{kind}.refused"] += 1
            if exc.status == 403:
                self.counts["forged"] += 1
                self.counts[f"forged.{exc.reason.replace(' ', '_')}"] += 1
            return exc.status, exc.reason, None
        self.counts[kind] += 1
        for flag in n.flags:
            self.counts[f"{kind}.{flag}"] += 1
        if kind == "bill" and n.price is not None:
            self.spend_cpm[n.campaign] += n.price
        return 200, "", n


class NoticeSettlement:
    """What the exchange's notices do to one replica's bidder (``fleet.pipeline.bidder``)."""

    __slots__ = ("bidder",)

    def __init__(self, bidder) -> None:
        self.bidder = bidder

    def admit(self, notice: Notice) -> Notice | str:
        """The notice with its price in the fleet's currency (what pacing and the ledger count),
        or why its unsigned figures cannot be true. An exchange charges in the response's
        currency (``cur``) and never more than the bid, first or second price; a price it could
        not have charged would block or misstate the campaign's spend."""
        if notice.price is None:
            return notice
        b = self.bidder
        price = b.to_fleet(notice.price, notice.currency or b.fleet_cur)
        if price is None:
            return f"unknown currency {notice.currency!r}"
        if notice.kind in ("win", "bill") and notice.our_bid is not None:
            if price > notice.our_bid * 1.001 + 1e-4:
                return "price above the bid"
            # within conversion rounding of our bid: never more than the reservation it settles
            price = min(price, notice.our_bid)
        if price == notice.price and (notice.currency is None or notice.currency.upper() == b.fleet_cur):
            return notice
        return dataclasses.replace(notice, price=price, currency=b.fleet_cur)

    def learn(self, notice: Notice | None) -> None:
        """Notices settle the bid's reservation; win and loss notices teach the win-rate model
        (loss reason 102: outbid)."""
        if notice is None:
            return
        b = self.bidder
        b.stats["notices_learned"] += 1
        b.budget.settle(notice)
        if notice.publisher is None or notice.our_bid is None:
            return
        segment = b.formats.get(notice.creative)
        if notice.kind == "win":
            b.win_rate.observe(notice.publisher, segment, notice.our_bid, True)
        elif notice.kind == "loss" and notice.loss_reason == 102:
            b.win_rate.observe(notice.publisher, segment, notice.our_bid, False)
