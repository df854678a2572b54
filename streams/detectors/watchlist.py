"""Which keys a detector evaluates at its next check: those that changed, and those it watches."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")


class Watchlist(Generic[K]):
    """Keys ``touch``-ed by new calls since the last :meth:`due`, and keys ``watch``-ed by the detector.

    A detector watches a key while its finding holds (an open incident), so it is evaluated again as
    event time moves on, until it resolves, even if no call touches it.
    """

    def __init__(self) -> None:
        self._touched: set[K] = set()
        self._watched: set[K] = set()
        self._was_watched: set[K] = set()

    def touch(self, key: K) -> None:
        self._touched.add(key)

    def watch(self, key: K) -> None:
        self._watched.add(key)

    def is_pending(self, key: K) -> bool:
        """Whether ``key`` is due at the next check."""
        return key in self._touched or key in self._watched

    def is_watched(self, key: K) -> bool:
        """Whether ``key`` was watched before the last :meth:`due` (an incident may be open)."""
        return key in self._was_watched

    def due(self) -> set[K]:
        """The keys to evaluate now; both sets start empty again."""
        keys = self._touched | self._watched
        self._was_watched = self._watched
        self._touched, self._watched = set(), set()
        return keys
