"""The hot path's plain Ray actors: collect once at start, then freeze what start-up allocated.

CPython's full (generation 2) collection walks every tracked object. A process that has imported
the serving stack holds ~113 k of them, and one full collection stops it for 65-80 ms on the
development box (``fleet bench gc``), longer than a bid's whole deadline, for everything in flight.
Those objects live as long as the process; ``gc.freeze()`` moves them to the permanent
generation, which no collection visits (0.2-0.3 ms a full collection then). Cycles created while
serving are still collected.

Serve replicas (the ingress, inference) get this from Serve itself since 2.4x
(``RAY_SERVE_FREEZE_GC_ON_STARTUP``, after the first ``reconfigure``); the cache shards are
plain actors, and answer lookups on the request path, so they call this.
"""

from __future__ import annotations

import gc
import os


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, freeze the rest; returns how many objects were frozen. Call
    at the end of a replica's or actor's ``__init__``, before it takes traffic.
    ``FLEET_GC_FREEZE=0`` leaves the heap as it is (to measure against, or to hunt a leak with
    ``gc.get_objects()``, which does not list frozen objects)."""
    if os.environ.get("FLEET_GC_FREEZE", "1") == "0":
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
