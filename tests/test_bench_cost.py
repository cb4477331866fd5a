"""``fleet bench cost``'s accounting: which process counts as what, and what is left out.

No Ray here: the labeller is given the actor pids a run would ask Ray for."""

from __future__ import annotations

from fleet.bench.cost import medians, stage_means_us
from fleet.bench.cost_plot import plot
from fleet.bench.cost_roles import Labeller, by_group, fleet_total
from fleet.obs import histogram

PIDS = {11: ("shard shard-us-east-0", "us-east"), 12: ("ledger us-east", "us-east"),
        21: ("shard shard-eu-west-0", "eu-west")}
RAY = "/x/.venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py"


def labeller(app="us-east", region="us-east"):
    return Labeller(app, region, PIDS, redis_pid=7)


def test_every_process_of_the_fleet_is_named_and_other_work_is_left_out():
    lab = labeller()
    cases = {
        (11, ("ray::CacheShard",)): ("shard shard-us-east-0", "cache shards"),
        (21, ("ray::CacheShard",)): ("shard shard-eu-west-0", "idle apps (other regions, no-op)"),
        (12, ("ray::LedgerRunner",)): ("ledger us-east", "ledger consumer"),
        (7, ("/usr/bin/redis-server 127.0.0.1:6390",)): ("redis", "redis"),
        # another session's Redis on the same box is not the fleet's
        (8, ("/usr/bin/redis-server 127.0.0.1:7000",)): ("outside", "outside"),
        (30, ("ray::ServeReplica:us-east:ingress-us-east",)): ("replica us-east", "ingress"),
        (31, ("ray::ServeReplica:eu-west:ingress-eu-west",)): ("replica eu-west", "idle apps (other regions, no-op)"),
        (32, ("ray::ServeReplica:control:ControlApi",)): ("replica control", "control"),
        (33, ("ray::ControlActor",)): ("control actor", "control"),
        (34, ("/x/haproxy", "-f", "cfg")): ("haproxy", "haproxy"),
        (35, ("wrk", "-t1")): ("wrk", "load generator"),
        (36, ("/x/python", RAY)): ("ray python:default_worker.py", "ray (raylet, GCS, dashboard, Serve controller)"),
        (37, ("/x/python", "-m", "pytest", "tests/test_x.py")): ("outside", "outside"),
        (38, ()): ("kernel", "kernel"),
    }
    for (pid, cmd), (label, group) in cases.items():
        got = lab.label(pid, list(cmd), cmd[0] if cmd else "kworker")
        assert got == label, (pid, cmd, got)
        assert lab.group(got) == group, (label, lab.group(got))


def test_for_the_noop_target_every_region_is_background():
    lab = Labeller("bench-noop", None, PIDS, redis_pid=7)
    assert lab.group("replica bench-noop") == "ingress"
    assert lab.group("replica us-east") == "idle apps (other regions, no-op)"
    assert lab.group("shard shard-us-east-0") == "idle apps (other regions, no-op)"


def test_cpu_per_request_counts_the_step_only_and_totals_leave_out_the_generator_and_strangers():
    lab = labeller()
    before = {30: ("replica us-east", 1.0), 7: ("redis", 0.5), 35: ("wrk", 0.0), 37: ("outside", 3.0)}
    after = {30: ("replica us-east", 1.5), 7: ("redis", 0.6), 35: ("wrk", 0.2), 37: ("outside", 9.0),
             11: ("shard shard-us-east-0", 0.05)}  # born during the step: counted from zero
    rows = lab.per_request(before, after, 1000)
    assert rows["replica us-east"] == {"us": 500.0, "group": "ingress"}
    assert rows["shard shard-us-east-0"]["us"] == 50.0
    assert fleet_total(rows) == 650.0  # ingress + redis + shard; not wrk, not the stranger
    assert by_group(rows)["load generator"] == 200.0


def test_stage_means_are_read_from_the_histograms_within_a_bucket():
    h = histogram.StageHistograms()
    for _ in range(100):
        h.observe_all({"targeting": 40e-6, "respond": 100e-6, "total": 300e-6})
    means = stage_means_us(h.snapshot())
    assert abs(means["targeting"] - 40) / 40 < 0.13
    assert abs(means["respond"] - 100) / 100 < 0.13
    assert abs(means["other"] - (means["total"] - means["targeting"] - means["respond"])) < 0.2


def _step(rps, fleet):
    return {"rps": rps, "p99_ms": 3.0, "fleet_us": fleet, "groups_us": {"ingress": fleet},
            "cpu_us": {"replica us-east": {"us": fleet, "group": "ingress"}}, "stages_us": {}}


def test_medians_keep_the_spread_and_the_plot_draws(tmp_path):
    rounds = [{"saturation": _step(1000, 800), "half": _step(500, 900)},
              {"saturation": _step(1100, 700), "half": _step(550, 950)},
              {"saturation": _step(900, 760), "half": _step(450, 990)}]
    m = medians(rounds)
    assert m["saturation"]["fleet_us"] == 760 and m["saturation"]["fleet_us_range"] == [700, 800]
    assert m["half"]["cpu_us"] == {"replica us-east": 950}
    doc = {"results": {"region": {"medians": {"noop": m, "us-east": m}}}}
    plot([("before", doc), ("after", doc)], tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000
