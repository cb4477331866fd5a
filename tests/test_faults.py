"""The fault bench's short versions (``fleet bench faults --scenario NAME --quick``), as CI runs
them: Redis stopped and a cache shard killed under steady exchange traffic, on a fleet brought up
by the real ``fleet up`` (its own state dir and port, the bench's catalog).

What must hold whatever the machine's speed: the fault was injected (and put right), the fleet
kept answering through it with no 5xx, every bill the exchange had acknowledged is in the
ledger, and no campaign's ledger spend went above its budget at any sample. The on-time share and
value per opportunity are recorded in the result, not asserted (wall-clock figures; the full
runs and their targets are in docs/benchmarks.md). Runs last (``exclusive_ray``).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from fleet.bench.fault_report import notice_5xx
from fleet.bench.faults import CATALOG
from fleet.config import REPO_ROOT
from conftest import isolated_fleet  # noqa: E402  (tests/conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.exclusive_ray]

FLEET = str(REPO_ROOT / ".venv" / "bin" / "fleet")


def fleet(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([FLEET, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"fleet {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def faults_fleet(tmp_path_factory, exclusive_ray):
    state_dir = tmp_path_factory.mktemp("fleet-state")
    env, config, _ = isolated_fleet(state_dir)
    try:
        fleet(env, "up", "--detach", "--no-burst", "--fresh", "--catalog", CATALOG, "--config", str(config),
              timeout=420)
        yield env, state_dir
    finally:
        subprocess.run([FLEET, "down"], env=env, capture_output=True, timeout=120, cwd=REPO_ROOT)


def _run(env: dict, out, scenario: str) -> dict:
    fleet(env, "bench", "faults", "--scenario", scenario, "--quick", "--out", str(out), timeout=400)
    return json.loads((out / f"faults-{scenario}-quick.json").read_text())


def _common(doc: dict) -> None:
    assert not any("error" in e for e in doc["events"]), doc["events"]
    fault = doc["phases"]["fault"]
    answered = sum(n for s, n in fault["status"].items() if s in ("200", "204"))
    assert answered > 0.5 * fault["auctions"], fault["status"]  # the fleet kept answering through it
    assert all(p["5xx"] == 0 for p in doc["phases"].values()), doc["phases"]
    assert notice_5xx(doc) == 0, doc["money"]["notice_errors"]  # notices too
    m = doc["money"]
    seen = {"money": m, **{k: {f: p[f] for f in ("status", "bid_rate", "degraded_kinds")} for k, p in doc["phases"].items()}}
    assert m["ledger_caught_up"], seen
    assert m["acknowledged_bills"] > 0, seen
    assert m["events_lost"] == 0, m
    assert m["over_budget_samples"] == 0, m["over_budget_examples"]
    assert set(doc["targets"]) >= {"on_time_share>=0.999", "zero_5xx", "zero_events_lost", "no_campaign_over_budget"}


def test_redis_stopped_loses_no_acknowledged_event(faults_fleet, tmp_path):
    env, _ = faults_fleet
    doc = _run(env, tmp_path, "redis-stop")
    kinds = [e["event"] for e in doc["events"]]
    assert kinds == ["inject", "restore"], doc["events"]
    assert doc["events"][0]["stopped_pid"] != doc["events"][1]["started_pid"]
    _common(doc)


def test_cache_shard_killed_keeps_answering(faults_fleet, tmp_path):
    env, _ = faults_fleet
    doc = _run(env, tmp_path, "cache-shard")
    assert [e["event"] for e in doc["events"]] == ["inject"] and doc["events"][0]["killed_pid"] > 0
    _common(doc)
