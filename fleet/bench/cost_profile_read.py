"""Fold a replica's py-spy record (``fleet.bench.cost_profile``: raw, ``--threads --idle``) into
where its CPU per request goes: the bid path, the fleet's glue around it, the cache client,
traces, the ledger's emitter, and Serve's, uvicorn's and asyncio's own work, by the frames of
each busy sample of the event loop's thread (idle samples, the loop waiting in ``select``, are
left out; the trace exporter's thread is counted apart).

    python -m fleet.bench.cost_profile_read bench/results/profile-h24-canned/spy-us-east.txt 609

The second argument is the replica's measured CPU per request (``threads.json``: ``process_us``),
spread over the busy samples. Sampling at 200 Hz for ~10 s gives ~1,400 samples: an item under
~5 us a request is within a few samples' noise.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_LINE = re.compile(r":\d+\)")
_BID_PATH = re.compile(r"fleet/(pipeline|ml|openrtb|ledger/signing|ledger/events)")


def fold(path: str) -> tuple[Counter, int, int]:
    """(us-per-request weights by category, busy loop samples, busy exporter samples)."""
    cats: Counter = Counter()
    busy = otel = 0
    for line in open(path):
        stack, n = line.rstrip().rsplit(" ", 1)
        frames = [_LINE.sub(")", f).strip() for f in stack.split(";")]
        if "Otel" in frames[0]:
            if "Condition.wait" not in frames[-1]:
                otel += int(n)
            continue
        if "AsyncIO Thread" not in frames[0] or len(frames) == 1 or frames[-1] == "Thread.run (threading.py)":
            continue
        busy += int(n)
        cats[category(frames)] += int(n)
    return cats, busy, otel


def category(frames: list[str]) -> str:
    s = ";".join(frames)
    leaf = frames[-1]
    if _BID_PATH.search(s):
        return "bid path (fleet/pipeline, ml, openrtb)"
    if "fleet/cache/" in s or "microbatch" in s:
        return "cache client (lookup, near-cache, wire)"
    if "fleet/obs/tracing" in s:
        return "traces (keep, spans)"
    if "fleet/ledger/emitter" in s:
        return "ledger emitter"
    if "fleet/" in s:
        return "fleet glue (region runtime, handler)" + (": starlette" if "starlette" in leaf else "")
    if "logging/" in leaf:
        return "serve: logging (access log)"
    if "ray/util/metrics" in s or "_metrics" in s:
        return "serve: metrics, request bookkeeping"
    for part in ("uvicorn", "asyncio", "starlette"):
        if part in leaf:
            return f"serve: {part}"
    return "serve: replica, middleware, other"


def main(argv=None) -> None:
    path, us = (argv or sys.argv[1:])[:2]
    cats, busy, otel = fold(path)
    per = float(us) / max(1, busy + otel)
    for k, v in cats.most_common():
        print(f"{v * per:7.1f}  {k}")
    print(f"{otel * per:7.1f}  trace exporter's thread")


if __name__ == "__main__":
    main()
