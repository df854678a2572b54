"""Sliding event-time windows kept as per-minute cells, per (data mode, dimension, key)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from streams.detectors.watchlist import Watchlist

Cell = TypeVar("Cell")
WindowKey = tuple[str, str, str]
"""(data mode, dimension, key)"""


class MinuteWindows(Generic[Cell]):
    """Per key, one ``Cell`` per event-time minute of the last ``minutes`` minutes.

    ``keys`` holds the keys to evaluate next: those a new call touched, and those watched.
    """

    def __init__(self, minutes: int, new_cell: Callable[[], Cell]) -> None:
        self.minutes = minutes
        self._new_cell = new_cell
        self._cells: dict[WindowKey, dict[int, Cell]] = {}
        self.keys: Watchlist[WindowKey] = Watchlist()

    def cell(self, key: WindowKey, minute: int) -> Cell:
        """The cell of ``key`` for an event-time minute (epoch minutes)."""
        cells = self._cells.get(key)
        if cells is None:
            cells = self._cells[key] = {}
        found = cells.get(minute)
        if found is None:
            found = cells[minute] = self._new_cell()
        self.keys.touch(key)
        return found

    def window(self, key: WindowKey, now: float) -> Iterator[Cell]:
        """The cells of the last ``minutes`` minutes up to ``now``; older ones are dropped."""
        cells = self._cells.get(key)
        if not cells:
            return iter(())
        oldest = int(now // 60) - self.minutes
        if min(cells) <= oldest:
            for minute in [m for m in cells if m <= oldest]:
                del cells[minute]
            if not cells:
                del self._cells[key]
                return iter(())
        return (cell for minute, cell in cells.items() if minute <= now // 60)

    def due(self, now_of: dict[str, float]) -> list[tuple[WindowKey, float]]:
        """The keys to evaluate (see :meth:`Watchlist.due`), with their data mode's clock."""
        return [(key, now_of[key[0]]) for key in self.keys.due() if key[0] in now_of]
