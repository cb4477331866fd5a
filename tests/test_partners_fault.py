"""The partner-hang fault end to end, as CI runs it: ``fleet bench faults --scenario partner-hang
--quick`` on no fleet brings one up itself with the simulated demand partners (its own state dir
and port), hangs ``fast`` through its admin route, releases it, and takes the fleet down.

What must hold whatever the machine's speed: the fault was injected into a partner the fleet
really called and released with calls held; while it hung its calls ended late (cut at the
cutoff, never waited out) and the fleet kept answering with no 5xx; after the release it answered
in time again; every notice of a winning bid (ours or a partner's) was accepted; nothing
acknowledged was lost and no campaign went above its budget. Latency figures are recorded, not
asserted. Runs last (``exclusive_ray``)."""

from __future__ import annotations

import json
import subprocess

import pytest

from fleet.config import REPO_ROOT
from conftest import isolated_fleet  # noqa: E402  (tests/conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.exclusive_ray]

FLEET = str(REPO_ROOT / ".venv" / "bin" / "fleet")


def test_a_hung_partner_is_cut_at_its_cutoff_and_answers_again_after(tmp_path, exclusive_ray):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    env, config, _ = isolated_fleet(state_dir)
    try:
        proc = subprocess.run([FLEET, "bench", "faults", "--scenario", "partner-hang", "--quick", "--config", str(config),
                               "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    finally:  # the bench takes down what it brought up; this only covers a bench that died
        subprocess.run([FLEET, "down"], env=env, capture_output=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads((tmp_path / "faults-partner-hang-quick.json").read_text())
    assert doc["box"]["fleet_brought_up"]
    inject, restore = doc["events"]
    assert inject == {**inject, "event": "inject", "partner": "fast", "hanging": True}, doc["events"]
    assert restore["event"] == "restore" and restore["hanging"] is False and restore["held"] > 0
    p = doc["partners"]["phases"]
    assert p["baseline"]["called"] > 0 and p["baseline"]["in_time"] > 0  # a partner the fleet really called
    hang = p["hang"]
    assert hang["called"] > 0 and hang["late"] >= 0.5 * hang["called"], hang  # cut at its cutoff while held
    assert p["after"]["in_time"] > 0, p["after"]  # answering again once released
    fault = doc["phases"]["fault"]
    assert sum(n for s, n in fault["status"].items() if s in ("200", "204")) > 0.5 * fault["auctions"]
    assert all(ph["5xx"] == 0 for ph in doc["phases"].values()), doc["phases"]
    m = doc["money"]
    assert m["notice_errors"] == {}, m["notice_errors"]  # every notice accepted (a crid-less bid is dropped)
    assert m["ledger_caught_up"] and m["acknowledged_bills"] > 0 and m["events_lost"] == 0, m
    assert m["over_budget_samples"] == 0, m["over_budget_examples"]
    assert {"hung_partner_answers_again", "added_p99_ms<=hung_partner_cutoff"} <= set(doc["targets"])
