"""The supply-chain policy (fleet/pipeline/supply_chain.py): findings, the per-tier verdict, the
2.5 placement, sellers.json files (local, refreshed by a command), and the bid path's answers."""

from __future__ import annotations

import json

import msgspec
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.config import SupplyChainPolicy
from fleet.openrtb.model import BidRequest
from fleet.pipeline import supply_chain
from fleet.pipeline.bidder import RegionBidder

SELLERS = {"exch-ams.example": frozenset({"pub-7", "reseller-3"})}


def node(asi="exch-ams.example", sid="pub-7", hp=1):
    return {"asi": asi, "sid": sid, "hp": hp}


def request(schain=None, ext_schain=None) -> BidRequest:
    body = {"id": "r", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    if schain is not None:
        body["source"] = {"schain": schain}
    if ext_schain is not None:
        body["source"] = {"ext": {"schain": ext_schain}}
    return msgspec.convert(body, BidRequest)


def test_findings():
    assert supply_chain.findings(None, 4, SELLERS) == ["missing"]
    sc = supply_chain.chain(request({"complete": 1, "nodes": [node()]}))
    assert supply_chain.findings(sc, 4, SELLERS) == []
    sc = supply_chain.chain(request({"complete": 0, "nodes": [node()] * 5}))
    assert supply_chain.findings(sc, 4, SELLERS) == ["incomplete", "too_long"]
    sc = supply_chain.chain(request({"complete": 1, "nodes": [node(sid="nobody")]}))
    assert supply_chain.findings(sc, 4, SELLERS) == ["unknown_seller"]
    sc = supply_chain.chain(request({"complete": 1, "nodes": [node(asi="other.example", sid="x")]}))
    assert supply_chain.findings(sc, 4, SELLERS) == []  # no sellers.json for that system: not judged


def test_the_25_placement_is_read():
    sc = supply_chain.chain(request(ext_schain={"complete": 0, "nodes": [node()]}))
    assert sc is not None and sc.complete == 0 and sc.nodes[0].sid == "pub-7"


def test_the_strongest_action_wins():
    policy = SupplyChainPolicy(incomplete="bid_down", too_long="refuse", max_hops=2, bid_down=0.5)
    v = supply_chain.judge(request({"complete": 0, "nodes": [node()]}), policy, SELLERS)
    assert v == supply_chain.Verdict("bid_down", "schain_incomplete", 16, 0.5)
    v = supply_chain.judge(request({"complete": 0, "nodes": [node()] * 3}), policy, SELLERS)
    assert v.action == "refuse" and v.reason == "schain_too_long" and v.nbr == 17
    assert supply_chain.judge(request({"complete": 1, "nodes": [node()]}), policy, SELLERS) == supply_chain.FINE
    assert supply_chain.judge(request(), SupplyChainPolicy(missing="refuse"), {}).nbr == 16


def test_sellers_files_load_and_bad_ones_are_left_out(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"sellers": [{"seller_id": "s1"}, {"seller_id": 42}]}))
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    loaded = supply_chain.load_sellers({"A.example": str(good), "b.example": str(bad),
                                        "c.example": str(tmp_path / "missing.json")})
    assert loaded == {"a.example": frozenset({"s1", "42"})}


def test_refresh_writes_only_files_that_parse(tmp_path):
    dest = tmp_path / "s" / "x.json"
    dest.parent.mkdir()
    dest.write_text('{"sellers": [{"seller_id": "old"}]}')
    bodies = {"https://x.example/sellers.json": b"<html>oops</html>",
              "https://y.example/sellers.json": b'{"sellers": [{"seller_id": "new"}]}'}
    out = supply_chain.refresh({"x.example": str(dest), "y.example": str(tmp_path / "y.json")}, bodies.__getitem__)
    assert out["y.example"] == "ok" and out["x.example"].startswith("DecodeError")
    assert "old" in dest.read_text()  # the unreadable answer did not replace the file
    assert supply_chain.load_sellers({"y.example": str(tmp_path / "y.json")}) == {"y.example": frozenset({"new"})}


# -- through the bid path (regions.yaml tiers: premium refuses incomplete chains, standard bids
# them down, remnant bids them) -------------------------------------------------------------


@pytest.fixture(scope="module")
def bidder(regions):
    return RegionBidder("eu-west", regions, load_catalog(regions.defaults.catalog))


