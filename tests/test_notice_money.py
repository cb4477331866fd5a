"""Money promises at the notice boundary, attacked: what the exchange must not change is signed
(kind, currency, deadline), what it cannot price is kept at an upper bound, a reservation lives
as long as a bill may still come, test requests spend nothing, fixed-price deals bid their price.
Each test names the promise in docs/ledger.md it backs."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.ledger.signing import NoticeSigner
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.notices import NoticeCounter, NoticeSettlement, parse_notice
from fleet.pipeline.pacing import LeaseBudget

REQ = {"id": "m1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "device": {"geo": {"country": "USA"}}}
KEY = {"k0": b"m" * 32}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _bidder(regions, clock=None, **kw):
    clock = clock or Clock()
    b = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog),
                     signer=NoticeSigner(KEY, clock=clock), clock=clock, **kw)
    return b, clock


def _bid(bidder, req=REQ):
    a = bidder.bid(json.dumps(req).encode())
    assert a.status == 200, a.headers
    return msgspec.json.decode(a.body)["seatbid"][0]["bid"][0], a


def _fill(url: str, price: str | None = "1.0000", cur: str | None = "USD") -> tuple[str, str]:
    """What an exchange sends back: the path's kind and the query with its macros filled."""
    u = urlsplit(url)
    q = u.query
    if price is not None:
        q = q.replace("${AUCTION_PRICE}", price)
    if cur is not None:
        q = q.replace("${AUCTION_CURRENCY}", cur)
    q = q.replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "1.0")
    return u.path.rsplit("/", 1)[1], q


def test_a_loss_url_called_as_a_bill_is_forged(regions):
    """docs/ledger.md, "Signed notices": the kind is signed; a loss URL sent to /notice/bill (with
    a price up to our bid) is refused 403 and counted as forged, and creates no spend."""
    bidder, _ = _bidder(regions)
    bid, _ = _bid(bidder)
    counter = NoticeCounter(bidder.signer)
    _, loss_q = _fill(bid["lurl"])
    for kind in ("bill", "win"):
        status, reason, _ = counter.handle(kind, loss_q + "&px=1.0", "us-east", NoticeSettlement(bidder).admit)
        assert (status, reason) == (403, "kind swapped")
    # Rewriting the signed kind itself breaks the signature.
    status, reason, _ = counter.handle("bill", loss_q.replace("n=loss", "n=bill") + "&px=1.0", "us-east",
                                       NoticeSettlement(bidder).admit)
    assert (status, reason) == (403, "bad signature")
    assert counter.counts["forged"] == 3 and counter.counts["forged.kind_swapped"] == 2
    assert counter.spend_cpm == {}
    # The genuine URLs still verify, each as its own kind.
    for key, kind in (("nurl", "win"), ("burl", "bill"), ("lurl", "loss")):
        path_kind, q = _fill(bid[key])
        assert path_kind == kind
        assert counter.handle(kind, q, "us-east", NoticeSettlement(bidder).admit)[0] == 200


def test_click_urls_are_signed_for_clicks_only(regions):
    bidder, _ = _bidder(regions)
    bid, _ = _bid(bidder)
    _, click_q = _fill(bid["ext"]["clickurl"])
    counter = NoticeCounter(bidder.signer)
    assert counter.handle("click", click_q, "us-east")[0] == 200
    assert counter.handle("bill", click_q + "&px=1.0", "us-east", NoticeSettlement(bidder).admit)[:2] == (403, "kind swapped")


def test_the_deadline_is_signed_and_follows_imp_exp(regions):
    """docs/ledger.md, "The overspend bound": a bid's notices are accepted until its deadline, the
    imp's ``exp`` when stated (at most max_bill_window_s), else bill_window_s; the response says so
    in ``bid.exp``; a bill after it is refused, and pushing ``x`` out breaks the signature."""
    ls = regions.defaults.ledger
    bidder, clock = _bidder(regions)
    bid, _ = _bid(bidder)
    assert bid["exp"] == int(ls.bill_window_s)
    long_req = {**REQ, "id": "m2", "imp": [{**REQ["imp"][0], "exp": 2400}]}
    long_bid, _ = _bid(bidder, long_req)
    assert long_bid["exp"] == 2400
    huge = {**REQ, "id": "m3", "imp": [{**REQ["imp"][0], "exp": 10 ** 7}]}
    assert _bid(bidder, huge)[0]["exp"] == int(ls.max_bill_window_s)
    counter = NoticeCounter(bidder.signer)
    clock.t += ls.bill_window_s + 60  # past the default window, inside the long one
    _, q = _fill(bid["burl"])
    assert counter.handle("bill", q, "us-east", NoticeSettlement(bidder).admit)[:2] == (403, "expired")
    _, q_long = _fill(long_bid["burl"])
    assert counter.handle("bill", q_long, "us-east", NoticeSettlement(bidder).admit)[0] == 200
    x = parse_qs(q)["x"][0]
    pushed = q.replace(f"x={x}", f"x={int(x) + 3600}")
    assert counter.handle("bill", pushed, "us-east", NoticeSettlement(bidder).admit)[:2] == (403, "bad signature")


