"""What timing each lookup's answer costs the ingress: ``MicroBatcher(observe=...)`` (the
``enrichment_answer`` histogram) against the same batcher without it, in one process.

The shard is played by a callback that answers in the next loop turn, so what is left is the
batcher's own work per lookup (queue the waiter, send, hand each waiter its slice, and with
``observe`` one clock read at submit, one per batch at the answer and one histogram bucket per
waiter), the part the observation adds to. Lookups go in groups of ``group`` per loop turn, as
concurrent requests of one ingress share a batch. Rounds interleave the two variants; the
reference is the batcher without ``observe``, measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from fleet.obs.histogram import StageHistograms
from fleet.serve.microbatch import MicroBatcher, join_lists


def _answer_next_turn(users: list, done) -> None:
    """A shard that answers every key as a hit, from a later callback (as the socket's reader)."""
    asyncio.get_running_loop().call_soon(done, users)


async def _per_lookup_us(lookups: int, group: int, observe: bool) -> tuple[float, int]:
    """(µs per lookup, observations made) for ``lookups`` lookups in groups of ``group``."""
    hist = StageHistograms()
    batcher = MicroBatcher(None, window_s=0.0, max_rows=256, join=join_lists, coerce=list,
                           start=_answer_next_turn,
                           observe=(lambda s: hist.observe("enrichment_answer", s)) if observe else None)
    keys = [[f"u{i}"] for i in range(group)]
    rounds = max(1, lookups // group)
    t0 = time.perf_counter()
    for _ in range(rounds):
        futs = [batcher.submit(k) for k in keys]
        for f in futs:
            await f
    elapsed = time.perf_counter() - t0
    return elapsed / (rounds * group) * 1e6, sum(hist.counts.get("enrichment_answer", []))


async def _measure(lookups: int, group: int, rounds: int) -> dict:
    await _per_lookup_us(lookups // 10, group, False)  # warm the interpreter's caches
    bare, timed, observed = [], [], 0
    for _ in range(rounds):
        bare.append((await _per_lookup_us(lookups, group, False))[0])
        us, observed = await _per_lookup_us(lookups, group, True)
        timed.append(us)
    ratios = [t / b for t, b in zip(timed, bare)]
    return {"group": group, "lookups_per_round": lookups, "observations_last_round": observed,
            "without_observe_us": round(statistics.median(bare), 3),
            "with_observe_us": round(statistics.median(timed), 3),
            "added_us": round(statistics.median(t - b for t, b in zip(timed, bare)), 3),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}


def run_batcher_bench(out: Path, lookups: int = 20_000, rounds: int = 7, groups=(1, 16), log=print) -> dict:
    rows = [asyncio.run(_measure(lookups, g, rounds)) for g in groups]
    for r in rows:
        log(f"  {r['group']:>3} lookups a turn: {r['without_observe_us']:.2f} µs a lookup without observe, "
            f"{r['with_observe_us']:.2f} with (+{r['added_us']:.2f} µs, ratio {r['ratio_median']:.2f}, "
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    doc = {"benchmark": "batcher-observe", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "rounds": rounds,
           "method": "MicroBatcher submit to answer delivered, shard answering next loop turn; "
                     "with observe=enrichment_answer histogram against without, rounds interleaved",
           "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc
