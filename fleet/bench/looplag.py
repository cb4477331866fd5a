"""What the event-loop lag monitor (``fleet.obs.histogram.watch_loop_lag``) costs the process it
watches: CPU time with and without it over the same seconds, on an idle loop and on a loop that
is already woken every 2 ms (a replica serving a few hundred requests a second), several rounds.
The reference is the same loop without the monitor, measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from fleet.obs.histogram import StageHistograms, watch_loop_lag


async def _cpu(seconds: float, monitor: bool, tick_s: float | None) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    hist = StageHistograms()
    tasks = [loop.create_task(watch_loop_lag(hist))] if monitor else []
    if tick_s is not None:
        async def ticker():
            while True:
                await asyncio.sleep(tick_s)
        tasks.append(loop.create_task(ticker()))
    c0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - c0
    for t in tasks:
        t.cancel()
    return cpu, sum(hist.counts.get("loop_lag", []))


async def _measure(seconds: float, rounds: int) -> list[dict]:
    out = []
    for label, tick in (("idle loop", None), ("loop woken every 2 ms", 0.002)):
        shares, samples = [], 0
        for _ in range(rounds):
            base, _ = await _cpu(seconds, False, tick)
            with_monitor, samples = await _cpu(seconds, True, tick)
            shares.append((with_monitor - base) / seconds)
        out.append({"loop": label, "core_share_min": round(min(shares), 5), "core_share_max": round(max(shares), 5),
                    "samples_per_s": round(samples / seconds, 1)})
    return out


def run_looplag(out: Path, seconds: float = 4.0, rounds: int = 3, log=print) -> dict:
    rows = asyncio.run(_measure(seconds, rounds))
    for r in rows:
        log(f"  {r['loop']:<22} monitor costs {r['core_share_min']:.2%}-{r['core_share_max']:.2%} of a core "
            f"({r['samples_per_s']} samples/s)")
    doc = {"benchmark": "loop-lag", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "seconds": seconds, "rounds": rounds, "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc
