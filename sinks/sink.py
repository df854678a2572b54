"""The ClickHouse sink: ``add()`` buffers priced calls and rejections, ``flush()`` writes one batch.

A call is counted once in ``llm_calls`` and in every rollup even when Kafka delivers it twice
(a producer retry, a worker redelivery after a crash, a client that sends it again with another
``ts``): before inserting, the sink drops event_ids already in ``llm_calls`` and repeated ones
within the batch, so the materialized views never see a duplicate row: the first copy stored
wins. The caller acknowledges the Kafka offsets of a batch only after ``flush()`` returned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from sinks import call_block
from sinks.batch import ALERT_COLUMNS, LLM_CALL_COLUMNS, OUTCOME_COLUMNS, REJECTED_COLUMNS, CallRows, Rejection
from sinks.clickhouse import classify
from sinks.journal import InsertJournal, JournalEntry

logger = logging.getLogger(__name__)

# The duplicate check sends a batch's ids in one literal (about 40 bytes per id): room for the
# largest batch the settings allow (1,000,000 events). Set once per connection, not per query: chDB
# applies a per-query setting with a read of system.settings and two SETs, about 8 ms each time.
_MAX_QUERY_BYTES = 1 << 27

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FlushResult:
    inserted: int
    duplicates: int
    rejected: int
    outcomes: int = 0


@dataclass(frozen=True, slots=True)
class StoredCalls:
    """Calls a flush stored in ``llm_calls``: as rows, and as the Arrow columns that were inserted."""

    rows: list[tuple[Any, ...]]
    columns: pa.Table


class ClickHouseSink:
    """Writes priced calls to ``llm_calls`` and rejections to ``rejected_events``.

    An insert into ``llm_calls`` is retried, after a failure or a crash, as the very same insert
    with the same deduplication token (see ``sinks.journal``), so each rollup gets it exactly once.

    Args:
        client_factory: makes a clickhouse-connect client; called lazily, and again after a failure.
        database: the database holding the tables of ``sql/``.
        journal_dir: where batches wait until ClickHouse confirmed them (None: memory only, no
            recovery after a crash).
    """

    def __init__(self, client_factory: Callable[[], Client], database: str, journal_dir: Path | None = None) -> None:
        self._client_factory = client_factory
        self._database = database
        self._client: Client | None = None
        self._journal = InsertJournal(journal_dir)
        self._recovered = False
        self._in_flight: tuple[JournalEntry, int] | None = None  # an insert to repeat as is, its duplicates
        self._calls = CallRows()
        self._call_columns: list[pa.Table] = []
        """The buffered calls as Arrow columns, one table per :meth:`add`."""
        self._rejected: list[Rejection] = []
        self._outcomes: list[tuple[Any, ...]] = []
        self._alerts: list[tuple[Any, ...]] = []
        self._stored: list[JournalEntry] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return len(self._calls) + len(self._rejected) + len(self._outcomes) + len(self._alerts)

    def add(
        self,
        calls: CallRows,
        rejected: list[Rejection],
        outcomes: list[tuple[Any, ...]] | None = None,
        alerts: list[tuple[Any, ...]] | None = None,
    ) -> None:
        """Buffer rows for the next :meth:`flush` (rows of :data:`OUTCOME_COLUMNS`, :data:`ALERT_COLUMNS`).

        The calls' Arrow columns are taken as the caller built them (``CallRows.columns``, the ingestor
        does) or built here, on the caller's thread, never in :meth:`flush`: that is the part of an
        insert that runs Python code per value. What is left of a flush run in a worker thread is
        mostly ClickHouse's work, done without the GIL, so it overlaps the caller's next batch
        instead of competing with it.
        """
        columns = None
        if len(calls):
            columns = calls.columns if calls.columns is not None else call_block.table(calls.rows)
        with self._lock:
            self._calls.extend(calls)
            if columns is not None:
                self._call_columns.append(columns)
            self._rejected.extend(rejected)
            self._outcomes.extend(outcomes or ())
            self._alerts.extend(alerts or ())

    def flush(self) -> FlushResult:
        """Write the buffered rows; on failure keep them buffered for the next try.

        Raises:
            ClickHouseTransientError: retry later (the rows stay buffered).
            ClickHouseTerminalError: retrying alone will not help; the message says what to do.
        """
        with self._lock:
            try:
                client = self._connected()
                result = self._write(client)
            except Exception as exc:
                self._client = None  # reconnect on the next try
                raise classify("insert", exc) from exc
            self._calls = CallRows()
            self._call_columns = []
            self._rejected = []
            self._outcomes = []
            self._alerts = []
            return result

    def take_stored(self) -> StoredCalls:
        """The calls stored since the last call (duplicates left out), rows and columns: what the detectors see.

        Kept apart from :meth:`flush`: any agent's flush writes every buffered row, so another
        agent's flush may store the calls the ingest agent added; they wait here for it.
        """
        with self._lock:
            stored, self._stored = self._stored, []
        return StoredCalls(
            [row for entry in stored for row in entry.rows],
            pa.concat_tables([entry.columns for entry in stored]) if stored else call_block.table([]),
        )

    def reader(self) -> ClickHouseSink:
        """A sink of its own connection for long reads (a detector warm-up), so they never hold up this one's writes."""
        return ClickHouseSink(self._client_factory, self._database)

    def read(self, query: Callable[[Client, str], T]) -> T:
        """Run ``query(client, database)`` on the sink's connection (the detectors' warm-up reads this way)."""
        with self._lock:
            try:
                return query(self._connected(), self._database)
            except Exception:
                self._client = None
                raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connected(self) -> Client:
        if self._client is None:
            client = self._client_factory()
            client.set_client_setting("max_query_size", str(_MAX_QUERY_BYTES))
            self._client = client
        return self._client

    def _write(self, client: Client) -> FlushResult:
        stored = self._stored
        if not self._recovered:
            for entry in self._journal.leftovers():
                logger.warning("completing a batch of %d calls interrupted by the previous run", len(entry.rows))
                self._insert_calls(client, entry)
                stored.append(entry)
            self._recovered = True
        calls = self._calls
        inserted = duplicates = 0
        if self._in_flight is None and len(calls):
            fresh = self._new_positions(client, calls)
            duplicates = len(calls) - len(fresh)
            if fresh:
                rows, columns = calls.rows, pa.concat_tables(self._call_columns)
                if duplicates:
                    rows, columns = calls.select(fresh).rows, columns.take(fresh)
                self._in_flight = (self._journal.record(rows, columns), duplicates)
        if self._in_flight is not None:
            entry, duplicates = self._in_flight
            self._insert_calls(client, entry)
            inserted = len(entry.rows)
            stored.append(entry)
            self._in_flight = None
        if self._rejected:
            client.insert(
                f"`{self._database}`.rejected_events",
                [r.row() for r in self._rejected],
                column_names=list(REJECTED_COLUMNS),
            )
        if self._outcomes:
            client.insert(f"`{self._database}`.outcomes", self._outcomes, column_names=list(OUTCOME_COLUMNS))
        alerts = self._new_alerts(client)
        if alerts:
            client.insert(f"`{self._database}`.alerts", alerts, column_names=list(ALERT_COLUMNS))
        return FlushResult(
            inserted=inserted,
            duplicates=duplicates,
            rejected=len(self._rejected),
            outcomes=len(self._outcomes),
        )

    def _new_alerts(self, client: Client) -> list[tuple[Any, ...]]:
        """Alerts not stored yet: one raised again (a restarted worker) must not reset its delivery state."""
        if not self._alerts:
            return []
        stored = client.query(
            f"SELECT alert_id FROM `{self._database}`.alerts WHERE alert_id IN %(ids)s",
            parameters={"ids": [row[0] for row in self._alerts]},
        ).result_rows
        known = {row[0] for row in stored}
        return [row for row in self._alerts if row[0] not in known]

    def _insert_calls(self, client: Client, entry: JournalEntry) -> None:
        if entry.rows:
            client.raw_insert(
                f"`{self._database}`.llm_calls",
                list(LLM_CALL_COLUMNS),
                entry.block,
                settings={
                    "insert_deduplicate": 1,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    "insert_deduplication_token": entry.token,
                    # The block is already merged as the tables' engines would merge it: its event_ids
                    # are unique, and each view groups by its table's sorting key. Merging it again at
                    # insert took a quarter of the insert's time (in chDB, all views).
                    "optimize_on_insert": 0,
                },
                fmt="Arrow",
            )
        self._journal.done(entry)

    def _new_positions(self, client: Client, calls: CallRows) -> list[int]:
        """Positions of the first occurrence of each event_id not yet stored in ``llm_calls``.

        An event_id is counted once whatever its ``ts`` says (a client may stamp a retry anew): the
        first copy stored wins, and a later one, in this batch or any other, is a duplicate. The
        stored ids are looked up in ``event_ids``, which a view fills from ``llm_calls`` sorted by a
        hash of the id: the lookup reads the granules holding the batch's hashes, not the table, and
        the ids it returns are compared here in full (two ids may share a hash). The ids travel as
        one string literal split on the server: ClickHouse parses it far faster than a list of
        10,000 literals, and the client sends it unprocessed (``raw_query``).
        """
        ids = calls.event_ids()
        batch_ids = f"arrayJoin(splitByChar('\\x1F', {_id_list_literal(list(set(ids)))}))"
        query = f"SELECT event_id FROM `{self._database}`.event_ids PREWHERE id_hash IN (SELECT sipHash64({batch_ids}))"
        body = client.raw_query(query, fmt="JSONCompactColumns")
        stored = orjson.loads(body) if body.strip() else []
        seen: set[str] = set(stored[0]) if stored else set()
        fresh = []
        for position, event_id in enumerate(ids):
            if event_id not in seen:
                seen.add(event_id)
                fresh.append(position)
        return fresh


def _id_list_literal(ids: list[str]) -> str:
    """A ClickHouse string literal of ``ids`` joined by the unit separator, which no valid id contains."""
    joined = "\x1f".join(ids).replace("\\", "\\\\").replace("'", "\\'").replace("\x1f", "\\x1F")
    return f"'{joined}'"
