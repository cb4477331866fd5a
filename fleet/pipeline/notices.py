"""Win, billing, loss and click notices: validate what the exchange substituted, then count.

The bid path puts the bid's identity and the OpenRTB macros in every notice URL; here the
exchange's call comes back. An unsubstituted macro, a missing identity field, a price that is not
a finite non-negative number, or a notice for another region is a 400 that creates nothing.
With a signer (``fleet.ledger.signing``) the identity's signature and expiry are checked first:
a forged, tampered or expired notice is a 403, counted, and creates nothing. Durability and
idempotent spend are the ledger's (``fleet.ledger``).
"""

from __future__ import annotations

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


def _price(raw: str | None, required: bool) -> float | None:
    if raw is None or raw == "":
        if required:
            raise NoticeError(400, "missing price")
        return None
    if raw.startswith("${"):
        if required:
            raise NoticeError(400, "price macro not substituted")
        return None
    try:
        value = float(raw)
    except ValueError:
        raise NoticeError(400, "price is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise NoticeError(400, "price must be finite and non-negative")
    return value


def parse_notice(kind: str, query: str, region: str, signer=None) -> Notice:
    if kind not in KINDS:
        raise NoticeError(404, f"unknown notice kind {kind!r}")
    if len(query) > MAX_QUERY:
        raise NoticeError(400, "query too long")
    q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if signer is not None:
        try:
            signer.verify(q)
        except SignatureError as exc:
            raise NoticeError(403, exc.reason) from None
    missing = [k for k in IDENTITY if not q.get(k)]
    if missing:
        raise NoticeError(400, f"missing identity fields {missing}")
    if q["r"] != region:
        raise NoticeError(400, "notice for another region")
    try:
        ts = int(q["t"])
    except ValueError:
        raise NoticeError(400, "bad bid time") from None
    loss = None
    if kind == "loss":
        lr = q.get("lr", "")
        if lr and not lr.startswith("${"):
            try:
                loss = int(lr)
            except ValueError:
                raise NoticeError(400, "loss reason is not an integer") from None
    auc = q.get("a") or q.get("auc")
    imp = q.get("i") or q.get("imp")
    return Notice(
        kind=kind,
        bid_id=q["bid"],
        campaign=q["c"],
        creative=q["cr"],
        region=q["r"],
        bid_ts_ms=ts,
        auction_id=None if not auc or auc.startswith("${") else auc,
        imp_id=None if not imp or imp.startswith("${") else imp,
        price=_price(q.get("px"), required=kind in ("win", "bill")),
        currency=q.get("cur") if q.get("cur") and not q["cur"].startswith("${") else None,
        loss_reason=loss,
        publisher=q.get("p") or None,
        our_bid=_price(q.get("b"), required=False),
        model=q.get("m") or None,
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
            return exc.status, exc.reason, None
        self.counts[kind] += 1
        if kind == "bill" and n.price is not None:
            self.spend_cpm[n.campaign] += n.price
        return 200, "", n
