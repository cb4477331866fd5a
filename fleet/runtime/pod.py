"""The environment a Kubernetes pod's Ray node starts with: what ``fleet up`` gives a local one.

KubeRay starts each pod's node with its own generated ``ray start``. Without this, the pods of a
Terraform-applied region ran Serve's HAProxy as it comes: no arrival stamp (deadlines started at
the handler, not at the fleet), no per-replica limits, no shedding at the door and no deadline
no-bid from HAProxy (docs/ingress.md), and none of Ray's settings the fleet chose (``SERVE_ENV``:
worker priority, HAProxy threads, the idle loops). The RayService module's containers run

    fleet_env="$(python -m fleet.runtime.pod --dir /tmp/fleet)" || exit 1; eval "$fleet_env"
    exec /bin/bash -c "$KUBERAY_GEN_RAY_START_CMD"

(with KubeRay's ``ray.io/overwrite-container-cmd`` annotation): this prints ``export`` lines for
the settings and writes the HAProxy wrapper (``fleet.runtime.ingress``) into a directory of the
pod's own, with the limits from the pod's ``FLEET_INGRESS_*`` and the deadlines from its
``regions.yaml``. A value the pod's environment already sets wins, as it does locally. A failure
here stops the node (a stock node would serve without any of it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

DEFAULT_DIR = "/tmp/fleet"  # an emptyDir of the pod's own (the RayService module mounts it)


def node_env(state_dir: Path, env=os.environ) -> dict[str, str]:
    """Ray's settings and the HAProxy wrapper for a node started outside ``fleet up``."""
    from fleet.runtime.ingress import wrapper_env
    from fleet.runtime.local import SERVE_ENV

    out = {k: v for k, v in SERVE_ENV.items() if not env.get(k)}
    out.update(wrapper_env(state_dir, env))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fleet.runtime.pod", description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=DEFAULT_DIR, help="where the HAProxy wrapper is written")
    args = p.parse_args(argv)
    for k, v in sorted(node_env(Path(args.dir)).items()):
        sys.stdout.write(f"export {k}={shlex.quote(v)}\n")


if __name__ == "__main__":
    main()
