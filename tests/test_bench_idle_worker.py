"""``fleet.bench.idle_worker``'s per-thread accounting (docs/benchmarks.md, "Idle background").
No Ray here: the /proc reader runs on this test's own process."""

from __future__ import annotations

import os

from fleet.bench.idle_worker import by_thread, read_threads


def test_cores_per_process_and_per_thread_name_over_the_window():
    before = {1: {"1": ("main", 1.0), "2": ("worker.io", 0.5), "3": ("gone", 0.2)},
              2: {"4": ("main", 2.0), "5": ("worker.io", 0.0)}}
    after = {1: {"1": ("main", 1.1), "2": ("worker.io", 0.52), "9": ("born", 5.0)},
             2: {"4": ("main", 2.3), "5": ("worker.io", 0.02)}}
    got = by_thread(before, after, 10.0)
    assert got["per_process"] == {1: 0.012, 2: 0.032}
    assert got["mean"] == 0.022
    # per name, averaged over the processes; a thread that ended or appeared inside the window
    # is left out (its CPU at one end is unknown), never counted from zero
    assert got["threads"] == {"main": 0.02, "worker.io": 0.002}
    assert by_thread({}, {}, 10.0)["mean"] == 0.0
    assert by_thread(before, after, 0.0)["per_process"] == {}


def test_reads_this_process_threads_and_names_its_own_main():
    got = read_threads(os.getpid())
    assert got[str(os.getpid())][0] == "main"
    assert all(cpu >= 0 for _, cpu in got.values())
    assert read_threads(2 ** 22 + 7) == {}  # no such process: nothing, no error
