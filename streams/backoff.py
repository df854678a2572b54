"""Exponential backoff with jitter for retries against ClickHouse and Kafka."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds, with jitter; ``slow`` waits the cap."""

    def __init__(self, first: float = 0.2, cap: float = 10.0, slow_cap: float = 30.0) -> None:
        self._next = first
        self._cap = cap
        self._slow_cap = slow_cap

    def next(self, slow: bool = False) -> float:
        if slow:
            return self._slow_cap
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)
