"""Exponential backoff with jitter for retries against ClickHouse and Kafka."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from clickhouse_connect.driver.client import Client

from sinks.sink import ClickHouseSink

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


async def read_until(sink: ClickHouseSink, fn: Callable[[Client, str], T], what: str, meanwhile: str) -> T:
    """``fn`` run on ``sink``'s ClickHouse (off the event loop) until it answers, retrying with backoff.

    ``what`` and ``meanwhile`` say in the log what could not be read and what waits for it.
    """
    backoff = Backoff()
    while True:
        try:
            return await asyncio.to_thread(sink.read, fn)
        except Exception as exc:
            delay = backoff.next()
            logger.error(
                "cannot %s in ClickHouse (%s): check it is reachable and migrated; %s, retrying in %.1fs",
                what, exc, meanwhile, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
