"""Turning JSON fixture cases into wire bodies, and checking answers against expectations.

Shared by the in-process and the over-HTTP corpus tests, so both judge by the same rules.
"""

from __future__ import annotations

import gzip
import html
import json
import math
import re

HEADERS = {"content-type": "application/json", "x-openrtb-version": "2.6"}


def wire(case: dict) -> tuple[bytes, dict[str, str]]:
    headers = {**HEADERS, **case.get("headers", {})}
    if "raw" in case:
        body = case["raw"].encode()
    elif case.get("nest_unknown_field_depth"):
        d = case["nest_unknown_field_depth"]
        text = json.dumps(case["body"])
        body = (text[:-1] + ', "ext": ' + "[" * d + "]" * d + "}").encode()
    else:
        obj = case.get("request", case.get("body"))
        if case.get("pad_ext_bytes"):
            obj = {**obj, "ext": {"pad": " " * case["pad_ext_bytes"]}}
        body = json.dumps(obj).encode()
    if case.get("gzip"):
        body = gzip.compress(body)
    return body, headers


def tolerated(stats: dict) -> dict[str, int]:
    """The ``tolerated.*`` counters of a bidder's stats, without the prefix."""
    return {k[len("tolerated."):]: v for k, v in stats.items() if k.startswith("tolerated.")}


def check_tolerated(case: dict, before: dict, after: dict) -> None:
    """Each repair the case expects (``expect.tolerated``) was counted once more."""
    b, a = tolerated(before), tolerated(after)
    for what in case["expect"].get("tolerated", []):
        assert a.get(what, 0) == b.get(what, 0) + 1, (what, a)


def check_answer(case: dict, status: int, headers: dict[str, str], body: bytes) -> None:
    """Assert the answer matches the case's ``expect`` block (see tests/fixtures/README.md)."""
    exp = case["expect"]
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == exp["status"], (status, headers, body[:300])
    if status == 204:
        assert body == b""
        assert headers.get("x-openrtb-nbr") is not None
        if "nbr" in exp:
            assert headers["x-openrtb-nbr"] == str(exp["nbr"])
        if "reason" in exp:
            assert headers["x-fleet-reason"] == exp["reason"]
        return
    if exp.get("gzip_response"):
        assert headers.get("content-encoding") == "gzip"
        if body[:2] == b"\x1f\x8b":  # clients that do not inflate for us
            body = gzip.decompress(body)
    resp = json.loads(body)
    assert resp["id"] == case["request"]["id"]
    assert headers["x-openrtb-version"] in ("2.5", "2.6")
    assert resp["cur"] == exp.get("cur", "USD")
    bids = {b["impid"]: b for sb in resp["seatbid"] for b in sb["bid"]}
    assert set(bids) == set(exp["bids"]), bids.keys()
    for imp_id in exp.get("no_bid_imps", []):
        assert imp_id not in bids
    imps = {str(imp["id"]): imp for imp in case["request"]["imp"]}  # an id may come as a number
    assert len({b["id"] for b in bids.values()}) == len(bids), "bid ids must be unique"
    assert len({b["cid"] for b in bids.values()}) == len(bids), "one campaign per request"
    for imp_id, want in exp["bids"].items():
        b = bids[imp_id]
        assert b["cid"] == want["cid"], (imp_id, b["cid"])
        if "price" in want:
            assert math.isclose(b["price"], want["price"], rel_tol=1e-6), (b["price"], want["price"])
        for key in ("crid", "w", "h", "mtype", "dealid", "bundle", "dur"):
            if key in want:
                assert b.get(key) == want[key], (key, b.get(key))
        for key, value in want.get("ext", {}).items():  # e.g. ext.dsa
            assert b.get("ext", {}).get(key) == value, (key, b.get("ext"))
        for key in want.get("ext_absent", []):
            assert key not in b.get("ext", {}), (key, b.get("ext"))
        contains = want.get("adm_contains", [])
        for part in [contains] if isinstance(contains, str) else contains:
            assert part in b["adm"], (part, b["adm"][:400])
        for part in want.get("adm_excludes", []):
            assert part not in b["adm"], (part, b["adm"][:400])
        if "nurl_prefix" in want:
            assert want["nurl_prefix"] in b["nurl"]
        if want.get("all_https"):
            urls = [b[k] for k in ("nurl", "burl", "lurl")] + [b.get("ext", {}).get("clickurl", "https://")]
            urls += re.findall(r"(?:https?:)?//[^\s\"'<>\]]+", html.unescape(b["adm"]))
            assert all(u.startswith("https://") for u in urls), urls
        # Every bid carries notice URLs with the exchange's macros and the markup.
        assert "${AUCTION_PRICE}" in b["nurl"] and "${AUCTION_PRICE}" in b["burl"]
        assert "${AUCTION_LOSS}" in b["lurl"]
        assert b["adm"] and b["adomain"] and b["crid"]
        imp = imps[imp_id]
        if b.get("dealid") is None and imp.get("bidfloorcur", "USD") == resp["cur"]:
            assert b["price"] >= float(imp.get("bidfloor", 0.0)) - 1e-9  # a floor may come as a string
    ext = resp.get("ext", {}).get("fleet", {})
    assert ext.get("contextual") == exp.get("contextual")
