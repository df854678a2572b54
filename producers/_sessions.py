"""What the tracker remembers per session (or request): kept while the session is active, forgotten when idle.

A session is over when it has been quiet for ``idle_seconds`` (30 minutes, as the stream's detectors
say); the least recently used sessions past ``max_keys`` are forgotten too, so a long-running
process holds a bounded amount whatever its traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

IDLE_SECONDS = 30 * 60.0
MAX_KEYS = 100_000


class IdleMap(Generic[K, V]):
    """A mapping whose entries are made on first use and dropped after ``idle_seconds`` untouched."""

    def __init__(self, factory: Callable[[], V], idle_seconds: float = IDLE_SECONDS, max_keys: int = MAX_KEYS) -> None:
        self._factory = factory
        self._idle = idle_seconds
        self._max = max_keys
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._next_sweep = 0.0

    def touch(self, key: K, now: float) -> V:
        """The entry of ``key`` (a new one if it had none or it went idle), marked used at ``now``."""
        entries = self._entries
        found = entries.get(key)
        if found is not None and now - found[0] <= self._idle:
            value = found[1]
            entries.move_to_end(key)
        else:
            value = self._factory()
        entries[key] = (now, value)
        if now >= self._next_sweep or len(entries) > self._max:
            self._sweep(now)
        return value

    def _sweep(self, now: float) -> None:
        """Forget the idle entries, oldest first (at most once a second), and the oldest past ``max_keys``."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if now - entries[oldest][0] <= self._idle and len(entries) <= self._max:
                break
            del entries[oldest]
        self._next_sweep = now + 1.0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)
