"""The CLI's state record, the burst against every region, and the benchmark's search logic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fleet.bench.capacity import Step, find_capacity, write_bodies
from fleet.cli import main
from fleet.openrtb.codec import decode_request
from fleet.runtime import local


def test_state_roundtrip_and_down_without_state(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "STATE_DIR", tmp_path)
    monkeypatch.setattr(local, "STATE_FILE", tmp_path / "state.json")
    assert local.State.load() is None
    result = CliRunner().invoke(main, ["down"])
    assert result.exit_code == 0 and "nothing to stop" in result.output
    s = local.State(redis_url="redis://127.0.0.1:1/0", redis_pid=0, apps=["us-east"])
    s.save()
    assert local.State.load() == s
    local.State.clear()
    assert local.State.load() is None


def test_redis_is_started_and_stopped(tmp_path):
    url, pid, proc = local.start_redis(tmp_path / "redis")
    import redis

    r = redis.Redis.from_url(url)
    assert r.ping()
    local.stop_pid(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_find_capacity_steps_up_then_bisects():
    true_capacity = 1000.0

    def step(rate):
        ok = rate <= true_capacity
        return Step(rate, rate if ok else true_capacity, 1.0, 2.0 if ok else 50.0, 0, 0, ok)

    cap, steps = find_capacity(step, 200, factor=2.0, refine=4, log=lambda *_: None)
    assert 900 <= cap <= 1000
    assert [s.offered for s in steps[:5]] == [200, 400, 800, 1600, 1600]  # a failure is retried
    assert not steps[3].passed and not steps[4].passed


def test_find_capacity_survives_one_noisy_step():
    calls = []

    def step(rate):
        calls.append(rate)
        noisy = rate == 400 and calls.count(400) == 1  # one stall, the retry is clean
        ok = rate <= 1000 and not noisy
        return Step(rate, rate, 1.0, 30.0 if not ok else 2.0, 0, 0, ok)

    cap, _ = find_capacity(step, 200, factor=2.0, refine=2, log=lambda *_: None)
    assert cap >= 800


def test_capacity_rounds_alternate_the_comparison_order_and_report_medians(tmp_path, monkeypatch):
    from fleet.bench import capacity

    orders, caps = [], iter([(1000, 500, 450), (900, 400, 420), (1100, 600, 480)])
    monkeypatch.setattr(capacity, "ensure_wrk", lambda: "wrk")
    monkeypatch.setattr(capacity, "write_bodies", lambda region, n: tmp_path / "bodies")

    def one_round(wrk, bodies, base, targets, *a):
        orders.append(list(targets))
        figures = dict(zip(("noop", "without", "with"), next(caps)))
        # CPU per request by role: the app's replica and, with the cache, a shard
        return {k: {"capacity_rps": float(figures[k]), "saturation_rps": 2.0 * figures[k], "half_load_stages": {},
                    "cpu_us_per_request": {"saturation": {f"ServeReplica:app-{k}:Region": 1e6 / figures[k],
                                                          **({"CacheShard": 50.0} if k == "with" else {})}}}
                for k in targets}

    monkeypatch.setattr(capacity, "_one_round", one_round)
    targets = {"noop": ("/n", None), "without": ("/w", "/w"), "with": ("/c", "/c")}
    doc = capacity.run_capacity("http://x", targets, "us-east", slo_ms=15, step_s=1, connections=1, start_rate=1,
                                out=tmp_path / "out.json", log=lambda *_: None, rounds=3,
                                apps={k: f"app-{k}" for k in targets})
    assert orders == [["noop", "without", "with"], ["noop", "with", "without"], ["noop", "without", "with"]]
    assert doc["results"]["with"]["capacity_rps"] == 450 and doc["results"]["without"]["capacity_rps"] == 500
    assert len(doc["results"]["with"]["rounds"]) == 3
    assert [r["with"] for r in doc["ratios_per_round"]] == [0.45, round(420 / 900, 3), round(480 / 1100, 3)]
    # CPU per request: the median over rounds per role; the ingress is the app's own replicas
    with_cpu = doc["cpu_per_request"]["with"]["saturation"]
    assert with_cpu["ingress_us"] == round(1e6 / 450, 1) and with_cpu["total_us"] == round(1e6 / 450 + 50.0, 1)
    assert doc["cpu_per_request"]["without"]["saturation"] == {"ingress_us": 2000.0, "total_us": 2000.0}
    assert json.loads((tmp_path / "out.json").read_text())["cpu_per_request"] == doc["cpu_per_request"]


def test_cpu_roles_from_ray_titles_and_executables():
    from fleet.bench.cpu import role_of

    assert role_of(["ray::CacheShard.lookup"], "python") == "CacheShard"
    assert role_of(["ray::ServeReplica:bench-us-east:Region"], "python") == "ServeReplica:bench-us-east:Region"
    assert role_of(["/usr/bin/redis-server", "127.0.0.1:6390"], "redis-server") == "redis-server"
    assert role_of(["/usr/bin/redis-server 127.0.0.1:6390"], "redis-server") == "redis-server"
    assert role_of(["/x/bin/python3", "-u", "/x/ray/dashboard/agent.py", "--x"], "python3") == "python:agent.py"
    assert role_of(["/opt/ray/core/src/ray/raylet/raylet", "--x"], "raylet") == "raylet"
    assert role_of([], "kworker/0:0-events") == "kernel"


def test_cpu_per_request_counts_what_a_process_burned_between_snapshots(tmp_path):
    """A child that burns ~0.3 s of CPU between two snapshots shows under its role, per request."""
    from fleet.bench import cpu

    script = tmp_path / "burn.py"
    script.write_text("import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n"
                      "    pass\nprint('done', flush=True)\nsys.stdin.read()\n")
    before = cpu.snapshot()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "done"
        by_role = cpu.per_request(before, cpu.snapshot(), requests=100)
    finally:
        proc.kill()
        proc.wait(10)
    assert 2_900 <= by_role["python:burn.py"] <= 5_000  # 0.3 s over 100 requests, plus start-up
    assert cpu.total({"wrk": 5.0, "kernel": 7.0, **by_role}) == cpu.total(by_role)
    assert cpu.per_request(before, before, requests=0) == {}


def test_bench_bodies_are_valid_requests_once_an_id_is_set():
    path = write_bodies("eu-west", 50)
    try:
        lines = path.read_text().splitlines()
        assert len(lines) == 50
        for line in lines:
            assert line.count("__ID__") == 1
            req = decode_request(line.replace("__ID__", "abc").encode(), None, 1 << 20)
            assert req.id == "abc"
    finally:
        path.unlink()


@pytest.mark.slow
def test_burst_reaches_every_region(fleet_http, regions):
    from fleet.sim.burst import format_table, run_burst

    prefixes = {n: r.route_prefix for n, r in regions.regions.items()}
    tallies = asyncio.run(run_burst(fleet_http, prefixes, n=60, rate=60, seed=42))
    table = format_table(tallies)
    for t in tallies:
        assert t.answered == t.sent == 60, table
        assert t.statuses[200] > 0, table  # the fleet does bid on plausible traffic
    assert all(name in table for name in prefixes)


def test_nodes_plan_deals_regions_round_robin_from_the_head():
    from fleet.runtime import nodes

    layout = nodes.plan(["us-east", "eu-west", "ap-southeast"], 2)
    assert [(n.name, n.regions) for n in layout] == [("head", ["us-east", "ap-southeast"]), ("worker-1", ["eu-west"])]
    assert [n.regions for n in nodes.plan(["a", "b"], 3)] == [["a"], ["b"], []]
    assert nodes.from_state(nodes.to_state(layout)) == layout
    with pytest.raises(ValueError):
        nodes.plan(["a"], 0)
    with pytest.raises(ValueError):
        nodes.kill(layout[0])  # the head carries the GCS and control


def test_generated_config_pins_regions_and_control_on_several_nodes():
    import yaml

    from fleet.cli.up import generated_config
    from fleet.config import RegionAppArgs, resolve

    cfg = yaml.safe_load(resolve("serve_config.yaml").read_text())
    one = generated_config(cfg, "synth:pacing:5:1", 1)
    assert "proxy_location" not in one or one["proxy_location"] == cfg["proxy_location"]
    assert all(a["args"]["catalog"] == "synth:pacing:5:1" for a in one["applications"])
    assert not any(a["args"].get("region_resource") for a in one["applications"])
    many = generated_config(cfg, None, 2)
    assert many["proxy_location"] == "HeadOnly"
    for app in many["applications"]:
        if app["import_path"].startswith("fleet.serve.region_app"):
            assert RegionAppArgs.model_validate(app["args"]).region_resource
        else:
            assert app["args"]["head"] is True
    assert "catalog" not in many["applications"][1]["args"]
    assert cfg == yaml.safe_load(resolve("serve_config.yaml").read_text())  # the original untouched


def test_cache_delta_reports_the_near_cache_share_of_a_steps_lookups():
    from fleet.bench.capacity import cache_delta

    before = {"hit": 10, "near_hit": 4, "miss": 5, "timeout": 1, "error": 0, "near_refresh": 2}
    after = {"hit": 100, "near_hit": 84, "miss": 5, "timeout": 11, "error": 0, "near_refresh": 40}
    d = cache_delta(after, before)
    assert d["lookups"] == 100 and d["near_hit_rate"] == 0.8 and d["default_rate"] == 0.1
    assert d["near_refresh"] == 38
    assert cache_delta({}, {}) == {}
