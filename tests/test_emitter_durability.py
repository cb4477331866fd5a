"""Durable before acknowledged (docs/ledger.md): a notice's 200 waits until its event is in
the region's stream or in the fsynced spill file, so a replica SIGKILLed between acknowledging
notices and flushing loses none of the acknowledged ones. The emitter runs in a child process
against a real redis-server; the parent counts its acknowledgements, kills it mid-run with
SIGKILL, and then looks for every acknowledged event in Redis and on disk. With the old
``emit`` (acknowledged at once, flushed 50 ms later) this loses the last acknowledgements."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgspec
import pytest
import redis as redis_lib

from fleet.ledger.emitter import stream_key
from fleet.ledger.events import decode

REGION = "dur"

CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from fleet.ledger.emitter import EventEmitter
    from fleet.ledger.events import Event

    async def main(url, spill):
        em = EventEmitter("dur", url, Path(spill), flush_s=0.05)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def notice(n):
            # the bid path's events keep flowing beside the notices
            em.emit(Event(f"selected:s{n}", "selected", 1.0, "dur", f"s{n}", campaign="c", price=1.0))
            await em.emit_durable(Event(f"billed:b{n}", "billed", 1.0, "dur", f"b{n}", campaign="c", price=1.0))
            sys.stdout.write(f"ack {n}\\n")
            sys.stdout.flush()

        tasks = []
        while True:
            line = await reader.readline()
            if not line:
                break
            tasks.append(loop.create_task(notice(int(line))))
        await asyncio.gather(*tasks)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def _stored(url: str, spill: Path) -> set[str]:
    ids = set()
    for _, fields in redis_lib.Redis.from_url(url).xrange(stream_key(REGION)):
        ids.update(decode(raw).id for raw in msgspec.msgpack.decode(fields[b"b"]))
    if spill.exists():
        data, i = spill.read_bytes(), 0
        while i + 4 <= len(data):
            n = int.from_bytes(data[i:i + 4], "big")
            if i + 4 + n > len(data):
                break
            ids.add(decode(data[i + 4:i + 4 + n]).id)
            i += 4 + n
    return ids


def _kill_mid_run(url: str, spill: Path, total: int, kill_after: int, stop_redis=None) -> set[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(spill)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    acked: set[str] = set()

    def feed():
        try:
            for n in range(total):
                child.stdin.write(f"{n}\n")
                child.stdin.flush()
                if n % 20 == 0:
                    time.sleep(0.005)  # notices arrive over time, not in one pass
        except (BrokenPipeError, ValueError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    deadline = time.time() + 60
    target = kill_after
    for line in child.stdout:
        acked.add(f"billed:b{int(line.split()[1])}")
        if stop_redis is not None and len(acked) == kill_after // 2:
            stop_redis()
            target = len(acked) + kill_after // 2  # as many again acknowledged with Redis away
        # with Redis stopped, go on until the spill file holds acknowledged events too (acks
        # already in the pipe when Redis stopped were made durable in the stream)
        spilled = stop_redis is None or (spill.exists() and spill.stat().st_size > 0)
        if (len(acked) >= target and spilled) or time.time() > deadline:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert len(acked) >= target
    return acked


def test_a_replica_sigkilled_mid_run_loses_no_acknowledged_notice(redis_srv, tmp_path):
    spill = tmp_path / "spill" / "dur-r1.bin"
    acked = _kill_mid_run(redis_srv.url, spill, total=20_000, kill_after=3_000)
    lost = acked - _stored(redis_srv.url, spill)
    assert not lost, f"{len(lost)} acknowledged notices lost, e.g. {sorted(lost)[:5]}"


def test_with_redis_down_acknowledged_notices_are_on_disk_before_the_kill(redis_srv, tmp_path):
    spill = tmp_path / "spill" / "dur-r1.bin"
    acked = _kill_mid_run(redis_srv.url, spill, total=20_000, kill_after=2_000, stop_redis=redis_srv.stop)
    redis_srv.start()
    stored = _stored(redis_srv.url, spill)
    assert spill.exists() and spill.stat().st_size > 0  # the outage's acknowledgements came from disk
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged notices lost, e.g. {sorted(lost)[:5]}"


@pytest.mark.parametrize("n", [1, 64])
def test_a_durable_emit_returns_once_flushed_and_groups_its_neighbours(redis_srv, tmp_path, n):
    import asyncio

    from fleet.ledger.emitter import EventEmitter
    from fleet.ledger.events import Event

    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "s.bin", flush_s=10.0)  # the timer never fires
        await asyncio.gather(*(em.emit_durable(Event(f"billed:g{i}", "billed", 1.0, REGION, f"g{i}"))
                               for i in range(n)))
        entries = redis_lib.Redis.from_url(redis_srv.url).xlen(stream_key(REGION))
        await em.close()
        return entries, em.stats["durable_acks"]

    entries, acks = asyncio.run(go())
    assert acks == n and entries == 1  # one stream entry: the notices of one loop pass commit together


def test_a_notice_acknowledged_from_disk_says_so_and_is_announced_once_streamed(redis_srv, tmp_path):
    """Control drops a replica's counted spend once the ledger has caught up past it, so a bill
    the replica acknowledged from the spill file (not yet in the stream) must not be counted by
    the replica until the file is replayed: ``emit_durable`` says where the event went, and
    ``on_replayed`` fires when the spill file reached the stream (the region app settles then)."""
    import asyncio

    from fleet.ledger.emitter import EventEmitter
    from fleet.ledger.events import Event

    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "s.bin", flush_s=0.05)
        replayed = []
        em.on_replayed = lambda: replayed.append(True)
        up = await em.emit_durable(Event("billed:u1", "billed", 1.0, REGION, "u1"))
        redis_srv.stop()
        down = await em.emit_durable(Event("billed:d1", "billed", 1.0, REGION, "d1"))
        assert not replayed
        redis_srv.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            await em.flush()
            if replayed:
                break
        await em.close()
        return up, down, replayed

    up, down, replayed = asyncio.run(go())
    assert (up, down, replayed) == ("stream", "spill", [True])
    assert {"billed:u1", "billed:d1"} <= _stored(redis_srv.url, tmp_path / "s.bin")
