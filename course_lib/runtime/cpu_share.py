"""Sharing the CPU: train with as many threads as other programs leave cores free.

PyTorch's threads meet at the end of every parallel step. When another program holds one of
the cores, the thread that lost its core arrives late and every other thread waits for it, so
two runs with 2 threads each on 2 cores each go much slower than half speed. Every few seconds
`FreeCoreThreads` reads how much CPU time the *other* programs used on this process's cores
(Linux's /proc/stat, minus this process's own time) and sets the thread count to the cores
they left free: alone it keeps every core; next to a second run each run settles on its share.
It hangs off the training loop as a callback; `COURSE_THREAD_POLICY=off` turns it off, like
the OpenMP wait settings in course_lib.runtime.threads. Measured in benchmarks/contention.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.progress import TrainingCallback
from course_lib.records import History
from course_lib.runtime.speed import usable_cores
from course_lib.runtime.threads import POLICY_ENV

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (not idle, iowait)
_STEAL_FIELD = 7  # time the hypervisor gave this virtual machine's cores to another machine


@dataclass
class CpuSample:
    """Busy CPU time on this process's cores and this process's own CPU time, in clock ticks."""

    at: float  # time.monotonic()
    busy_ticks: int
    own_ticks: int
    steal_ticks: int = 0  # part of busy_ticks: on a virtual machine, another machine had the core


def take_sample(cores: set[int] | None = None) -> CpuSample | None:
    """Read /proc now; None where there is no /proc (macOS, Windows) or it cannot be read."""
    try:
        cores = cores if cores is not None else os.sched_getaffinity(0)
        busy = steal = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                busy += sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))
                steal += int(values[_STEAL_FIELD]) if len(values) > _STEAL_FIELD else 0
        # /proc/self/stat: utime and stime are fields 14 and 15; the name in parentheses may hold spaces.
        own_fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        own = int(own_fields[11]) + int(own_fields[12])
    except (OSError, AttributeError, ValueError, IndexError):
        return None
    return CpuSample(time.monotonic(), busy, own, steal)


def cores_used_by_others(before: CpuSample, after: CpuSample) -> float:
    """How many of this process's cores other programs kept busy between two samples, on average."""
    ticks = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return _cores(ticks, before, after)


def cores_stolen(before: CpuSample, after: CpuSample) -> float:
    """The part of cores_used_by_others that a virtual machine's host gave to other machines."""
    return _cores(after.steal_ticks - before.steal_ticks, before, after)


def _cores(ticks: int, before: CpuSample, after: CpuSample) -> float:
    seconds = after.at - before.at
    if seconds <= 0:
        return 0.0
    return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / seconds)


def threads_for(cores: int, others: float) -> int:
    """The cores the others leave free, at least 1.

    A core counts as taken once others keep it busy three quarters of the time: a browser or
    JupyterLab using a little CPU now and then should not halve a lone run's threads.
    """
    return max(1, min(cores, cores - int(others + 0.25)))


class FreeCoreThreads(TrainingCallback):
    """Every `every_s` seconds of training, use as many torch threads as there are free cores."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.cores = usable_cores()
        self.start_threads = torch.get_num_threads()
        self.last: CpuSample | None = None
        self.changes: list[tuple[int, int]] = []  # (step, threads) each time the count changed

    def on_train_begin(self, total_steps: int) -> None:
        self.start_threads = torch.get_num_threads()  # after train() capped it at the usable cores
        self.last = take_sample()

    def on_step(self, step: int, loss: float, history: History) -> None:
        if self.last is None or time.monotonic() - self.last.at < self.every_s:
            return
        now = take_sample()
        if now is None:
            return
        others = cores_used_by_others(self.last, now)
        threads = threads_for(min(self.cores, self.start_threads), others)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append((step, threads))
            if history is not None:  # kept in metrics.json: a slow run says whether it shared the CPU
                history.thread_changes.append(
                    {"step": step, "threads": threads, "others": round(others, 2),
                     "stolen": round(cores_stolen(self.last, now), 2)})
        self.last = now

    def on_train_end(self, history: History) -> None:
        torch.set_num_threads(self.start_threads)  # evaluation and the next run start from the full count


def sharing_note(history: History) -> str | None:
    """One line for the log where training gave up threads to other programs (None where it never did)."""
    if not history.thread_changes:
        return None
    spans = ", ".join(f"{c['threads']} from step {c['step']}" for c in history.thread_changes)
    busiest = max(history.thread_changes, key=lambda c: c["others"])
    host = f", {busiest['stolen']:.1f} of it by the virtual machine's host" if busiest["stolen"] >= 0.1 else ""
    return (f"Training shared the CPU: other programs kept up to {busiest['others']:.1f} cores busy{host}, so "
            f"it used fewer threads (threads: {spans}). Its steps were slower for it.")


def share_callbacks(device: torch.device) -> list[TrainingCallback]:
    """The CPU-sharing callback for a CPU run, unless COURSE_THREAD_POLICY=off; nothing on a GPU."""
    if device.type != "cpu" or os.environ.get(POLICY_ENV, "").strip().lower() == "off":
        return []
    return [FreeCoreThreads()]
