"""Progress lines for long loops over thousands of images, in the run's log."""

from __future__ import annotations

import logging
import time


class Progress:
    """Log how far a loop has got: about every tenth of the way, at least every 10 seconds, and at the end.

    Loops under `quiet_below` items only log their end, so small runs keep a short log.
    """

    quiet_below = 500

    def __init__(self, logger: logging.Logger, what: str, total: int) -> None:
        self.logger, self.what, self.total = logger, what, total
        self.done, self.started = 0, time.monotonic()
        self.step, self.last_logged, self.next_at = max(1, total // 10), self.started, max(1, total // 10)

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        finished = self.done >= self.total
        due = self.done >= self.next_at or now - self.last_logged > 10
        if finished or (due and self.total >= self.quiet_below):
            rate = self.done / max(now - self.started, 1e-9)
            share = 100 * self.done / max(self.total, 1)
            self.logger.info("  %s %d/%d (%.0f%%), %.0f/s", self.what, self.done, self.total, share, rate)
            self.last_logged = now
            self.next_at = (self.done // self.step + 1) * self.step
