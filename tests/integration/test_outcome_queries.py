"""Outcomes join the requests that reached them: cost and tokens per outcome, to the exact amount (chDB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from schemas.call_event import CallEvent
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.report import example_query
from sinks.sink import ClickHouseSink
from streams.ingest import RawEvent
from streams.outcomes import OutcomeIngestor
from tests.demo_calls import priced

pytestmark = pytest.mark.integration


def test_cost_and_tokens_per_outcome_come_from_the_traces_and_sessions_that_reached_it(
    chdb_dsn: str, ch: Client, database: str
) -> None:
    migrate(ch, database)
    now = datetime.now(UTC) - timedelta(hours=1)

    def call(n: int, feature: str, version: str, tokens: int, **join: str) -> CallEvent:
        return CallEvent.model_validate({"event_id": f"c{n}", "ts": now, "provider": "openai", "model": "gpt-4o",
                                         "feature": feature, "prompt_version": version, "input_tokens": tokens,
                                         "output_tokens": 0, **join})  # fmt: skip

    calls = [
        call(1, "sales.email_draft", "v1", 4000, trace_id="t1"),
        call(2, "sales.email_draft", "v1", 2000, trace_id="t1"),
        call(3, "sales.email_draft", "v2", 8000, trace_id="t2"),
        call(4, "support.reply", "v7", 1000, session_id="s1"), call(5, "support.reply", "v7", 1000, session_id="s1"),
        call(6, "sales.email_draft", "v1", 9999, trace_id="t3"),  # a request that reached no outcome
    ]  # fmt: skip
    outcomes = [
        {"event_id": "o1", "ts": now.isoformat(), "outcome": "meeting_booked", "trace_id": "t1"},
        {"event_id": "o2", "ts": now.isoformat(), "outcome": "meeting_booked", "trace_id": "t2"},
        {"event_id": "o3", "ts": now.isoformat(), "outcome": "ticket_closed", "session_id": "s1"},
    ]
    rows = OutcomeIngestor("llm.outcomes", 64 * 1024).process(
        RawEvent(orjson.dumps(o), 0, n) for n, o in enumerate(outcomes)
    )
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    sink.add(priced(calls).calls, [], rows.rows)
    sink.flush()
    ch.database = database

    per_outcome = {r[0]: r[1:] for r in ch.query(example_query("cost per outcome from the requests")).result_rows}
    per_version = {(r[0], r[1]): r[2:] for r in ch.query(example_query("tokens per successful outcome")).result_rows}

    # gpt-4o input at $2.50 per million: t1 6,000 tokens, t2 8,000, s1 2,000
    assert per_outcome["meeting_booked"] == (2, 0.035, 0.0175)
    assert per_outcome["ticket_closed"] == (1, 0.005, 0.005)
    assert per_version == {
        ("sales.email_draft", "v1"): (1, 6000, 6000),
        ("sales.email_draft", "v2"): (1, 8000, 8000),
        ("support.reply", "v7"): (1, 2000, 2000),
    }
