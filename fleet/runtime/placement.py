"""Where a region's processes run when one Ray cluster spans several nodes.

Each region's node advertises a custom resource ``region:<name>`` and every process of the
region (ingress and inference replicas, cache shards, the ledger consumer) asks for a sliver of
it, so the scheduler can only place them there: losing that node loses that region and nothing
else. Control and its API ask for the head's built-in resource, so losing a worker never takes
control with it. A single-node cluster (the default ``fleet up``, a KubeRay cluster per region)
asks for neither and places as it likes.
"""

from __future__ import annotations

HEAD_RESOURCE = "node:__internal_head__"  # Ray's own resource of the head node
SLIVER = 0.001  # what each process asks for: placement only, never a limit on how many


def region_resource(region: str) -> str:
    return f"region:{region}"


def region_resources(region: str, pinned: bool) -> dict[str, float]:
    """Actor/replica ``resources`` for a process of ``region`` (empty when not pinned)."""
    return {region_resource(region): SLIVER} if pinned else {}


def head_resources(pinned: bool) -> dict[str, float]:
    return {HEAD_RESOURCE: SLIVER} if pinned else {}


def node_capacity(regions: list[str]) -> dict[str, float]:
    """What a node started for ``regions`` advertises: room for any number of their processes."""
    return {region_resource(r): 1000.0 for r in regions}
