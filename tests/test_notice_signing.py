"""The notice URLs' shared query is encoded once per bid and each kind signed on its own
(``fleet.pipeline.respond.notice_urls``, ``fleet.ledger.signing``): attacked here.

- The URLs are byte for byte what the documented scheme gives (``urlencode`` of the fields, an
  HMAC-SHA256 over the percent-encoded common fields and then the kind), recomputed here
  independently, so a notice for a bid minted before the change still verifies after it.
- Each URL verifies as its own kind only: a win URL replayed as a bill (or any other swap) is
  refused, and so is a URL whose signed kind is rewritten.
- Changing, adding or removing any signed field breaks the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import string
from types import SimpleNamespace
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.ledger.signing import COMMON, NoticeSigner, SignatureError, encode
from fleet.pipeline.notices import NoticeCounter
from fleet.pipeline.respond import NOTICE_KINDS, notice_urls

KEY = {"k9": b"s" * 32}
BASE = "http://127.0.0.1:8000/us-east"
T_MS = 1_800_000_000_000
CLOCK = lambda: T_MS / 1000.0  # noqa: E731
# exchange-supplied ids that a naive encoder or a shifted field boundary would get wrong
NASTY = ["a&b=c", "x\x1fb=9999.0000", "100%", "a+b c", "é/ü?#", "~._-", "", "n=bill", "s=AAAA", "\u2603\x00"]


def _offer(campaign="c-1", creative="cr-1", imp="1", source="model:ctr/v1", price=1.23456):
    return SimpleNamespace(partner=None, campaign=SimpleNamespace(id=campaign),
                           creative=SimpleNamespace(id=creative), imp_id=imp, source=source, price=price)


def _reference(key_id: str, key: bytes, fields: dict[str, str], expires_at: float) -> dict[str, str]:
    """The URLs as the scheme documents them, computed without the code under test."""
    full = {**fields, "x": str(int(expires_at)), "k": key_id}
    ident = urlencode(full, quote_via=quote)
    common = "\x1f".join(f"{k}={quote(full.get(k, ''), safe='')}" for k in COMMON)
    macros = {"win": "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}", "bill": "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}",
              "loss": "&lr=${AUCTION_LOSS}&px=${AUCTION_MIN_TO_WIN}", "click": ""}
    out = {}
    for kind in NOTICE_KINDS:
        mac = hmac.new(key, f"{common}\x1fn={kind}".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")
        out[kind] = f"{BASE}/notice/{kind}?{ident}&n={kind}&s={sig}{macros[kind]}"
    return out


def _urls(auction="auc-1", publisher="pub-1", campaign="c-1", creative="cr-1", imp="1", test=False, cur="USD"):
    signer = NoticeSigner(KEY, clock=CLOCK)
    offer = _offer(campaign, creative, imp)
    urls = notice_urls(BASE, "b1f", offer, "us-east", T_MS, publisher, auction, signer, currency=cur, test=test,
                       expires_at=T_MS / 1000.0 + 900)
    fields = {"a": auction, "i": imp, "bid": "b1f", "c": campaign, "cr": creative, "r": "us-east",
              "m": offer.source, "t": str(T_MS), "p": publisher, "b": "1.2346", "cu": cur}
    if test:
        fields["e"] = "1"
    return signer, urls, fields


@pytest.mark.parametrize("nasty", NASTY)
def test_urls_are_the_documented_encoding_and_signatures_byte_for_byte(nasty):
    for where in ("auction", "publisher", "campaign", "creative", "imp"):
        _, urls, fields = _urls(**{where: nasty})
        assert urls == _reference("k9", KEY["k9"], fields, T_MS / 1000.0 + 900)
    _, urls, fields = _urls(auction=nasty, test=True)
    assert urls == _reference("k9", KEY["k9"], fields, T_MS / 1000.0 + 900)


def test_unsigned_urls_are_urlencode_of_the_fields():
    offer = _offer(campaign="c&1", creative="cr 1")
    urls = notice_urls(BASE, "b1", offer, "us-east", T_MS, "p=1", "a\x1f1", None, currency="USD")
    fields = {"a": "a\x1f1", "i": "1", "bid": "b1", "c": "c&1", "cr": "cr 1", "r": "us-east",
              "m": offer.source, "t": str(T_MS), "p": "p=1", "b": "1.2346", "cu": "USD"}
    assert urls["bill"] == (f"{BASE}/notice/bill?{urlencode(fields, quote_via=quote)}&n=bill"
                            "&px=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_encode_is_quote_with_nothing_safe(value):
    assert encode(value) == quote(value, safe="")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=200), st.text(), st.sampled_from(NOTICE_KINDS))
def test_signatures_are_the_standard_hmac_for_every_key_length(key, auction, kind):
    """The signer computes HMAC-SHA256 from the key's padded states (``_KeyPads``): keys shorter
    than, equal to and longer than the 64-byte block (hashed first) must give the library's MAC,
    and each verifies."""
    signer = NoticeSigner({"kx": key}, clock=CLOCK)
    fields = {"a": auction, "i": "1", "n": kind}
    q = signer.sign(fields, expires_at=T_MS / 1000.0 + 60)
    common = "\x1f".join(f"{k}={quote(q.get(k, ''), safe='')}" for k in COMMON)
    mac = hmac.new(key, f"{common}\x1fn={quote(kind, safe='')}".encode(), hashlib.sha256).digest()
    assert q["s"] == base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")
    signer.verify(q, kind)
    with pytest.raises(SignatureError):
        signer.verify({**q, "a": auction + "x"}, kind)


def _query(url: str) -> dict[str, str]:
    q = urlsplit(url).query.replace("${AUCTION_PRICE}", "1.0").replace("${AUCTION_CURRENCY}", "USD")
    q = q.replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "1.0")
    return {k: v[0] for k, v in parse_qs(q, keep_blank_values=True).items()}


@pytest.mark.parametrize("nasty", ["auc-1", *NASTY])
def test_each_url_verifies_as_its_own_kind_and_no_other(nasty):
    signer, urls, _ = _urls(auction=nasty, publisher=nasty)
    for kind, url in urls.items():
        q = _query(url)
        signer.verify(q, kind)
        for other in NOTICE_KINDS:
            if other == kind:
                continue
            with pytest.raises(SignatureError, match="kind swapped"):  # a win URL replayed as a bill
                signer.verify(q, other)
            with pytest.raises(SignatureError, match="bad signature"):  # its signed kind rewritten
                signer.verify({**q, "n": other}, other)
            # the other kind's signature grafted on: the common part matches, the kind does not
            with pytest.raises(SignatureError, match="bad signature"):
                signer.verify({**q, "s": _query(urls[other])["s"]}, kind)


def test_a_win_url_sent_to_the_bill_endpoint_is_403_and_counts_nothing():
    signer, urls, _ = _urls()
    counter = NoticeCounter(signer)
    query = urlsplit(urls["win"]).query.replace("${AUCTION_PRICE}", "1.0").replace("${AUCTION_CURRENCY}", "USD")
    assert counter.handle("bill", query, "us-east")[:2] == (403, "kind swapped")
    assert counter.handle("win", query, "us-east")[0] == 200
    assert counter.spend_cpm == {} and counter.counts["forged"] == 1


@pytest.mark.parametrize("field", [f for f in COMMON if f != "e"] + ["n"])
def test_every_signed_field_tampered_or_dropped_breaks_the_signature(field):
    signer, urls, _ = _urls()
    q = _query(urls["bill"])
    signer.verify(q, "bill")
    rnd = random.Random(field)
    for value in ("", q[field] + "0", "".join(rnd.choices(string.ascii_letters, k=8)), q[field] + "\x1fb=9999"):
        if value == q[field]:
            continue
        with pytest.raises(SignatureError, match="bad signature|unknown key"):
            signer.verify({**q, field: value}, "bill" if field != "n" else value)
    dropped = {k: v for k, v in q.items() if k != field}
    with pytest.raises(SignatureError, match="bad signature|unknown key"):
        signer.verify(dropped, "bill" if field != "n" else None)


def test_a_test_flag_added_or_removed_breaks_the_signature():
    signer, urls, _ = _urls()
    q = _query(urls["bill"])
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify({**q, "e": "1"}, "bill")
    signer, urls, _ = _urls(test=True)
    q = _query(urls["bill"])
    signer.verify(q, "bill")
    with pytest.raises(SignatureError, match="bad signature"):
        signer.verify({k: v for k, v in q.items() if k != "e"}, "bill")


# -- the key list: no key anyone knows ------------------------------------------------------------

_GOOD = (b"a" * 32).hex()


@pytest.mark.parametrize("spec", [f"k1:{_GOOD},", f",k1:{_GOOD}", "k1:", f"k1:{_GOOD},k0:", f"k1:{_GOOD},k1:{_GOOD}",
                                  "k1:zz", "k1:00ff"])
def test_a_malformed_key_list_stops_the_start_rather_than_accept_a_key_anyone_knows(monkeypatch, spec):
    """A stray comma or an id without its key once left an empty key (id "" or the id's), and a
    bill signed with ``b""`` was counted at any bid the forger wrote (found by a reviewer)."""
    monkeypatch.setenv("FLEET_NOTICE_KEYS", spec)
    with pytest.raises(ValueError):
        NoticeSigner()


def test_a_bill_signed_with_an_empty_key_creates_no_spend_even_if_one_were_configured():
    signer = NoticeSigner({"k1": b"a" * 32, "": b"", "k0": b""}, clock=lambda: T_MS / 1000.0)
    fields = {"a": "auc-1", "i": "1", "bid": "forged", "c": "c-1", "cr": "cr-1", "r": "us-east", "m": "rule",
              "t": str(T_MS), "p": "pub-1", "b": "9.0000", "cu": "USD", "x": str(T_MS // 1000 + 900)}
    for kid in ("", "k0"):
        common = "\x1f".join(f"{k}={encode({**fields, 'k': kid}.get(k, ''))}" for k in COMMON)
        mac = hmac.new(b"", f"{common}\x1fn=bill".encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")
        query = "&".join(f"{k}={encode(v)}" for k, v in {**fields, "k": kid}.items()) + f"&n=bill&s={sig}&px=9.0&cur=USD"
        status, _, _ = NoticeCounter(signer).handle("bill", query, "us-east")
        assert status == 403, (kid, status)
