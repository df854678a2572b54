from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from schemas import CallEvent
from schemas.outcome_event import OutcomeEvent
from sinks import call_block
from sinks.batch import CallRows, Rejection, outcome_row
from sinks.clickhouse import connect
from sinks.exceptions import ClickHouseTransientError
from sinks.journal import SUFFIX
from sinks.migrations import discover, migrate
from sinks.sink import ClickHouseSink

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)


def rows(*ids: str, cost: float = 0.5, shift: timedelta = timedelta(0)) -> CallRows:
    """Calls with these ids, a minute or two apart; ``shift`` moves their ts (a client that re-stamps)."""
    batch = CallRows()
    for n, event_id in enumerate(ids):
        event = CallEvent(
            event_id=event_id, ts=NOW - timedelta(minutes=n % 3) + shift, provider="openai", model="gpt-4o",
            feature="sales.email_draft", trace_id="t1", user_id="u1", latency_ms=100.0 + n,
        )  # fmt: skip
        batch.append(event, cost_usd=cost, price_source="test", unit_prices=(1, 2, 1, 1), partition=0, offset=n)
    return batch


@pytest.fixture
def sink(chdb_dsn: str, ch: Client, database: str) -> ClickHouseSink:
    migrate(ch, database)
    return ClickHouseSink(lambda: connect(chdb_dsn), database)


def totals(ch: Client, database: str) -> dict[str, float]:
    def one(query: str) -> float:
        return float(ch.query(query.format(db=database)).result_rows[0][0])

    return {
        "llm_calls": one("SELECT count() FROM {db}.llm_calls FINAL"),
        "minute": one("SELECT sum(calls) FROM {db}.rollup_minute WHERE dimension = 'all'"),
        "hour": one("SELECT sum(calls) FROM {db}.rollup_hour WHERE dimension = 'feature'"),
        "day_cost": one("SELECT sum(cost_usd) FROM {db}.rollup_day WHERE dimension = 'user_id'"),
        "trace": one("SELECT sum(calls) FROM {db}.trace_rollup WHERE trace_id = 't1'"),
    }


def test_a_redelivered_event_is_counted_once_in_the_table_and_every_rollup(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    sink.add(rows("a", "b", "c", "a"), [])  # a duplicate inside one batch
    assert sink.flush().inserted == 3
    sink.add(rows("b", "c", "d"), [])  # redelivered after a crash, plus one new
    result = sink.flush()
    assert (result.inserted, result.duplicates) == (1, 2)
    assert totals(ch, database) == {"llm_calls": 4, "minute": 4, "hour": 4, "day_cost": 2.0, "trace": 4}


def stored_times(ch: Client, database: str) -> dict[str, datetime]:
    rows = ch.query(f"SELECT event_id, ts FROM {database}.llm_calls FINAL").result_rows
    return {event_id: ts.replace(tzinfo=UTC) for event_id, ts in rows}


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (timedelta(0), timedelta(hours=2)),
        (timedelta(0), timedelta(hours=-2)),
        (timedelta(days=-30), timedelta(0)),  # a ts more than a day ahead is refused: the later copy is now
        (timedelta(0), timedelta(days=-30)),
    ],
)
def test_an_event_id_sent_again_with_another_ts_is_counted_once(
    sink: ClickHouseSink, ch: Client, database: str, first: timedelta, again: timedelta
) -> None:
    sink.add(rows("a", "b", shift=first), [])
    sink.flush()
    sink.add(rows("a", "b", "c", shift=again), [])  # a client that re-stamps its retries
    result = sink.flush()
    assert (result.inserted, result.duplicates) == (1, 2)
    assert totals(ch, database) == {"llm_calls": 3, "minute": 3, "hour": 3, "day_cost": 1.5, "trace": 3}
    assert stored_times(ch, database) == {  # the first copy stored wins
        "a": NOW + first,
        "b": NOW - timedelta(minutes=1) + first,
        "c": NOW - timedelta(minutes=2) + again,
    }


