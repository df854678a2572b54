from __future__ import annotations

import logging

import orjson
import pytest

from sinks.batch import LLM_CALL_COLUMNS
from streams.ingest import Ingestor, IngestResult, RawEvent
from streams.pricing import Pricer


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {
        "event_id": "e1",
        "ts": "2026-11-01T10:00:00Z",
        "provider": "openai",
        "model": "gpt-4o",
    }
    base.update(fields)
    return orjson.dumps(base)


def test_prices_good_events_and_rejects_bad_ones_with_reasons() -> None:
    ingestor = Ingestor(Pricer(), "llm.calls", max_event_bytes=2048)
    records = [
        RawEvent(raw(input_tokens=1_000_000), 0, 1),
        RawEvent(b"{not json", 0, 2),
        RawEvent(raw(event_id="e3", input_tokens=-5), 1, 3),
        RawEvent(raw(event_id="e4", feature="x" * 10) + b" " * 3000, 1, 4),
        RawEvent(None, 1, 5),
        RawEvent(raw(event_id="e6", model="no-such-model", provider="acme"), 1, 6),
        RawEvent(raw(event_id="e7", cost_usd=0.25, kind="tool", tool_name="web_search"), 1, 7),
    ]
    result = ingestor.process(records)
    rows = [dict(zip(LLM_CALL_COLUMNS, values, strict=True)) for values in result.calls.rows]
    assert [r["event_id"] for r in rows] == ["e1", "e6", "e7"]
    assert rows[0]["cost_usd"] == 2.5 and rows[0]["priced"] == 1 and rows[0]["input_price_per_mtok"] == 2.5
    assert rows[0]["feature"] == "unattributed"
    assert rows[1]["cost_usd"] is None and rows[1]["priced"] == 0
    assert rows[2]["cost_usd"] == 0.25 and rows[2]["price_source"] == "stated by caller"
    [(where, calls)] = result.unpriced_calls.items()
    assert (where[:2], where[3], calls) == (("acme", "no-such-model"), "real", 1)
    rejected = {r.offset: r for r in result.rejected}
    assert rejected[2].error_kind == "malformed_json" and "Invalid JSON" in rejected[2].reason
    assert rejected[3].error_kind == "schema" and rejected[3].reason.startswith("input_tokens:")
    assert rejected[3].event_id == "e3" and rejected[3].raw == records[2].value
    assert rejected[4].error_kind == "oversize" and "over the limit of 2048" in rejected[4].reason
    assert rejected[5].reason.startswith("empty message")


def test_a_batch_processed_in_parts_combines_into_the_whole() -> None:
    ingestor = Ingestor(Pricer(), "llm.calls")
    records = [
        RawEvent(raw(event_id=f"e{n}", input_tokens=n, model="gpt-4o" if n % 3 else "no-such-model"), 0, n)
        for n in range(30)
    ]
    records[7] = RawEvent(b"{not json", 0, 7)
    whole = ingestor.process(records)
    combined = IngestResult.combined([ingestor.process(records[start : start + 8]) for start in range(0, 30, 8)])
    assert combined.calls.rows == whole.calls.rows and len(whole.calls) == 29
    assert combined.calls.columns is not None and combined.calls.columns.equals(whole.calls.columns)
    assert [r.offset for r in combined.rejected] == [7]
    assert combined.unpriced_calls == whole.unpriced_calls and sum(whole.unpriced_calls.values()) == 10


def test_a_padded_model_name_is_priced_as_the_stripped_one_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    ingestor = Ingestor(Pricer(), "llm.calls")
    with caplog.at_level(logging.WARNING):
        result = ingestor.process([RawEvent(raw(model=" gpt-4o ", provider="openai ", input_tokens=1_000_000), 0, 1)])
    [row] = [dict(zip(LLM_CALL_COLUMNS, values, strict=True)) for values in result.calls.rows]
    assert (row["provider"], row["model"], row["cost_usd"], row["priced"]) == ("openai", "gpt-4o", 2.5, 1)
    assert result.unpriced_calls == {}
    assert "no price known" not in caplog.text
