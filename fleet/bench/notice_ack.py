"""What "durable before acknowledged" costs a notice: the emitter's fire-and-forget ``emit``
(the old notice path: answered at once, flushed up to 50 ms later) against ``emit_durable``
(answered once the event is in the stream), in the same run against a real redis-server.

Per variant and concurrency (notices in flight at once, as an exchange's notice calls overlap):
CPU of this process per notice (the emitter's side: encoding, pipelines, the wait's wake-ups),
the wall time until a notice may be answered (p50 and p99), and the stream entries written (group
commit: many notices per XADD pipeline under load).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fleet.ledger.emitter import EventEmitter, stream_key
from fleet.ledger.events import Event


def _event(i: int) -> Event:
    return Event(f"billed:n{i}", "billed", time.time(), "bench", f"n{i}", f"a{i}", "1", "c-bench", "cr",
                 "model:ctr/v1", "pub-1", 1.2345, "", 0, time.time(), 0.0, "")


async def _variant(url: str, spill: Path, durable: bool, n: int, concurrency: int) -> dict:
    em = EventEmitter("bench", url, spill)
    waits: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            if durable:
                await em.emit_durable(_event(i))
            else:
                em.emit(_event(i))
            waits.append(time.perf_counter() - t0)

    before = await em.redis.xlen(stream_key("bench"))
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    await em.flush()  # fire-and-forget's events reach the stream too: same work counted
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    entries = await em.redis.xlen(stream_key("bench")) - before
    await em.close()
    waits.sort()
    return {"cpu_us_per_notice": round(cpu / n * 1e6, 2), "wall_s": round(wall, 3),
            "answer_p50_ms": round(waits[len(waits) // 2] * 1000, 3),
            "answer_p99_ms": round(waits[int(len(waits) * 0.99)] * 1000, 3),
            "stream_entries": entries, "notices_per_entry": round(n / max(entries, 1), 1)}


def run(url: str, tmp: Path, n: int = 20_000, concurrency: tuple[int, ...] = (1, 64), rounds: int = 3) -> dict:
    out: dict = {"notices": n, "rounds": rounds, "results": {}}
    for c in concurrency:
        per = {"emit": [], "emit_durable": []}
        for r in range(rounds):
            for name, durable in (("emit", False), ("emit_durable", True)):
                per[name].append(asyncio.run(_variant(url, tmp / f"{name}-{c}-{r}.bin", durable, n, c)))
        cpu = {k: sorted(x["cpu_us_per_notice"] for x in v)[rounds // 2] for k, v in per.items()}
        out["results"][f"concurrency_{c}"] = {**per, "cpu_ratio_durable_to_emit": round(cpu["emit_durable"] / cpu["emit"], 2)}
    return out
