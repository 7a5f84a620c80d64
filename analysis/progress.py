"""Periodic progress lines (done/total, rate, ETA) for long analysis loops."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("heurbench.analysis")


class Progress:
    """Log `what: done/total, rate/s, ETA` at most every `every_s` seconds, and once at the end."""

    def __init__(self, total: int, what: str, every_s: float = 10.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%s: %d/%d, %.2f/s, ETA %.0f s", self.what, self.done, self.total, rate, eta)