def test_an_unsubstituted_currency_is_the_responses_not_the_fleets(regions):
    """docs/ledger.md: a JPY response billed with ``${AUCTION_CURRENCY}`` left in place is read in
    JPY (the signed ``cu``). Before, it was read as USD: 'price above the bid', a 400, spend lost."""
    bidder, _ = _bidder(regions)
    bid, a = _bid(bidder, {**REQ, "id": "jpy", "cur": ["JPY"]})
    assert msgspec.json.decode(a.body)["cur"] == "JPY"
    jpy_price = bid["price"] * 0.9  # the exchange charges 90% of the bid, in the response's currency
    _, q = _fill(bid["burl"], price=f"{jpy_price:.4f}", cur=None)
    assert "${AUCTION_CURRENCY}" in q
    counter = NoticeCounter(bidder.signer)
    status, reason, n = counter.handle("bill", q, "us-east", NoticeSettlement(bidder).admit)
    assert (status, reason) == (200, "")
    assert n.currency == "USD" and n.price == pytest.approx(jpy_price * regions.currencies["JPY"], rel=1e-3)
    assert n.price <= n.our_bid


@pytest.mark.parametrize("px", ["${AUCTION_PRICE}", "", "AAAAAFkGGgAAAAAAFAAUABQAAAAAAAAA", "NaN", "-3"])
def test_a_bill_whose_price_cannot_be_read_is_kept_at_our_bid_and_flagged(regions, px):
    """docs/ledger.md, "Prices that cannot be read": an encrypted, base64, empty or unsubstituted
    price is an ``unpriced`` bill at our signed bid (the most the exchange may charge), not a 400."""
    bidder, _ = _bidder(regions)
    bid, _ = _bid(bidder)
    _, q = _fill(bid["burl"], price=px)
    counter = NoticeCounter(bidder.signer)
    status, _, n = counter.handle("bill", q, "us-east", NoticeSettlement(bidder).admit)
    assert status == 200 and n.flags == ("unpriced",)
    assert n.price == pytest.approx(n.our_bid) and n.currency in (None, "USD")
    assert counter.counts["bill.unpriced"] == 1
    from fleet.ledger.events import notice_event

    ev = notice_event("bill", n, 0.0)
    assert ev.flag == "unpriced" and ev.price == pytest.approx(n.our_bid) and ev.bid_ts > 0


def test_without_a_signed_bid_an_unreadable_price_is_still_refused():
    with pytest.raises(Exception) as exc:
        parse_notice("bill", "bid=b&c=c&cr=cr&r=us-east&t=1&px=${AUCTION_PRICE}", "us-east")
    assert exc.value.status == 400


def _lease_budget(clock, amount=0.01):
    from fleet.control.messages import Lease

    b = LeaseBudget(hold_s=30.0, clock=clock)
    b.apply({"c-banner-us": Lease(id="l1", campaign="c-banner-us", amount=amount, expires_at=clock() + 10 ** 6,
                                  throttle=1.0)}, 1)
    return b


