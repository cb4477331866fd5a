"""The ingress micro-batcher: shared calls, own slices, early flush, failures reach everyone."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fleet.serve.microbatch import MicroBatcher


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_callers_share_one_call_and_get_their_own_rows():
    sent = []

    async def send(rows):
        sent.append(len(rows))
        await asyncio.sleep(0)
        return rows[:, 0] * 2

    async def main():
        b = MicroBatcher(send, window_s=0.01)
        parts = [np.full((n, 3), float(i)) for i, n in enumerate((1, 4, 2, 7))]
        outs = await asyncio.gather(*(b(p) for p in parts))
        return parts, outs, b.calls

    parts, outs, calls = _run(main())
    assert calls == 1 and sent == [14]
    for p, o in zip(parts, outs):
        assert np.array_equal(o, p[:, 0] * 2)


def test_a_full_window_flushes_early():
    async def send(rows):
        return rows[:, 0]

    async def main():
        b = MicroBatcher(send, window_s=5.0, max_rows=8)
        t0 = asyncio.get_running_loop().time()
        await asyncio.gather(*(b(np.ones((4, 2))) for _ in range(2)))
        return asyncio.get_running_loop().time() - t0

    assert _run(main()) < 1.0  # not the 5 s window


def test_a_failed_call_fails_every_waiter_and_the_next_window_works():
    calls = {"n": 0}

    async def send(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("replica died")
        return rows[:, 0]

    async def main():
        b = MicroBatcher(send, window_s=0.005)
        first = await asyncio.gather(*(b(np.ones((2, 2))) for _ in range(3)), return_exceptions=True)
        second = await b(np.ones((2, 2)))
        return first, second

    first, second = _run(main())
    assert all(isinstance(r, ConnectionError) for r in first)
    assert np.array_equal(second, np.ones(2))


def test_a_waiter_that_gives_up_does_not_disturb_the_others():
    async def send(rows):
        await asyncio.sleep(0.05)
        return rows[:, 0]

    async def main():
        b = MicroBatcher(send, window_s=0.001)
        impatient = asyncio.wait_for(b(np.zeros((1, 2))), 0.01)
        patient = b(np.ones((3, 2)))
        return await asyncio.gather(impatient, patient, return_exceptions=True)

    impatient, patient = _run(main())
    assert isinstance(impatient, asyncio.TimeoutError)
    assert np.array_equal(patient, np.ones(3))


def test_callback_senders_batch_one_loop_turn_and_answer_in_the_reading_callback():
    """``start``: the batch leaves in a plain callback of the next loop turn, full batches at
    once, and the waiters are answered inside the callback that delivers the result (no task)."""
    from fleet.serve.microbatch import join_lists

    calls: list[list] = []
    answer_later: list = []

    def start(keys, done):
        calls.append(keys)
        answer_later.append((keys, done))

    async def main():
        loop = asyncio.get_running_loop()
        b = MicroBatcher(None, window_s=0.0, max_rows=3, join=join_lists, coerce=list, start=start)
        futs = [b.submit([k]) for k in "ab"]
        assert calls == []  # not yet: the rest of this loop turn may add to the batch
        await asyncio.sleep(0)
        assert calls == [["a", "b"]]
        full = [b.submit([k]) for k in "cde"]  # a full batch leaves at once
        assert calls[-1] == ["c", "d", "e"]
        keys, done = answer_later[0]
        loop.call_soon(done, [k.upper() for k in keys])  # as a protocol's data_received would
        await asyncio.sleep(0)
        assert [f.result() for f in futs] == [["A"], ["B"]]  # set in that very callback
        answer_later[1][1](RuntimeError("shard gone"))
        errors = [f.exception() for f in full]
        return errors

    errors = _run(main())
    assert all(isinstance(e, RuntimeError) for e in errors)


def test_observe_times_each_waiter_until_its_answer_arrives_late_ones_included():
    """``observe`` gets one figure per waiter: submit to the answer's arrival (a waiter that
    timed out first included, since the late answers are the tail worth seeing)."""
    from fleet.serve.microbatch import join_lists

    seen: list[float] = []
    pending: list = []

    def start(keys, done):
        pending.append(done)

    async def main():
        loop = asyncio.get_running_loop()
        b = MicroBatcher(None, window_s=0.0, max_rows=8, join=join_lists, coerce=list, start=start,
                         observe=seen.append)
        futs = [b.submit([k]) for k in "abc"]
        await asyncio.sleep(0)
        loop.call_later(0.05, pending[0], ["A", "B", "C"])
        await asyncio.sleep(0.01)
        futs[0].set_exception(asyncio.TimeoutError())  # gives up, as the cache client's timer does
        await asyncio.sleep(0.08)
        with pytest.raises(asyncio.TimeoutError):
            futs[0].result()
        return [f.result() for f in futs[1:]]

    assert _run(main()) == [["B"], ["C"]]
    assert len(seen) == 3 and all(0.045 <= s < 1.0 for s in seen)
    quiet = MicroBatcher(None, window_s=0.0, join=join_lists, coerce=list, start=start)
    assert quiet.observe is None  # no clock read per submit unless asked


def test_batcher_bench_times_every_lookup_only_in_its_observed_variant(tmp_path):
    """``fleet bench batcher``: both variants run the same lookups, the observed one puts each
    into the histogram, and the document carries the ratio against the unobserved reference."""
    from fleet.bench.batcher import run_batcher_bench

    doc = run_batcher_bench(tmp_path / "b.json", lookups=320, rounds=2, groups=(1, 16), log=lambda *_: None)
    assert json.loads((tmp_path / "b.json").read_text()) == doc
    for row in doc["results"]:
        assert row["observations_last_round"] == 320  # 320 lookups: 320 x 1 and 20 x 16
        assert row["without_observe_us"] > 0 and row["with_observe_us"] > 0
        assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
