from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from schemas import CallEvent
from sinks.batch import CallRows
from sinks.clickhouse import connect
from sinks.exceptions import ClickHouseTransientError
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)


def rows(*ids: str, cost: float = 0.5) -> CallRows:
    batch = CallRows()
    for n, event_id in enumerate(ids):
        event = CallEvent(
            event_id=event_id, ts=NOW - timedelta(minutes=n % 3), provider="openai", model="gpt-4o",
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
