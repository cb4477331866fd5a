#!/usr/bin/env python3
"""Set-up and entry point that needs nothing but Python 3.11: the README's two commands.

    python3 fleet/bootstrap.py up      # set up, then `fleet up` (runs the fleet, sends a burst)
    python3 fleet/bootstrap.py test    # set up, then the test suite

Set-up is idempotent and quick when nothing changed: apt packages only when missing
(``redis-server`` unless REDIS_URL points elsewhere; ``python3-venv`` when venv cannot bootstrap
pip), a virtual environment in ``.venv``, dependencies synced from ``requirements.lock`` with uv,
and the project installed editable. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".lock-sha256"
UV_VERSION = "0.13.9"


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def apt_install(*packages: str) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get install {' '.join(packages)}")
    run(sudo + ["apt-get", "update", "-qq"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)


def ensure_system(need_redis: bool, extra: tuple[str, ...] = ()) -> None:
    missing = []
    if need_redis and not os.environ.get("REDIS_URL") and shutil.which("redis-server") is None:
        missing.append("redis-server")
    for tool in extra:
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing:
        apt_install(*missing)


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        log("creating .venv")
        try:
            run([sys.executable, "-m", "venv", str(VENV)])
        except subprocess.CalledProcessError:
            shutil.rmtree(VENV, ignore_errors=True)
            v = f"{sys.version_info.major}.{sys.version_info.minor}"
            apt_install(f"python{v}-venv")
            run([sys.executable, "-m", "venv", str(VENV)])
    digest = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return py
    # uv lives beside the venv's packages, not among them: `uv pip sync` would remove itself.
    tools = VENV / "tools"
    uv = tools / "bin" / "uv"
    if not uv.exists():
        log(f"installing uv {UV_VERSION}")
        run([str(py), "-m", "pip", "install", "-q", "--target", str(tools), f"uv=={UV_VERSION}"])
    log("syncing dependencies from requirements.lock")
    run([str(uv), "pip", "sync", "-q", "--python", str(py), str(LOCK)])
    run([str(uv), "pip", "install", "-q", "--python", str(py), "--no-deps", "-e", str(ROOT)])
    STAMP.write_text(digest)
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "test", "setup", "fleet"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_system(need_redis=True)
    if cmd == "test" and not any(shutil.which(b) for b in ("chromium", "chromium-browser")):
        apt_install("chromium")  # the dashboard's test loads it in headless Chromium
    py = ensure_venv()
    os.chdir(ROOT)
    if cmd == "setup":
        return 0
    if cmd == "test":
        proc = subprocess.run([str(py), "-m", "pytest", *rest])
        if proc.returncode == 5:
            print("pytest collected no tests: that is a failure here", file=sys.stderr)
            return 1
        return proc.returncode
    fleet = str(VENV / "bin" / "fleet")
    args = rest if cmd == "fleet" else ["up", *rest]
    os.execv(fleet, [fleet, *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
