"""A one-line progress bar on stderr for the evals' long loops: done/total, time so far, time left."""

from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour up."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """`step(label)` before each unit of work, `close()` at the end. The time left is the mean time of the units
    done so far times the units to go, so it settles after a few units."""

    def __init__(self, total: int, what: str, enabled: bool = True) -> None:
        self.total, self.what, self.enabled, self.done = total, what, enabled and total > 0, 0
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            print(f"\r  {self.line(time.monotonic() - self.started)} {label[:50]:<50}", end="", file=sys.stderr,
                  flush=True)

    def line(self, elapsed: float) -> str:
        """The bar after `elapsed` seconds, `self.done - 1` units finished and one under way."""
        filled = 30 * self.done // self.total
        finished = self.done - 1
        left = f", ~{clock(elapsed / finished * (self.total - finished))} left" if finished else ""
        return f"{self.what} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {clock(elapsed)}{left}"

    def close(self) -> None:
        if self.enabled:
            print(f"\r  {self.what}: {self.done} done in {clock(time.monotonic() - self.started)}".ljust(120),
                  file=sys.stderr)
