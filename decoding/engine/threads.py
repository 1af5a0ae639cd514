"""How many CPU threads the engine's torch ops use: the cores other work leaves free, unless pinned.

Every parallel torch op ends at a barrier that waits for all its threads, so when other processes keep the cores
busy the op waits for whichever of its threads the scheduler has parked. On the 2-core machine, at load 9, a 1-row
decode forward took 1.6x and a 5-row verify forward 3-4x as long with 2 threads as with 1; with the cores free, 2
threads prefilled 600 tokens in 1.7 s against 2.7 s with 1. So the engine counts the runnable threads of other
processes when a generation starts, and every few seconds while it runs, and uses the cores they leave (at least
one). `--threads N` pins the count instead. The count is set in the thread that runs the model: OpenMP keeps the
team size per thread, and a count set elsewhere after that thread's first op does not reach it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

RECHECK_S = 2.0  # seconds between two looks at the load during a generation

_pinned: int | None = None


def pin_threads(threads: int | None) -> None:
    """Use exactly `threads` from now on (None: choose from the free cores again)."""
    global _pinned
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _pinned = threads


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _running_here() -> int:
    """This process's threads that are running or runnable now."""
    running = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            running += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return running


def busy_elsewhere(samples: int = 5, interval_s: float = 0.001) -> int:
    """Runnable threads of other processes (median of a few looks); 0 where /proc does not say."""
    counts = []
    for i in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        counts.append(max(0, running - _running_here()))
        if i + 1 < samples:
            time.sleep(interval_s)
    return int(statistics.median(counts))


def choose_threads() -> int:
    """The thread count for the next forwards: the pinned one, else the cores other work leaves free (at least 1)."""
    return _pinned or max(1, cores() - busy_elsewhere())


class ThreadPolicy:
    """Applies `choose_threads()` in the calling thread now and again every `RECHECK_S` seconds of `update()` calls."""

    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self.recheck_s = recheck_s
        self._next = 0.0

    def update(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.recheck_s
        threads = choose_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