def body(rid: str, floor: float, schain) -> bytes:
    req = {
        "id": rid, "at": 2, "tmax": 100, "cur": ["USD"],
        "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}]}, "bidfloor": floor}],
        "site": {"id": "s1", "domain": "sports.example", "publisher": {"id": "pub-7"}},
        "device": {"ua": "Mozilla/5.0 Chrome/124.0", "ip": "81.2.69.160", "devicetype": 2, "os": "windows",
                   "geo": {"country": "DEU"}},
    }
    if schain is not None:
        req["source"] = {"schain": schain}
    return json.dumps(req).encode()


def price(answer) -> float:
    return json.loads(answer.body)["seatbid"][0]["bid"][0]["price"]


def test_tiers_bid_bid_down_or_refuse(bidder):
    complete = {"complete": 1, "ver": "1.0", "nodes": [node()]}
    incomplete = {"complete": 0, "ver": "1.0", "nodes": [node()]}
    fine = bidder.bid(body("sc-1", 0.1, complete))
    down = bidder.bid(body("sc-2", 1.0, incomplete))  # standard tier: bid down x0.8
    base = bidder.bid(body("sc-3", 1.0, complete))
    assert fine.status == down.status == base.status == 200
    assert price(base) == pytest.approx(1.8) and price(down) == pytest.approx(1.8 * 0.8)
    remnant = bidder.bid(body("sc-3b", 0.1, incomplete))  # remnant tier: bid as usual
    assert price(remnant) == pytest.approx(1.8)
    refused = bidder.bid(body("sc-4", 6.0, incomplete))  # premium tier: refuse
    assert refused.status == 204 and refused.body == b""
    assert refused.headers["x-openrtb-nbr"] == "16" and refused.headers["x-fleet-reason"] == "schain_incomplete"
    unknown = bidder.bid(body("sc-5", 6.0, {"complete": 1, "nodes": [node(sid="stranger")]}))
    assert unknown.status == 204 and unknown.headers["x-openrtb-nbr"] == "17"
    long_chain = bidder.bid(body("sc-6", 0.1, {"complete": 1, "nodes": [node()] * 9}))  # remnant: 8 hops
    assert long_chain.status == 204 and long_chain.headers["x-fleet-reason"] == "schain_too_long"


@pytest.mark.parametrize("schain", [{"complete": "yes"}, {"nodes": "x"}, {"nodes": [{"asi": 5}]}, [], "chain"])
def test_a_malformed_chain_is_never_a_5xx(bidder, schain):
    a = bidder.bid(body(f"sc-bad-{json.dumps(schain)}", 0.1, schain))
    assert a.status < 500


def test_the_bid_path_fetches_no_sellers_json(bidder, monkeypatch):
    """sellers.json files are read when the region starts; judging a chain never touches the
    network, whatever system it names."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network on the request path")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    chain = {"complete": 1, "nodes": [node(sid="stranger"), node(asi="never-seen.example", sid="x")]}
    a = bidder.bid(body("sc-net", 1.0, chain))
    assert a.status == 200 and price(a) == pytest.approx(1.8 * 0.8)  # unknown seller: bid down


def test_fleet_sellers_refresh_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import importlib

    cli = importlib.import_module("fleet.cli.sellers")  # the package's ``sellers`` is the command

    import yaml

    from fleet.config import REPO_ROOT

    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    regions = tmp_path / "regions.yaml"
    raw["admission"]["sellers"] = {"ok.example": str(tmp_path / "ok.json"), "bad.example": str(tmp_path / "bad.json")}
    regions.write_text(yaml.safe_dump(raw))

    class Answer:
        def __init__(self, url):
            self.content = b'{"sellers": [{"seller_id": "s"}]}' if "ok.example" in url else b"nope"

        def raise_for_status(self):
            pass

    monkeypatch.setattr(cli.httpx, "get", lambda url, **kw: Answer(url))
    result = CliRunner().invoke(cli.sellers, ["refresh", "--regions-file", str(regions)])
    assert result.exit_code == 1  # one system failed
    assert "ok.example: ok" in result.output and "bad.example: DecodeError" in result.output
    assert json.loads((tmp_path / "ok.json").read_text())["sellers"][0]["seller_id"] == "s"
    assert not (tmp_path / "bad.json").exists()
