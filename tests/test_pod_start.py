"""A Kubernetes pod's Ray node starts as `fleet up` starts a local one (fleet/runtime/pod.py).

The RayService module's container command is run here as a pod runs it (bash, the repo as the
working directory, ``python`` on PATH), with KubeRay's generated ``ray start`` replaced by a
command that records the environment it was handed: the settings are there, an operator's own
value wins, and the HAProxy wrapper it points Serve at is the fleet's, with every region's
deadline (HAProxy itself checks the rewritten config).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import REPO_ROOT, load_regions
from fleet.runtime.ingress import MARK, real_haproxy
from fleet.runtime.local import SERVE_ENV

MAIN_TF = REPO_ROOT / "infra" / "terraform" / "modules" / "rayservice" / "main.tf"


def _hcl_string(name: str) -> str:
    m = re.search(rf'^\s*{name}\s*=\s*\[?"((?:[^"\\]|\\.)*)"\]?', MAIN_TF.read_text(), re.M)
    assert m, f"{name} not found in the RayService module"
    return m.group(1).replace('\\"', '"').replace("\\\\", "\\")


def _container_args(run_dir: str | None = None) -> str:
    """The container's args as Terraform renders them (its two interpolations, done here)."""
    args = _hcl_string("start_args").replace("${local.run_dir}", run_dir or _hcl_string("run_dir"))
    assert "${" not in args.replace("$${", ""), "an interpolation this test does not render"
    return args.replace("$${", "${")


def _run_pod_start(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python"  # the image's python (a script: a symlink would leave the venv behind)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    dump = tmp_path / "env.out"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "FLEET_INGRESS", "FLEET_BID_FRONT"))}  # a pod's clean environment
    env.update(PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}", TMPDIR=str(tmp_path),
               KUBERAY_GEN_RAY_START_CMD=f"env -0 > {dump}", **extra)
    r = subprocess.run(["/bin/bash", "-c", "--", _container_args(str(tmp_path / "run"))], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    if not dump.exists():
        return {"rc": str(r.returncode), "stderr": r.stderr}
    return dict(line.split("=", 1) for line in dump.read_text().split("\0") if "=" in line)


def test_the_pods_ray_start_gets_the_fleets_settings_and_haproxy_wrapper(tmp_path):
    if real_haproxy() is None:
        pytest.skip("no bundled HAProxy")
    got = _run_pod_start(tmp_path, {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2"})  # the operator's
    assert "rc" not in got, got
    for k, v in SERVE_ENV.items():
        assert got.get(k) == ("0.2" if k == "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" else v), k
    wrapper = Path(got["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert got["FLEET_BID_FRONT_DIR"] == str(tmp_path / "run" / "fronts")  # the replicas' bid fronts
    assert MARK in wrapper.read_text() and os.access(wrapper, os.X_OK)
    # Serve's config through the wrapper: rewritten with the limits and each region's deadline,
    # and valid to HAProxy itself
    from test_ingress_shedding import SERVE_LIKE

    cfg = tmp_path / "serve.cfg"
    cfg.write_text(SERVE_LIKE.format(port=18126))
    check = subprocess.run([str(wrapper), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    us_east = load_regions().regions["us-east"]
    new = cfg.read_text()
    assert f"set-timeout server var(txn.fleet_tmax),sub({us_east.network_allowance_ms})" in new
    assert "queue() ge" in new and "x-fleet-arrival" in new


def test_a_node_that_cannot_have_the_fleets_environment_does_not_start(tmp_path):
    """Found in review: ``eval "$(...)" && ...`` started the node whatever the module printed or
    failed on (eval of nothing succeeds), so a bad setting brought up a stock node, serving
    without the limits, shedding or deadlines. Now the container exits before ``ray start``."""
    if real_haproxy() is None:
        pytest.skip("no bundled HAProxy")
    got = _run_pod_start(tmp_path, {"FLEET_INGRESS_MAXCONN": "sixteen"})
    assert got.get("rc") not in (None, "0") and "ValueError" in got["stderr"]


def test_the_pod_start_needs_no_kuberay_feature_beyond_its_annotation():
    """The module hands KubeRay's own command over unchanged, after the fleet's environment,
    on every node (head and workers) and only with the annotation that makes KubeRay keep it."""
    src = MAIN_TF.read_text()
    assert '"ray.io/overwrite-container-cmd" = "true"' in src
    assert src.count("command    = local.start_command") == 2 and src.count("args       = local.start_args") == 2
    args = _container_args()
    assert args.endswith('exec /bin/bash -c "$KUBERAY_GEN_RAY_START_CMD"') and "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}" in args
    assert src.count("concat(local.mounts, [local.run_mount])") == 2  # the wrapper's own writable place


@pytest.mark.parametrize("files,want", [
    ({"cpu.max": "800000 100000\n"}, 8),                      # cgroup v2, a limit of 8
    ({"cpu.max": "150000 100000\n"}, 1),                      # 1.5 cores: HAProxy's threads count whole ones
    ({"cpu.max": "100000 0\n"}, None),                        # nonsense: the CPUs we may run on
    ({"cpu.max": "max 100000\n"}, None),                      # no limit
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # cgroup v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_usable_cpus_reads_a_containers_limit(tmp_path, files, want):
    from fleet.runtime.local import usable_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == (want or len(os.sched_getaffinity(0)))
