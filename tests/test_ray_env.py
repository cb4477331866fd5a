"""The Ray environment the fleet starts Ray with: the background settings are there, and an
operator's own value in the environment wins (docs/ingress.md; docs/benchmarks.md, "Idle
background"). No Ray here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fleet.config import REPO_ROOT
from fleet.runtime.local import SERVE_ENV, ray_env

BACKGROUND = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}


def _serve_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BACKGROUND}
    out = subprocess.run([sys.executable, "-c", "import json; from fleet.runtime.local import SERVE_ENV; "
                          "print(json.dumps(SERVE_ENV))"], env={**env, **extra}, cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_ray_starts_with_the_background_settings():
    env = ray_env()
    for key in BACKGROUND:
        assert env[key] == SERVE_ENV[key]
    fresh = _serve_env({})
    assert {k: fresh[k] for k in BACKGROUND} == BACKGROUND
    # Ray reads these as numbers: each must parse as one
    assert float(fresh["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]) > 0
    assert int(fresh["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"]) >= 0
    # the ingress settings are still there beside them
    assert fresh["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and fresh["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"


def test_an_operators_own_value_wins():
    got = _serve_env({"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "1000"})
    assert got["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"
    assert got["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] == "1000"
