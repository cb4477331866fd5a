"""``fleet bench capacity --partners``: the simulated partners' CPU is counted apart from the
fleet's, and the region calling them is judged against its own p99 limit (issue 21)."""

from __future__ import annotations

from fleet.bench import capacity
from fleet.bench.cpu import role_of


def test_the_partner_process_is_its_own_role_and_its_cpu_is_kept_apart():
    role = role_of(["/work/main/.venv/bin/python", "-m", "fleet.sim.partners", "--set", "fast4"], "python")
    assert role == capacity.PARTNERS_ROLE
    phases = {"half_load": {"ServeReplica:app-r:Region": 2000.0, "haproxy": 200.0, role: 800.0, "wrk": 90.0}}
    out = capacity.cpu_summary({"r": {"cpu_us_per_request": phases}}, {"r": "app-r"})
    assert out["r"]["half_load"] == {"ingress_us": 2000.0, "total_us": 2200.0, "partners_us": 800.0}


def test_a_target_with_its_own_slo_is_judged_by_it(tmp_path, monkeypatch):
    seen = {}

    def wrk_step(wrk, url, bodies, rate, seconds, connections, base, sp, slo_ms):
        seen.setdefault(url, set()).add(slo_ms)
        return capacity.Step(rate, rate, 1.0, 30.0, 0, 0, rate <= 400 and 30.0 <= slo_ms)

    monkeypatch.setattr(capacity, "wrk_step", wrk_step)
    monkeypatch.setattr(capacity, "_stage_counts", lambda *a: {})
    monkeypatch.setattr(capacity, "_cache_counts", lambda *a: {})
    monkeypatch.setattr(capacity, "_partner_counts", lambda *a: {})
    monkeypatch.setattr(capacity.cpu, "snapshot", lambda: {})
    res = capacity._one_round("wrk", tmp_path / "b", "http://x", {"noop": ("/n", None), "r": ("/r", "/r")},
                              15.0, 1.0, 1, 100.0, lambda *_: None, {"r": 57.0})
    assert seen == {"http://x/n/openrtb2/bid": {15.0}, "http://x/r/openrtb2/bid": {57.0}}
    assert res["noop"]["capacity_rps"] == 0.0 and res["r"]["capacity_rps"] > 0
