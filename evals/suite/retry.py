"""Retry a flaky call with exponential backoff."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class RetryError(RuntimeError):
    """Every attempt failed; the last exception is chained."""


@dataclass
class Backoff:
    base: float = 0.5
    factor: float = 2.0
    limit: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (the first retry is attempt 1)."""
        return min(self.limit, self.base * self.factor ** attempt)


def retry(
    call: Callable[[], T],
    attempts: int = 3,
    backoff: Backoff | None = None,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """Call `call` until it succeeds or `attempts` calls have failed."""
    backoff = backoff or Backoff()
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return call()
        except retry_on as exc:
            last = exc
            wait = backoff.delay(attempt)
            log.warning("attempt %d failed: %s; retrying in %.1fs", attempt + 1, exc, wait)
            time.sleep(wait)
    raise RetryError(f"gave up after {attempts} attempts") from last


def jittered(backoff: Backoff, attempt: int) -> float:
    """A delay spread over [0, delay] so that many clients do not retry in lockstep."""
    return random.uniform(0, backoff.delay(attempt))


def retry_forever(call: Callable[[], T], backoff: Backoff | None = None) -> T:
    """Keep calling until it works; for daemons that have nothing better to do."""
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        try:
            return call()
        except OSError as exc:
            log.info("still failing: %s", exc)
            time.sleep(backoff.delay(attempt))
            attempt += 1