def test_an_event_id_twice_in_one_batch_with_another_ts_is_counted_once(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    batch = rows("a", "b")
    batch.extend(rows("a", "b", shift=timedelta(hours=2)))
    batch.extend(rows("a", shift=timedelta(days=-30)))
    sink.add(batch, [])
    result = sink.flush()
    assert (result.inserted, result.duplicates) == (2, 3)
    assert totals(ch, database) == {"llm_calls": 2, "minute": 2, "hour": 2, "day_cost": 1.0, "trace": 2}
    assert stored_times(ch, database) == {"a": NOW, "b": NOW - timedelta(minutes=1)}  # the first in the batch wins


@pytest.mark.parametrize("upgraded_from", [13, 15])  # before call_ids (0013), before event_ids (0015)
def test_calls_stored_before_an_upgrade_of_the_duplicate_check_are_still_recognised(
    chdb_dsn: str, ch: Client, database: str, tmp_path: Path, upgraded_from: int
) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for migration in discover():
        if migration.version < upgraded_from:
            (before / migration.name).write_text(migration.text)
    migrate(ch, database, before)
    ch.command(
        f"INSERT INTO {database}.llm_calls (event_id, ts, provider, model, kind, feature, data_mode, priced) VALUES "
        f"('a', toDateTime64('{NOW:%Y-%m-%d %H:%M:%S}', 3, 'UTC'), 'openai', 'gpt-4o', 'llm', 'f', 'real', 1), "
        f"('b', toDateTime64('{NOW - timedelta(minutes=1):%Y-%m-%d %H:%M:%S}', 3, 'UTC'), 'openai', 'gpt-4o', 'llm', "
        "'f', 'real', 1)"
    )
    migrate(ch, database)  # the table the check reads is filled from the calls already stored

    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    sink.add(rows("a", "b", "c", shift=timedelta(hours=3)), [])  # a and b delivered again, re-stamped
    result = sink.flush()
    assert (result.inserted, result.duplicates) == (1, 2)
    assert ch.query(f"SELECT count() FROM {database}.llm_calls FINAL").result_rows[0][0] == 3
    assert ch.query(f"SELECT sum(calls) FROM {database}.rollup_minute WHERE dimension = 'all'").result_rows[0][0] == 3


def test_a_full_batch_redelivered_is_recognised_whole(sink: ClickHouseSink, ch: Client, database: str) -> None:
    # 10,000 ids are a 370 KB literal in the duplicate check: more than ClickHouse parses by default
    ids = [f"event-{n:05d}-{'x' * 24}" for n in range(10_000)]
    sink.add(rows(*ids), [])
    assert sink.flush().inserted == 10_000
    sink.add(rows(*ids[5_000:], "one-more"), [])
    result = sink.flush()
    assert (result.inserted, result.duplicates) == (1, 5_000)
    assert totals(ch, database)["llm_calls"] == totals(ch, database)["minute"] == 10_001


def test_a_clickhouse_failure_keeps_the_batch_until_it_is_written(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    sink.add(rows("a"), [])
    sink.flush()
    # A real ClickHouse failure: refuse inserts with TOO_MANY_PARTS, as an overloaded server does.
    ch.command(f"ALTER TABLE {database}.llm_calls MODIFY SETTING parts_to_throw_insert = 1")
    sink.add(rows("x", "y"), [])
    with pytest.raises(ClickHouseTransientError, match="TOO_MANY_PARTS"):
        sink.flush()
    assert sink.pending == 2
    ch.command(f"ALTER TABLE {database}.llm_calls MODIFY SETTING parts_to_throw_insert = 3000")
    assert sink.flush().inserted == 2
    assert totals(ch, database)["minute"] == 3


def fail_views_while_flagged(ch: Client, database: str) -> None:
    """A view that fails while the table ``flag`` has a row: ClickHouse fails half way through an insert."""
    ch.command(f"CREATE TABLE {database}.flag (x UInt8) ENGINE = MergeTree ORDER BY x")
    ch.command(f"CREATE TABLE {database}.audit (n UInt64) ENGINE = MergeTree ORDER BY n")
    ch.command(
        f"CREATE MATERIALIZED VIEW {database}.aa_audit_mv TO {database}.audit AS "
        f"SELECT count() + throwIf((SELECT count() FROM {database}.flag) > 0) AS n FROM {database}.llm_calls"
    )
    ch.command(f"INSERT INTO {database}.flag VALUES (1)")


def test_an_insert_that_failed_half_way_is_completed_exactly_once(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    fail_views_while_flagged(ch, database)
    sink.add(rows("a", "b", "c"), [])
    with pytest.raises(Exception, match="throwIf"):
        sink.flush()
    assert ch.query(f"SELECT count() FROM {database}.llm_calls").result_rows[0][0] == 3  # written, views not all

    ch.command(f"TRUNCATE TABLE {database}.flag")
    result = sink.flush()

    assert (result.inserted, result.duplicates) == (3, 0)
    assert totals(ch, database) == {"llm_calls": 3, "minute": 3, "hour": 3, "day_cost": 1.5, "trace": 3}


def test_a_batch_interrupted_by_a_crash_is_completed_by_the_next_process(
    chdb_dsn: str, ch: Client, database: str, tmp_path: Path
) -> None:
    migrate(ch, database)
    fail_views_while_flagged(ch, database)
    crashed = ClickHouseSink(lambda: connect(chdb_dsn), database, journal_dir=tmp_path / "journal")
    crashed.add(rows("a", "b", "c"), [])
    with pytest.raises(Exception, match="throwIf"):
        crashed.flush()
    assert list((tmp_path / "journal").iterdir())  # the batch waits on disk; this process is gone
    ch.command(f"TRUNCATE TABLE {database}.flag")

    restarted = ClickHouseSink(lambda: connect(chdb_dsn), database, journal_dir=tmp_path / "journal")
    restarted.add(rows("a", "b", "c", "d"), [])  # Kafka redelivers the unacknowledged events, and one more
    result = restarted.flush()

    assert (result.inserted, result.duplicates) == (1, 3)
    assert totals(ch, database) == {"llm_calls": 4, "minute": 4, "hour": 4, "day_cost": 2.0, "trace": 4}
    assert list((tmp_path / "journal").iterdir()) == []


def test_calls_written_by_another_agents_flush_still_reach_the_detectors(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    sink.add(rows("a", "b"), [])  # the ingest agent's batch ...
    outcome = outcome_row(OutcomeEvent(event_id="o1", ts=NOW, outcome="resolved", trace_id="t1"), 0, 0)
    sink.add(CallRows(), [], outcomes=[outcome])  # ... and an outcome the outcomes agent flushes first
    assert sink.flush().outcomes == 1
    assert sink.flush().inserted == 0  # the ingest agent's own flush finds nothing left to write

    stored = sink.take_stored()

    assert sorted(row[0] for row in stored.rows) == ["a", "b"]
    assert stored.columns.column("event_id").to_pylist() == [row[0] for row in stored.rows]
    assert sink.take_stored().rows == []
    sink.add(rows("a", "b", "c"), [])  # redelivered with one more
    sink.flush()
    assert [row[0] for row in sink.take_stored().rows] == ["c"]
    assert totals(ch, database)["llm_calls"] == 3


def rejection(raw: bytes, offset: int = 7, **fields: object) -> Rejection:
    values: dict[str, Any] = {
        "topic": "llm.calls", "partition": 0, "offset": offset, "received_at": NOW, "error_kind": "malformed_json",
        "reason": "invalid JSON", "event_id": "", "raw": raw, **fields,
    }  # fmt: skip
    return Rejection(**values)


def test_rejections_at_the_same_position_are_kept_unless_they_are_the_same_record(
    sink: ClickHouseSink, ch: Client, database: str
) -> None:
    sink.add(CallRows(), [rejection(b"{broken"), rejection(b"{other", offset=8)])
    sink.flush()
    # the worker crashed before acknowledging: the same records come again, one of them at once
    sink.add(CallRows(), [rejection(b"{broken", received_at=NOW + timedelta(seconds=5))])
    sink.flush()
    # the embedded broker restarted with its offsets at 0 again: another record at the same position
    sink.add(CallRows(), [rejection(b"{not the same"), rejection(b"{other", offset=8)])
    sink.flush()
    ch.command(f"OPTIMIZE TABLE {database}.rejected_events FINAL")  # merge as ClickHouse eventually would
    stored = ch.query(f"SELECT offset, raw FROM {database}.rejected_events ORDER BY offset, raw").result_rows
    assert stored == [(7, "{broken"), (7, "{not the same"), (8, "{other")]


def test_a_rejected_record_is_kept_up_to_a_bound_with_its_size(sink: ClickHouseSink, ch: Client, database: str) -> None:
    big = b'{"event_id": "x", "pad": "' + b"y" * 2_000_000 + b'"}'
    sink.add(CallRows(), [rejection(big).cut(65_536), rejection(b"{short", offset=8).cut(65_536)])
    sink.flush()
    stored = ch.query(
        f"SELECT offset, length(raw), raw_size, startsWith(raw, '{{\"event_id\"') "
        f"FROM {database}.rejected_events FINAL ORDER BY offset"
    ).result_rows
    assert stored == [(7, 65_536, len(big), 1), (8, 6, 6, 0)]


def test_a_batch_left_by_the_version_before_args_hash_is_completed_after_the_upgrade(
    chdb_dsn: str, ch: Client, database: str, tmp_path: Path
) -> None:
    """A worker that crashed mid-insert, then was upgraded: its journal file lacks the newer columns."""
    migrate(ch, database)
    journal = tmp_path / "journal"
    journal.mkdir()
    before = call_block.table(rows("a", "b").rows).drop_columns(["args_hash"])  # the layout up to 0017
    sink_file = pa.BufferOutputStream()
    with pa.ipc.new_file(sink_file, before.schema) as writer:
        writer.write_table(before)
    (journal / f"{'0' * 32}{SUFFIX}").write_bytes(sink_file.getvalue().to_pybytes())

    upgraded = ClickHouseSink(lambda: connect(chdb_dsn), database, journal_dir=journal)
    upgraded.add(rows("a", "b", "c"), [])  # Kafka redelivers the unacknowledged events, and one more
    result = upgraded.flush()

    assert (result.inserted, result.duplicates) == (1, 2)
    assert totals(ch, database) == {"llm_calls": 3, "minute": 3, "hour": 3, "day_cost": 1.5, "trace": 3}
    stored = ch.query(f"SELECT event_id, args_hash FROM {database}.llm_calls FINAL ORDER BY event_id").result_rows
    assert stored == [("a", ""), ("b", ""), ("c", "")]
    assert list(journal.iterdir()) == []
    seen = upgraded.take_stored()  # what the detectors are given: the current layout, every call
    assert seen.columns.schema == call_block.SCHEMA and seen.columns.column("args_hash").to_pylist() == ["", "", ""]
    assert [len(row) for row in seen.rows] == [len(call_block.SCHEMA)] * 3
