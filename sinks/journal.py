"""The sink's insert journal: what makes an interrupted insert complete exactly once, views included.

One INSERT into ``llm_calls`` feeds every rollup through materialized views, and ClickHouse writes
the table and each view one after the other: a crash in between (a killed embedded worker, a
server restart) can leave a batch in ``llm_calls`` but not in some rollup. ClickHouse's remedy is
to retry the *same* insert with the same ``insert_deduplication_token``: the parts already written
are recognised and skipped, table by table and view by view, and the missing ones are written.

So before inserting, the sink writes the batch and its token to a file here; after ClickHouse
confirmed it, the file is removed. A sink that finds files left by a previous process replays
them, with their tokens, before it writes anything new.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX = ".batch"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    token: str
    rows: list[tuple[Any, ...]]
    path: Path | None


class InsertJournal:
    """Batches on their way into ``llm_calls``; ``directory`` None keeps them in memory only."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def record(self, rows: list[tuple[Any, ...]]) -> JournalEntry:
        token = uuid.uuid4().hex
        if self._directory is None:
            return JournalEntry(token, rows, None)
        path = self._directory / f"{token}{SUFFIX}"
        partial = path.with_suffix(".partial")
        with partial.open("wb") as file:
            pickle.dump(rows, file, protocol=pickle.HIGHEST_PROTOCOL)
            file.flush()
            os.fsync(file.fileno())
        partial.rename(path)  # a batch file is whole or absent
        return JournalEntry(token, rows, path)

    def done(self, entry: JournalEntry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def leftovers(self) -> list[JournalEntry]:
        """Batches a previous process recorded but did not see confirmed, oldest first."""
        if self._directory is None:
            return []
        entries = []
        for path in sorted(self._directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
            with path.open("rb") as file:
                # the sink's own file, written above: not input from outside
                rows = pickle.load(file)
            entries.append(JournalEntry(path.stem, rows, path))
        for partial in self._directory.glob("*.partial"):  # never inserted: its events are redelivered
            partial.unlink(missing_ok=True)
        return entries
