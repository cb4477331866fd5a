"""A win resold from a demand partner is scored apart from the campaigns' (issue 21).

The oracle knows only the catalog, so a partner's win must not count as a fleet campaign's win
(nor as a bid for an unknown campaign); the scorecard values it at the partner's bid beside
what the exchange charged, and ``with_partners`` adds the two sources up. And ``fleet sim run
--up --partners sim`` brings the fleet up calling the simulated partners.
"""

from __future__ import annotations

import random

from fleet.sim.exchange import AuctionRecord
from fleet.sim.market import Market
from fleet.sim.scorecard import score


def _records() -> list[AuctionRecord]:
    market, rng = Market(seed=3), random.Random(3)
    opps = [market.opportunity(rng, "us-east", f"p{i}") for i in range(4)]
    return [
        AuctionRecord(opps[0], 1.0, status=200, won=True, price=2000.0, bid_price=2500.0,
                      campaign_id="fast-c-1", partner="fast"),
        AuctionRecord(opps[1], 2.0, status=200, won=True, price=1000.0, bid_price=1000.0,
                      campaign_id="euro-c-1", partner="euro"),
        AuctionRecord(opps[2], 3.0, status=200, won=False, bid_price=500.0, campaign_id="fast-c-1", partner="fast"),
        AuctionRecord(opps[3], 4.0, status=204),
    ]


def test_partner_wins_are_valued_apart_from_the_campaigns():
    card = score(Market(seed=3), _records(), [], 60.0, start=0.0)
    assert card["fleet"]["wins"] == 0 and card["fleet"]["spend_usd"] == 0.0
    assert card["targeting"]["fleet_bids"] == 0 and card["targeting"]["unknown_campaign"] == 0
    p = card["partners"]
    assert p["bids"] == 3 and p["wins"] == 2 and p["wins_by_partner"] == {"euro": 1, "fast": 1}
    assert p["charged_usd"] == 3.0 and p["bid_value_usd"] == 3.5
    both = card["with_partners"]
    assert both["wins"] == 2 and both["value_usd"] == 3.5 and both["spend_usd"] == 3.0
    assert both["surplus_usd"] == 0.5 and both["value_per_opportunity"] == round(3.5 / 4, 6)


def test_without_partner_wins_with_partners_is_the_fleet():
    recs = [r for r in _records() if not r.partner]
    card = score(Market(seed=3), recs, [], 60.0, start=0.0)
    assert card["partners"]["wins"] == 0
    assert card["with_partners"]["value_usd"] == card["fleet"]["value_usd"]


def test_sim_run_up_partners_brings_the_fleet_up_calling_them(monkeypatch, tmp_path):
    import importlib

    import click
    from click.testing import CliRunner

    import fleet.sim.run

    cli = importlib.import_module("fleet.cli.sim")
    calls = []
    monkeypatch.setattr(cli.local.State, "load", staticmethod(lambda: None))
    monkeypatch.setattr(cli.local, "STATE_DIR", tmp_path)
    monkeypatch.setattr(cli, "up", click.command()(lambda **kw: calls.append(("up", kw))))
    monkeypatch.setattr(cli, "down", click.command()(lambda: calls.append(("down", {}))))
    card = score(Market(seed=3), _records(), [], 60.0, start=0.0)
    monkeypatch.setattr(fleet.sim.run, "run_sim", lambda *a, **kw: {
        "traffic": {}, "notices": {"delivered": {}}, "scorecard": card})
    result = CliRunner().invoke(cli.sim, ["run", "--up", "--fresh", "--partners", "sim", "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["up", "down"] and calls[0][1]["partners"] == "sim"
    assert "partners (apart from the oracle)" in result.output
