"""The partner-hang fault (``fleet bench faults --scenario partner-hang``), its parts without Ray:
a simulated partner made to hang and answer again at run time through its admin route (never
through the OpenRTB path), the bench's injector finding it through ``fleet up --partners sim``'s
record, the scenario wired to bring the fleet up with the partners, and the hung partner's
figures per phase from control's counters. The whole scenario on a real fleet is
``tests/test_faults.py``'s partner test."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fleet.bench import fault_ops, fault_report, faults
from fleet.runtime import local
from fleet.sim.partners import PartnerServers, Profile, set_hang

BID = {"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "site": {"id": "s1"}}


def test_a_simulated_partner_hangs_at_run_time_and_answers_again():
    async def go():
        servers = PartnerServers([Profile("fast", latency_ms=1, latency_sigma=0.0, bid_rate=1.0)])
        ep = (await servers.start())["fast"]
        sp = servers.partners[0]
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                assert (await http.post(ep, json=BID)).status_code == 200  # answers normally
                # The admin route is its own: an OpenRTB body saying "hang" changes nothing.
                assert (await http.post(ep, json={**BID, "hang": True})).status_code == 200
                assert not sp.hanging
                assert (await set_hang(ep, True))["hanging"] is True
                held = asyncio.create_task(http.post(ep, json=BID))
                for _ in range(200):  # until the server holds it
                    if sp.seen.by_outcome["held"]:
                        break
                    await asyncio.sleep(0.01)
                assert sp.seen.by_outcome["held"] == 1 and not held.done()
                said = await set_hang(ep, False)
                assert said == {"id": "fast", "hanging": False, "held": 1}
                assert (await held).status_code == 204  # released: no bid, never a bid after the fact
                assert (await http.post(ep, json=BID)).status_code == 200  # answering again
                stats = (await http.get(ep.replace("/openrtb2/bid", "/stats"))).json()
                assert stats["hanging"] is False and stats["outcomes"]["held"] == 1
                bad = await http.post(ep.replace("/openrtb2/bid", "/admin/hang"), json={"hang": "yes"})
                assert bad.status_code == 400 and not sp.hanging
        finally:
            await servers.stop()

    asyncio.run(go())


def test_the_bench_hangs_the_partner_the_fleet_started(tmp_path, monkeypatch):
    async def go():
        servers = PartnerServers([Profile("fast", latency_ms=1), Profile("slow", latency_ms=1)])
        eps = await servers.start()
        try:
            monkeypatch.setattr(local, "STATE_DIR", tmp_path)
            assert "error" in await fault_ops.hang_partner("fast", True)  # no partners started: said so
            (tmp_path / "partners.json").write_text(json.dumps([{"id": k, "endpoint": v} for k, v in eps.items()]))
            assert "error" in await fault_ops.hang_partner("fast", True)  # a list left by stopped partners
            (tmp_path / "partners.pid").write_text("1")
            sc = faults.SCENARIOS["partner-hang"]
            ctx = faults.Ctx("us-east", None)
            assert (await sc.inject(ctx)) == {"partner": faults.HUNG, "hanging": True, "held": 0}
            by_id = {sp.p.id: sp for sp in servers.partners}
            assert by_id[faults.HUNG].hanging and not by_id["slow"].hanging
            assert (await sc.restore(ctx))["hanging"] is False and not by_id[faults.HUNG].hanging
        finally:
            await servers.stop()

    asyncio.run(go())


def test_the_partner_hang_scenario_runs_with_the_simulated_partners():
    sc = faults.SCENARIOS["partner-hang"]
    assert faults.skip_reason(sc) is None
    assert sc.partners and sc.inject is not None and sc.restore is not None
    assert faults.HUNG == "fast"  # a partner that normally answers in time, not the one that hangs anyway
    assert not any(s.partners for n, s in faults.SCENARIOS.items() if n != "partner-hang")


def test_the_bench_brings_the_fleet_up_with_the_partners(monkeypatch, tmp_path):
    """``fleet bench faults --scenario partner-hang`` invokes ``fleet up --partners sim``."""
    from click.testing import CliRunner

    from fleet.cli import bench_fleet

    seen = {}

    def fake_up(**kw):
        seen.update(kw)
        raise SystemExit(0)  # stop before any fleet is needed

    monkeypatch.setattr(local, "STATE_DIR", tmp_path)
    monkeypatch.setattr(local.State, "load", classmethod(lambda cls: None))
    monkeypatch.setattr(bench_fleet.up, "callback", fake_up)
    monkeypatch.setattr(bench_fleet.down, "callback", lambda **kw: None)
    CliRunner().invoke(bench_fleet.bench_faults, ["--scenario", "partner-hang", "--quick"])
    assert seen.get("partners") == "sim"
    seen.clear()
    CliRunner().invoke(bench_fleet.bench_faults, ["--scenario", "redis-stop", "--quick"])
    assert seen.get("partners") == "none"


def _view(t_counts: dict[str, dict], policy: dict | None = None) -> dict:
    return {"regions": {r: {"fast": c | {"cutoff_ms": {"remnant": 20.0, "premium": 40.0}}} for r, c in t_counts.items()},
            "policy": {"fast": policy or {}}}


def test_partner_figures_per_phase_sum_regions_and_list_policy_changes():
    z = dict.fromkeys(fault_report.PARTNER_COUNTERS, 0)
    samples = [
        (10.0, _view({"a": z, "b": z})),
        (60.0, _view({"a": z | {"eligible": 100, "called": 100, "in_time": 98, "late": 2},
                      "b": z | {"eligible": 100, "called": 100, "in_time": 100}})),
        (90.0, _view({"a": z | {"eligible": 200, "called": 120, "in_time": 98, "late": 22},
                      "b": z | {"eligible": 200, "called": 110, "in_time": 100, "late": 10}},
                     {"remnant": {"cutoff_ms": 20.0, "share": 0.1, "why": "late 60%"}})),
        (120.0, _view({"a": z | {"eligible": 300, "called": 170, "in_time": 140, "late": 30},
                       "b": z | {"eligible": 300, "called": 150, "in_time": 140, "late": 10}})),
    ]
    f = fault_report.partner_figures(samples, "fast", {"baseline": (10.0, 60.0), "hang": (60.0, 90.0),
                                                       "after": (90.0, 120.0)})
    assert f["phases"]["baseline"]["called"] == 200 and f["phases"]["baseline"]["called_share"] == 1.0
    h = f["phases"]["hang"]
    assert (h["eligible"], h["called"], h["late"], h["called_share"]) == (200, 30, 30, 0.15)
    assert h["in_time_share"] == 0.0
    assert f["cutoff_ms"] == 40.0
    assert [c["policy"] for c in f["policy_changes"]] == [{}, {"remnant": "20 ms x 0.1"}, {}]
    assert f["phases"]["after"]["in_time_share"] == pytest.approx(82 / 90, abs=1e-4)
    doc = {"phases": {"baseline": {"latency_ms": {"p99": 50.0}, "5xx": 0, "on_time_share": 1.0,
                                   "value_per_opportunity": 1.0, "shed": 0},
                      "fault": {"latency_ms": {"p99": 95.0}, "5xx": 0, "on_time_share": 1.0,
                                "value_per_opportunity": 1.0, "shed": 0}},
           "money": {"events_lost": 0, "over_budget_samples": 0}, "partners": f}
    t = fault_report.targets(doc)
    assert t["hung_partner_answers_again"] == {"value": round((82 / 90) / 0.99, 4), "met": True}
    assert t["added_p99_ms<=hung_partner_cutoff"] == {"value": 45.0, "met": False}


@pytest.mark.parametrize("body", [b"{}", b"[]", b"not json", b'{"hang": 1}'])
def test_the_admin_route_refuses_what_is_not_a_boolean(body):
    async def go():
        servers = PartnerServers([Profile("fast")])
        ep = (await servers.start())["fast"]
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                r = await http.post(ep.replace("/openrtb2/bid", "/admin/hang"), content=body)
                assert r.status_code == 400 and not servers.partners[0].hanging
        finally:
            await servers.stop()

    asyncio.run(go())


def test_partner_figures_count_a_phase_by_when_its_calls_reach_controls_view():
    """The CI run that showed the need: 59 in-time calls a second before the hang, and the first
    ~3 s of the hang window held only calls made before it (reported late): 162 of its 284 calls
    read as in time. A phase's calls are what control shows ``lag_s`` after its bounds."""
    z = dict.fromkeys(fault_report.PARTNER_COUNTERS, 0)
    samples = [(0.0, _view({"a": z})),
               (28.0, _view({"a": z | {"called": 1000, "in_time": 1000}})),
               (31.0, _view({"a": z | {"called": 1160, "in_time": 1160}})),  # made before 28, reported after
               (40.0, _view({"a": z | {"called": 1280, "in_time": 1160, "late": 120}})),
               (44.0, _view({"a": z | {"called": 1300, "in_time": 1165, "late": 135}}))]
    naive = fault_report.partner_figures(samples, "fast", {"hang": (28.0, 40.0)}, lag_s=0.0)["phases"]["hang"]
    assert naive["in_time"] == 160  # what the first version read
    h = fault_report.partner_figures(samples, "fast", {"hang": (28.0, 40.0)})["phases"]["hang"]
    assert h["late"] >= 0.5 * h["called"] and h["in_time"] == 5, h
