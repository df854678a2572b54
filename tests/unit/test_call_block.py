"""The Arrow block of ``llm_calls`` rows and the journal that keeps it until ClickHouse confirmed it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS
from sinks.journal import InsertJournal
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer


def rows_of(*events: bytes) -> list[tuple[object, ...]]:
    result = Ingestor(Pricer(), "llm.calls").process(RawEvent(raw, 0, n) for n, raw in enumerate(events))
    assert not result.rejected, result.rejected
    return result.calls.rows


TWO_CALLS = (
    b'{"event_id": "a", "ts": "2026-03-01T12:00:00.250+02:00", "provider": "openai", "model": "gpt-4o",'
    b' "input_tokens": 1000, "output_tokens": 20, "latency_ms": 812.5, "tags": {"tier": "gold", "region": "eu"}}',
    b'{"event_id": "b", "ts": 1772366400000, "provider": "house", "model": "unknown-7b", "kind": "tool",'
    b' "tool_name": "search", "status": "error", "error_type": "Timeout", "attempt": 2}',
)


def test_a_block_gives_back_the_rows_it_was_made_of() -> None:
    rows = rows_of(*TWO_CALLS)

    decoded = call_block.rows(call_block.read(call_block.encode(call_block.table(rows))))

    assert decoded == rows
    first = dict(zip(LLM_CALL_COLUMNS, decoded[0], strict=True))
    assert first["ts"] == datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC)
    assert first["tags"] == {"tier": "gold", "region": "eu"}
    second = dict(zip(LLM_CALL_COLUMNS, decoded[1], strict=True))
    assert (second["cost_usd"], second["priced"], second["latency_ms"]) == (None, 0, None)


def test_time_keeps_milliseconds_as_llm_calls_does() -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=-5)))
    row = list(rows_of(TWO_CALLS[0])[0])
    row[LLM_CALL_COLUMNS.index("ts")] = at

    (decoded,) = call_block.rows(call_block.read(call_block.encode(call_block.table([tuple(row)]))))

    assert decoded[LLM_CALL_COLUMNS.index("ts")] == datetime(2026, 3, 1, 17, 0, 0, 123_000, tzinfo=UTC)


def test_an_empty_batch_is_a_valid_block() -> None:
    assert call_block.rows(call_block.read(call_block.encode(call_block.table([])))) == []


def test_the_journal_replays_what_it_recorded_and_forgets_what_was_confirmed(tmp_path: Path) -> None:
    journal = InsertJournal(tmp_path)
    first, second = rows_of(TWO_CALLS[0]), rows_of(TWO_CALLS[1])
    kept = journal.record(first, call_block.table(first))
    confirmed = journal.record(second, call_block.table(second))
    journal.done(confirmed)

    (left,) = InsertJournal(tmp_path).leftovers()

    assert (left.token, left.block, left.rows) == (kept.token, kept.block, kept.rows)


def test_an_unreadable_journal_file_is_set_aside_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = InsertJournal(tmp_path)
    rows = rows_of(*TWO_CALLS)
    entry = journal.record(rows, call_block.table(rows))
    assert entry.path is not None
    entry.path.write_bytes(entry.block[: len(entry.block) // 2])  # cut short, as by a machine losing power

    assert InsertJournal(tmp_path).leftovers() == []

    assert [p.name for p in tmp_path.iterdir()] == [f"{entry.token}.unreadable"]
    assert f"{entry.token}.arrow cannot be read" in caplog.text


def encoded_as(table: pa.Table) -> bytes:
    """A block in the layout of ``table`` (another version's): what its journal left."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_block_of_the_layout_before_args_hash_reads_in_this_one_with_the_hash_empty() -> None:
    rows = rows_of(*TWO_CALLS)
    older = encoded_as(call_block.table(rows).drop_columns(["args_hash"]))

    assert not call_block.is_current(older)
    assert call_block.rows(call_block.read(older)) == rows  # their args_hash was empty: it reads as empty


def test_a_block_of_a_later_version_is_refused_saying_so() -> None:
    later = call_block.table(rows_of(*TWO_CALLS)).append_column("next_field", pa.array(["x", "y"]))
    with pytest.raises(ValueError, match=r"columns \['next_field'\], unknown to this version"):
        call_block.read(encoded_as(later))
    no_tokens = call_block.table(rows_of(*TWO_CALLS)).drop_columns(["input_tokens"])
    with pytest.raises(ValueError, match="without the column input_tokens"):
        call_block.read(encoded_as(no_tokens))
