"""The exchange simulator against the live fleet, over HTTP."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest

from fleet.config import REPO_ROOT
from fleet.sim.catalog import read_catalog
from fleet.sim.exchange import Exchanges, SimConfig
from fleet.sim.notices import substitute
from fleet.sim.market import Market
from fleet.sim.scorecard import score


def test_substitute_fills_every_macro():
    url = ("http://x/us-east/notice/loss?bid=1&auc=${AUCTION_ID}&imp=${AUCTION_IMP_ID}"
           "&lr=${AUCTION_LOSS}&px=${AUCTION_MIN_TO_WIN}&cur=${AUCTION_CURRENCY}")
    out = substitute(url, auction_id="a", imp_id="1", loss=102, min_to_win=2.5)
    assert "${" not in out and "lr=102" in out and "px=2.5000" in out


def test_traffic_shape_is_diurnal_with_bursts(regions):
    cfg = SimConfig(duration_s=600, rate=50, burst_every_s=60)
    ex = Exchanges(Market(seed=1), regions, [], cfg)
    times = ex.arrivals()
    assert times == sorted(times) and times == Exchanges(Market(seed=1), regions, [], cfg).arrivals()
    first, middle = sum(t < 60 for t in times), sum(270 <= t < 330 for t in times)
    assert middle > 2 * first  # the compressed day peaks mid-run
    assert abs(len(times) / 600 - ex.cfg.rate * 1.0) < 0.35 * ex.cfg.rate  # mean rate, bursts included


def _notice_counts(base: str, regions) -> dict:
    total: dict = {}
    for spec in regions.regions.values():
        for k, v in httpx.get(f"{base}{spec.route_prefix}/stats").json()["notices"].items():
            total[k] = total.get(k, 0) + v
    return total


@pytest.mark.slow
def test_simulated_exchange_against_the_fleet(fleet_http, regions):
    cfg = SimConfig(base_url=fleet_http, duration_s=10, rate=30, seed=5, drop_rate=0.2, dup_rate=0.3,
                    late_rate=0.2, late_min_s=0.5, late_max_s=1.5, grace_s=5)
    catalog = read_catalog(regions.defaults.catalog, root=REPO_ROOT)
    market = Market(seed=cfg.seed)
    before = _notice_counts(fleet_http, regions)
    ex = Exchanges(market, regions, catalog, cfg, progress=lambda *_: None)
    started = time.time()
    records = asyncio.run(ex.run())
    after = _notice_counts(fleet_http, regions)

    assert len(records) > 150
    # answered, or given up at the auction's own tmax (+50 ms) by the exchange: never a failure
    assert all(r.status in (200, 204) or r.timed_out for r in records)
    far = [r for r in records if r.source_region != r.opp.region]
    assert far and all(r.network_ms == regions.latency_ms[r.source_region][r.opp.region] for r in far)
    assert all(r.late == (r.latency_ms > r.opp.tmax) for r in records)
    # Every notice the exchange delivered arrived with its macros substituted: counted, not refused.
    for kind in ("win", "bill", "loss"):
        assert after.get(kind, 0) - before.get(kind, 0) == ex.notices[kind] > 0
        assert after.get(f"{kind}.refused", 0) == before.get(f"{kind}.refused", 0)
    assert not ex.notice_errors
    # Drops and duplicates at the configured rates (4 sigma binomial bounds).
    o = ex.notice_outcomes
    planned = sum(v for k, v in o.items() if k.endswith(".planned"))
    dropped = sum(v for k, v in o.items() if k.endswith(".dropped"))
    dup = sum(v for k, v in o.items() if k.endswith(".duplicated"))
    late = sum(v for k, v in o.items() if k.endswith(".late"))
    sent = planned - dropped

    def near(count, n, p):
        return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1

    assert near(dropped, planned, 0.2) and near(dup, sent, 0.3) and near(late, sent, 0.2)
    assert sum(ex.notices.values()) == sent + dup  # every copy of every sent notice landed

    card = score(market, records, catalog, cfg.duration_s, start=started, seat=regions.defaults.seat)
    assert card["fleet"]["wins"] == sum(r.won for r in records) > 0
    assert card["oracle"]["value_per_dollar"] > 0
    # The live fleet bids only where the oracle's own reading of the rules admits the campaign.
    assert card["targeting"]["fleet_bids"] > 0 and card["targeting"]["outside_targeting"] == 0
    assert sum(b["opportunities"] for b in card["by_latency"].values()) == len(records)


# -- `fleet sim run`'s handling of the fleet it runs against -----------------------------------


def _cli(monkeypatch, tmp_path, running: bool):
    """``fleet sim run`` with ``up``, ``down`` and the run itself replaced by recorders."""
    import importlib

    import click

    import fleet.sim.run

    cli = importlib.import_module("fleet.cli.sim")  # the module (the package exports its group by that name)

    calls = []
    state = type("State", (), {"http": "http://127.0.0.1:1"})() if running else None
    monkeypatch.setattr(cli.local.State, "load", staticmethod(lambda: state))
    monkeypatch.setattr(cli.local, "STATE_DIR", tmp_path)
    monkeypatch.setattr(cli, "up", click.command()(lambda **kw: calls.append(("up", kw))))
    monkeypatch.setattr(cli, "down", click.command()(lambda: calls.append(("down", {}))))
    card = score(Market(seed=1), [], [], 1.0, start=0.0)
    monkeypatch.setattr(fleet.sim.run, "run_sim", lambda *a, **kw: {
        "traffic": {}, "notices": {"delivered": {}}, "scorecard": card})
    return cli, calls


def test_sim_run_up_leaves_a_running_fleet_up(monkeypatch, tmp_path):
    from click.testing import CliRunner

    cli, calls = _cli(monkeypatch, tmp_path, running=True)
    result = CliRunner().invoke(cli.sim, ["run", "--up", "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert calls == []  # neither brought up nor taken down: it was not this command's


def test_sim_run_up_rule_deploys_every_region_without_a_model(monkeypatch, tmp_path):
    import yaml
    from click.testing import CliRunner

    from fleet.cli.common import is_region, serve_config

    cli, calls = _cli(monkeypatch, tmp_path, running=False)
    result = CliRunner().invoke(cli.sim, ["run", "--up", "--fresh", "--rule", "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["up", "down"] and calls[0][1]["fresh"] is True
    deployed = yaml.safe_load(open(calls[0][1]["config_path"]))
    committed = serve_config("serve_config.yaml")
    regions = [a for a in deployed["applications"] if is_region(a)]
    assert regions and all(a["args"]["model"] is None for a in regions)
    assert all(d["user_config"]["model"] is None for a in regions for d in a["deployments"])
    # nothing else changed
    strip = [{**a, "args": {k: v for k, v in a["args"].items() if k != "model"}, "deployments": None}
             for a in committed["applications"]]
    assert [{**a, "args": {k: v for k, v in a["args"].items() if k != "model"}, "deployments": None}
            for a in deployed["applications"]] == strip
