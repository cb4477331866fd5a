"""The serving processes' heap: collect once at start, then freeze what start-up allocated.

CPython's full (generation 2) collection walks every tracked object. A replica holds 100-200 k
of them after importing Ray, Serve, numpy and ONNX Runtime, so one full collection stops the
process for 70-100 ms on the development box (docs/benchmarks.md, region capacity with its
cache), longer than a bid's whole deadline, for every request in flight. Those objects live as
long as the process; ``gc.freeze()`` moves them to the permanent generation, which no collection
visits, so later full collections walk only what serving created since. Cycles created while
serving are still collected.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, freeze the rest; returns how many objects were frozen. Call
    at the end of a replica's or actor's ``__init__``, before it takes traffic."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
