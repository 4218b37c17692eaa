"""Sharing the CPU: the thread count follows the cores other programs leave free."""

import subprocess
import sys
import time

import pytest
import torch

from course_lib.records import History
from course_lib.runtime.cpu_share import (
    CpuSample,
    FreeCoreThreads,
    cores_stolen,
    cores_used_by_others,
    share_callbacks,
    sharing_note,
    take_sample,
    threads_for,
)
from course_lib.runtime.speed import usable_cores


def test_threads_leave_the_cores_others_use():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.6) == 2  # a browser tab's bit of CPU does not cost a thread
    assert threads_for(2, 0.8) == 1
    assert threads_for(2, 5.0) == 1  # never fewer than one
    assert threads_for(8, 1.2) == 7


def test_others_are_the_busy_time_that_is_not_ours():
    import os

    hz = os.sysconf("SC_CLK_TCK")
    before = CpuSample(at=10.0, busy_ticks=1000, own_ticks=500)
    after = CpuSample(at=12.0, busy_ticks=1000 + 3 * hz, own_ticks=500 + 2 * hz)  # 3 s busy, 2 s ours
    assert cores_used_by_others(before, after) == pytest.approx(0.5)
    assert cores_used_by_others(after, after) == 0.0
    stolen = CpuSample(at=12.0, busy_ticks=1000 + 3 * hz, own_ticks=500 + 2 * hz, steal_ticks=hz)
    assert cores_stolen(before, stolen) == pytest.approx(0.5)  # a VM's host had one core for 1 s of the 2


def test_a_run_that_never_shared_says_nothing_and_one_that_did_says_how():
    assert sharing_note(History()) is None
    history = History(thread_changes=[{"step": 12, "threads": 1, "others": 0.93, "stolen": 0.4},
                                      {"step": 40, "threads": 2, "others": 0.1, "stolen": 0.0}])
    note = sharing_note(history)
    assert "up to 0.9 cores busy, 0.4 of it by the virtual machine's host" in note
    assert "threads: 1 from step 12, 2 from step 40" in note


def test_policy_off_or_a_gpu_means_no_sharing_callback(monkeypatch):
    monkeypatch.delenv("COURSE_THREAD_POLICY", raising=False)
    assert [type(cb) for cb in share_callbacks(torch.device("cpu"))] == [FreeCoreThreads]
    assert share_callbacks(torch.device("cuda")) == []
    monkeypatch.setenv("COURSE_THREAD_POLICY", "off")
    assert share_callbacks(torch.device("cpu")) == []


def test_a_busy_neighbour_takes_a_thread_and_gives_it_back():
    if take_sample() is None:
        pytest.skip("no /proc here: the thread count is left alone")
    full = min(usable_cores(), torch.get_num_threads())
    if full < 2:
        pytest.skip("one core: there is no thread to give up")
    watcher, history = FreeCoreThreads(every_s=0.5), History()
    watcher.on_train_begin(10)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # keeps one core busy
    try:
        time.sleep(1.5)
        watcher.on_step(1, 0.0, history)
        assert torch.get_num_threads() == full - 1
    finally:
        spinner.kill()
        spinner.wait()
    time.sleep(1.5)
    watcher.on_step(2, 0.0, history)
    assert torch.get_num_threads() == full
    assert watcher.changes == [(1, full - 1), (2, full)]
    # The run's record (metrics.json) keeps the changes and how busy the others were.
    assert [(c["step"], c["threads"]) for c in history.thread_changes] == watcher.changes
    assert history.thread_changes[0]["others"] >= 0.75 > history.thread_changes[1]["others"]
    watcher.on_train_end(history)
    assert torch.get_num_threads() == watcher.start_threads