def test_a_bill_after_the_old_hold_still_finds_its_reservation(regions):
    """docs/ledger.md, "The overspend bound": a reservation is held until the bid's deadline, so
    the lease cannot commit the same money twice when a video bill comes minutes late. With the
    30 s hold this test spends 0.014 against a lease of 0.01."""
    clock = Clock()
    budget = _lease_budget(clock)
    camp = next(c for c in load_catalog(regions.defaults.catalog) if c.id == "c-banner-us")
    price = 0.007  # two bids fit at most once: 0.014 > 0.01
    assert budget.reserve(camp, price, clock(), "b1", until=clock() + 900)  # keyed by bid id
    assert not budget.reserve(camp, price, clock(), "b2", until=clock() + 900)
    clock.t += 120  # past the old 30 s hold, inside the bid's window
    budget.expire(clock())
    assert not budget.reserve(camp, price, clock(), "b3", until=clock() + 900), "the lease recommitted money a bill may still claim"
    from fleet.pipeline.notices import Notice

    bill = Notice("bill", "b1", camp.id, "cr", "us-east", int((clock() - 120) * 1000), "a1", "1", price * 1000,
                  "USD", None, our_bid=price * 1000)
    budget.settle(bill)
    assert budget.spend[camp.id] == pytest.approx(price)
    assert budget.leases[camp.id].committed <= budget.leases[camp.id].amount + 1e-12
    clock.t += 1000  # past the deadline: an unbilled hold goes back, never earlier
    assert budget.reserve(camp, 0.002, clock(), "a4:1", until=clock() + 900)
    budget.expire(clock.t + 901)
    assert budget.reserved[camp.id] == 0.0


def test_holds_expire_by_their_own_deadline_not_their_order(regions):
    clock = Clock()
    budget = _lease_budget(clock, amount=1.0)
    camp = next(c for c in load_catalog(regions.defaults.catalog) if c.id == "c-banner-us")
    budget.reserve(camp, 0.1, clock(), "long:1", until=clock() + 3000)
    budget.reserve(camp, 0.1, clock(), "short:1", until=clock() + 10)
    budget.expire(clock() + 11)
    assert set(budget.holds) == {"long:1"}


def test_a_win_keeps_the_whole_bid_held_until_the_bill(regions):
    clock = Clock()
    budget = _lease_budget(clock, amount=1.0)
    camp = next(c for c in load_catalog(regions.defaults.catalog) if c.id == "c-banner-us")
    from fleet.pipeline.notices import Notice

    budget.reserve(camp, 0.5, clock(), "b", until=clock() + 900)
    win = Notice("win", "b", camp.id, "cr", "us-east", int(clock() * 1000), "a", "1", 100.0, "USD", None)
    budget.settle(win)
    assert budget.reserved[camp.id] == pytest.approx(0.5)


def test_test_requests_bid_but_reserve_and_spend_nothing(regions):
    """docs/ledger.md: ``test: 1`` bids as usual, reserves nothing, counts no opportunity, and its
    events and notices are flagged ``test`` (the ledger keeps them out of spend)."""
    clock = Clock()
    bidder, _ = _bidder(regions, clock)
    bidder.budget = _lease_budget(clock, amount=1.0)
    bid, a = _bid(bidder, {**REQ, "id": "t1", "test": 1})
    assert bidder.budget.reserved == {} and bidder.budget.holds == {}
    assert sum(bidder.budget.opportunities.values()) == 0
    selected = [e for e in a.ledger if e.kind == "selected"]
    assert selected and all(e.flag == "test" for e in selected)
    _, q = _fill(bid["burl"], price=f"{bid['price']:.4f}")
    n = parse_notice("bill", q, "us-east", bidder.signer)
    assert "test" in n.flags
    NoticeSettlement(bidder).learn(n)
    assert bidder.budget.spend == {}
    # The flag is signed: dropping e=1 breaks the signature.
    assert NoticeCounter(bidder.signer).handle("bill", q.replace("&e=1", ""), "us-east")[0] == 403
    # A live request reserves as before.
    _bid(bidder, {**REQ, "id": "t2"})
    assert bidder.budget.holds


def test_a_fixed_price_deal_bids_the_deal_price(regions):
    """OpenRTB 2.6 ``at: 3``: the deal's floor is its price; shading it would not be a bid."""
    bidder, _ = _bidder(regions)
    deal = {"id": "deal-premium-1", "bidfloor": 9.5, "at": 3}
    req = {"id": "fx", "imp": [{"id": "1", "banner": {"w": 300, "h": 250},
                                "pmp": {"private_auction": 1, "deals": [deal]}}],
           "device": {"geo": {"country": "USA"}}}
    bid, _ = _bid(bidder, req)
    assert bid["dealid"] == "deal-premium-1" and bid["price"] == pytest.approx(9.5)
    first = {**req, "id": "fp", "imp": [{**req["imp"][0], "pmp": {"private_auction": 1,
                                                                "deals": [{**deal, "at": 1}]}}]}
    assert _bid(bidder, first)[0]["price"] != pytest.approx(9.5)
