"""``fleet.bench.idle``'s accounting: cores by process with no traffic, what counts and what not.

No Ray here: the labeller is given the actor pids a run would ask Ray for."""

from __future__ import annotations

from fleet.bench.cost_roles import Labeller, cpu_seconds
from fleet.bench.idle import cores, recorded_env, report_lines, summarise, total

PIDS = {11: ("shard shard-us-east-0", "us-east"), 12: ("ledger us-east", "us-east"),
        21: ("shard shard-eu-west-0", "eu-west")}


def labeller():
    return Labeller("us-east", "us-east", PIDS, redis_pid=7)


def test_cpu_seconds_counts_the_window_only():
    before = {1: ("replica us-east", 2.0), 2: ("ray ServeController", 5.0), 3: ("outside", 1.0)}
    after = {1: ("replica us-east", 2.5), 2: ("ray ServeController", 5.25), 3: ("outside", 1.0),
             4: ("ray python:default_worker.py", 0.1),  # born in the window: from zero
             5: ("haproxy", 0.0)}
    got = cpu_seconds(before, after)
    assert got == {"replica us-east": 0.5, "ray ServeController": 0.25, "ray python:default_worker.py": 0.1}
    # a pid reused under another label (a worker that took a new title) counts as new
    assert cpu_seconds({9: ("ray IDLE", 3.0)}, {9: ("ray HAProxyManager", 0.5)}) == {"ray HAProxyManager": 0.5}


def test_cores_are_cpu_seconds_over_the_window_and_the_total_leaves_out_strangers_and_wrk():
    lab = labeller()
    before = {30: ("replica us-east", 1.0), 7: ("redis", 0.5), 37: ("outside", 3.0), 35: ("wrk", 0.0),
              40: ("ray ServeController", 10.0), 38: ("kernel", 0.0)}
    after = {30: ("replica us-east", 1.2), 7: ("redis", 0.52), 37: ("outside", 13.0), 35: ("wrk", 0.1),
             40: ("ray ServeController", 12.0), 38: ("kernel", 1.0), 11: ("shard shard-us-east-0", 0.005)}
    rows = cores(before, after, 20.0, lab)
    assert rows["ray ServeController"] == {"cores": 0.1, "group": "ray (raylet, GCS, dashboard, Serve controller)"}
    assert rows["replica us-east"] == {"cores": 0.01, "group": "ingress"}
    assert rows["redis"]["cores"] == 0.001
    assert "shard shard-us-east-0" not in rows  # 0.00025 cores: under the floor
    assert list(rows)[0] == "outside"  # largest first, strangers shown ...
    assert total(rows) == 0.111  # ... but not counted, nor the load generator or the kernel
    assert cores(before, after, 0.0, lab) == {}


def test_summary_is_the_median_window_per_process_and_the_range_of_totals():
    g = "ray (raylet, GCS, dashboard, Serve controller)"
    w1 = {"ray ServeController": {"cores": 0.1, "group": g}, "replica us-east": {"cores": 0.02, "group": "ingress"}}
    w2 = {"ray ServeController": {"cores": 0.3, "group": g}}  # the replica under the floor this time
    w3 = {"ray ServeController": {"cores": 0.2, "group": g}, "replica us-east": {"cores": 0.04, "group": "ingress"},
          "outside": {"cores": 1.5, "group": "outside"}}
    s = summarise([w1, w2, w3])
    assert s["cores"]["ray ServeController"] == 0.2
    assert s["cores"]["outside"] == 0.0  # seen in one window of three: the median is none
    assert s["cores"]["replica us-east"] == 0.02  # median of 0.02, 0, 0.04
    assert s["groups"][g] == 0.2 and s["groups"]["ingress"] == 0.02
    assert s["total_cores"] == 0.24 and s["total_range"] == [0.12, 0.3]
    lines = report_lines({"scope": "fleet", "summary": s})
    assert lines[0].startswith("== idle fleet: fleet 0.240 cores (windows 0.120-0.300)")


def test_a_result_records_the_ray_settings_and_never_a_secret():
    env = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_AUTH_TOKEN_PATH": "/x/.fleet/ray_auth_token",
           "FLEET_NOTICE_KEYS": "k0:abcdef", "FLEET_CONTROL_TOKEN": "t", "RAY_SOME_API_KEY": "s", "HOME": "/root"}
    assert recorded_env(env) == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}
