"""The sink's insert journal: what makes an interrupted insert complete exactly once, views included.

One INSERT into ``llm_calls`` feeds every rollup through materialized views, and ClickHouse writes
the table and each view one after the other: a crash in between (a killed embedded worker, a
server restart) can leave a batch in ``llm_calls`` but not in some rollup. ClickHouse's remedy is
to retry the *same* insert with the same ``insert_deduplication_token``: the parts already written
are recognised and skipped, table by table and view by view, and the missing ones are written.

So before inserting, the sink writes the batch (its Arrow block, see ``sinks.call_block``) to a file
here, named by its token; after ClickHouse confirmed it, the file is removed. A sink that finds files
left by a previous process replays them, with their tokens, before it writes anything new.

A file is written whole or not at all (written aside, then renamed), and not synced to disk: it
outlives a killed process, in the page cache, as ClickHouse's own parts do (ClickHouse does not sync
inserts either unless told to). Syncing took more than half as long as the insert it protects.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from sinks import call_block

logger = logging.getLogger(__name__)

SUFFIX = ".arrow"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    token: str
    block: bytes
    """The rows as the Arrow block that is inserted (and inserted again, unchanged, after a crash; in this
    version's layout, when the version before a column was added left it)."""
    rows: list[tuple[Any, ...]]
    columns: pa.Table
    """The rows as Arrow columns (what ``block`` holds)."""
    path: Path | None


class InsertJournal:
    """Batches on their way into ``llm_calls``; ``directory`` None keeps them in memory only."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def record(self, rows: list[tuple[Any, ...]], columns: pa.Table) -> JournalEntry:
        """Keep a batch: its rows, and the same rows as Arrow columns (``call_block.table``)."""
        token = uuid.uuid4().hex
        block = call_block.encode(columns)
        if self._directory is None:
            return JournalEntry(token, block, rows, columns, None)
        path = self._directory / f"{token}{SUFFIX}"
        partial = path.with_suffix(".partial")
        partial.write_bytes(block)
        partial.rename(path)  # a batch file is whole or absent
        return JournalEntry(token, block, rows, columns, path)

    def done(self, entry: JournalEntry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def leftovers(self) -> list[JournalEntry]:
        """Batches a previous process recorded but did not see confirmed, oldest first.

        A file that cannot be read (cut short by a machine that lost power) is set aside with a
        ``.unreadable`` suffix and named in the log. Its calls were never acknowledged to Kafka, so they
        are delivered again; those that had reached ``llm_calls`` are skipped as stored, and a rollup
        the interrupted insert had not reached misses them.
        """
        if self._directory is None:
            return []
        entries = []
        for path in sorted(self._directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
            block = path.read_bytes()
            try:
                columns = call_block.read(block)
                rows = call_block.rows(columns)
                if not call_block.is_current(block):  # left by the version before a column was added
                    block = call_block.encode(columns)  # the token still tells ClickHouse what it holds
            except Exception as exc:
                kept = path.with_suffix(".unreadable")
                path.rename(kept)
                logger.error(
                    "journal file %s cannot be read (%s): set aside as %s. Its calls come again from Kafka, "
                    "but a rollup the interrupted insert had not reached may miss some of them: compare "
                    "count() in llm_calls with sum(calls) in rollup_minute for the minutes before the crash",
                    path.name,
                    exc,
                    kept.name,
                )
                continue
            entries.append(JournalEntry(path.stem, block, rows, columns, path))
        for partial in self._directory.glob("*.partial"):  # never inserted: its events are redelivered
            partial.unlink(missing_ok=True)
        return entries
