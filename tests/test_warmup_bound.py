"""A replica's readiness is bounded: a warm-up waiting on a shard that never answers (a redeployed
region's replica on a stale socket or actor address) is given up after ``ATTEMPT_S`` and tried
again, and ``/ready`` says what it waited on, instead of a silent 503 for as long as the wait
lasts; once the shard answers, the region says ready. The same for a remote model version's
warm-up call on the inference side. No Ray: the shard and the inference are in-process."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from fleet.config import RegionAppArgs
from fleet.region import models, warmup
from fleet.region.runtime import Region

REGION = "us-east"
SHARD = "cache-us-east-0"


class GatedShard:
    """A shard whose lookups wait until ``gate`` is set (the hang), then answer: nobody known."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.lookups = 0

    async def lookup(self, users: list[str]):
        self.lookups += 1
        await self.gate.wait()
        return [None] * len(users)

    async def snapshot(self) -> dict:
        return {}

    async def refresh(self) -> dict:
        return {}


async def _until(cond, timeout_s: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        await asyncio.sleep(0.02)


def test_a_warm_up_waiting_on_a_silent_shard_says_so_and_retries_until_it_answers(regions, monkeypatch):
    monkeypatch.setattr(warmup, "ATTEMPT_S", 0.05)

    async def go():
        shard = GatedShard()
        region = Region(RegionAppArgs(region=REGION, cache=True, telemetry=False, control=False, ledger=False),
                        config=regions, shards={SHARD: shard})
        assert region.cache is not None
        first = region.ready()  # starts the loops and the warm-up
        assert first["ready"] is False
        await _until(lambda: region.ready()["warm_error"], what="the hung attempt reported")
        doc = region.ready()
        assert doc["ready"] is False
        assert "gave up" in doc["warm_error"] and SHARD in doc["warm_error"], doc["warm_error"]
        await _until(lambda: shard.lookups >= 2, what="a second attempt")  # retried, not stuck on the first
        shard.gate.set()
        await _until(lambda: region.ready()["ready"], what="ready once the shard answers")
        assert region.ready()["warm_error"] is None
        await region.stop()

    asyncio.run(go())


def test_a_failing_attempt_still_reports_its_error(monkeypatch):
    """An attempt that raises (not one that hangs) is reported, and retried."""

    class Boom:
        name, warm, warm_error = REGION, False, ""

    calls = []

    async def fake_warm(region, n, at):
        calls.append(n)
        if len(calls) < 2:
            raise RuntimeError("shard cache-us-east-0: ConnectionError('refused')")
        return None

    async def go():
        r = Boom()
        await warmup.warm_up(r, attempt_s=5.0)
        return r

    monkeypatch.setattr(warmup, "warm", fake_warm)

    r = asyncio.run(go())
    assert r.warm and r.warm_error == "" and calls == [0, 1]


class SilentInference:
    """The region's inference deployment: the first warm-up call is never answered (a replica
    that went away with it), later ones answer once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def call(self, model: str, rows):
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()  # never
        await self.release.wait()
        return np.full(len(rows), 0.02)

    async def score(self, model: str, rows):
        return np.full(len(rows), 0.02)


def test_a_remote_version_whose_warm_up_call_is_never_answered_is_called_again_and_said(regions, monkeypatch):
    """Remote pricing: /ready waits for the current version's warm-up call on the inference side.
    One never answered is given up after ``WARMUP_CALL_S``, ``model_error`` says so, and the
    next readiness probe calls again; the region says ready once a call answers."""
    monkeypatch.setattr(models, "WARMUP_CALL_S", 0.05)

    async def go():
        inference = SilentInference()
        region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, ledger=False,
                                      pricing="remote"), config=regions, inference=inference)
        region.reconfigure({"model": "ctr/v1"})
        assert region.ready()["ready"] is False  # the first call goes out, and hangs
        await _until(lambda: region.ready()["model_error"], what="the unanswered call reported")
        doc = region.ready()
        assert doc["ready"] is False and "ctr/v1" in doc["model_error"] and "not answered" in doc["model_error"]
        await _until(lambda: region.ready() and inference.calls >= 2, what="a second call")
        inference.release.set()
        await _until(lambda: region.ready()["ready"], what="ready once a call answers")
        assert region.ready()["model_error"] == ""
        await region.stop()

    asyncio.run(go())
