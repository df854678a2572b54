"""The usage payload of hosted cost trackers (camelCase, often without ``ts``), read by the worker as a call event."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from producers import pseudonymize
from schemas.usage_payload import UsageCallEvent, model_for, status_of_http
from sinks.batch import LLM_CALL_COLUMNS
from streams.ingest import Ingestor, IngestResult, RawEvent
from streams.pricing import Pricer
from tests.unit.test_call_event_decoder import full_event

RECORD_MS = int(time.time() * 1000) - 60_000
"""The Kafka timestamp of the records below: a minute ago."""


def usage(**fields: Any) -> dict[str, Any]:
    """A usage payload as a hosted cost tracker's SDK sends it, with the provider and model it needs here."""
    payload: dict[str, Any] = {
        "externalRequestId": "req-1", "endpointTag": "sales.email_draft", "promptVersion": "v7",
        "userId": "acct_9f2c41", "inputTokens": 1_000_000, "outputTokens": 100_000, "latencyMs": 812,
        "status": "ok", "dataMode": "test", "environment": "production", "provider": "openai", "model": "gpt-4o",
    }  # fmt: skip
    for name, value in fields.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def ingest(*payloads: dict[str, Any] | bytes, timestamp: int | None = RECORD_MS, **options: Any) -> IngestResult:
    records = [
        RawEvent(p if isinstance(p, bytes) else orjson.dumps(p), 0, n, timestamp) for n, p in enumerate(payloads)
    ]
    return Ingestor(Pricer(), "llm.calls", **options).process(records)


def rows(result: IngestResult) -> list[dict[str, Any]]:
    return [dict(zip(LLM_CALL_COLUMNS, row, strict=True)) for row in result.calls.rows]


def reasons(result: IngestResult) -> list[str]:
    return [r.reason for r in sorted(result.rejected, key=lambda r: r.offset)]


def test_a_usage_payload_is_stored_in_the_contracts_terms_at_its_records_time() -> None:
    result = ingest(usage())
    assert reasons(result) == []
    [row] = rows(result)
    assert row["ts"] == datetime.fromtimestamp(RECORD_MS / 1000, UTC)
    assert (row["event_id"], row["feature"], row["prompt_version"], row["user_id"], row["tenant_id"]) == (
        "req-1", "sales.email_draft", "v7", "acct_9f2c41", "",
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"], row["latency_ms"]) == (1_000_000, 100_000, 812)
    assert (row["status"], row["data_mode"], row["environment"]) == ("success", "test", "prod")
    assert (row["cost_usd"], row["priced"]) == (pytest.approx(3.5), 1)  # $2.50 + $10 per million tokens
    assert result.calls.columns is not None and result.calls.columns.column("ts").to_pylist() == [row["ts"]]


def test_a_ts_it_sends_wins_over_the_records_time() -> None:
    [row] = rows(ingest(usage(ts="2026-11-01T10:00:00Z")))
    assert row["ts"] == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_user_id_as_tenant_id_stores_the_payloads_user_id_as_the_tenant() -> None:
    result = ingest(usage(), usage(externalRequestId="req-2", userId=None), user_id_as="tenant_id")
    assert [(row["tenant_id"], row["user_id"]) for row in rows(result)] == [("acct_9f2c41", ""), ("", "")]
    # a native event's user_id is never moved
    [native] = rows(ingest({**full_event(), "user_id": "u_1"}, user_id_as="tenant_id"))
    assert (native["user_id"], native["tenant_id"]) == ("u_1", "acme")


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        ("ok", "success"), ("Success", "success"), ("completed", "success"), ("failed", "error"),
        ("ERROR", "error"), ("timed_out", "timeout"), ("throttled", "rate_limited"), ("rate_limit", "rate_limited"),
        ("canceled", "cancelled"), ("aborted", "cancelled"), (200, "success"), (429, "rate_limited"),
        (504, "timeout"), (408, "timeout"), (499, "cancelled"), (500, "error"), (404, "error"),
    ],
)  # fmt: skip
def test_its_statuses_are_read_as_the_contracts(sent: object, status: str) -> None:
    [row] = rows(ingest(usage(status=sent)))
    assert row["status"] == status


def test_http_codes_that_say_nothing_of_an_outcome_are_not_mapped() -> None:
    assert [status_of_http(code) for code in (100, 302, 600)] == [None, None, None]
    result = ingest(usage(status=302), usage(status="exploded"), usage(status=True))
    assert [r.split(":")[0] for r in reasons(result)] == ["status"] * 3


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # camelCase and snake_case twins: which one counts would be a guess
        ({"event_id": "req-1b"}, "externalRequestId and event_id both given: send one"),
        ({"input_tokens": 5}, "inputTokens and input_tokens both given: send one"),
        ({"feature": "sales.other", "data_mode": "real"}, "endpointTag and feature both given: send one (endpointTag "
         "is read as feature); dataMode and data_mode both given"),
        # what cannot be priced, or counted once
        ({"externalRequestId": None}, "externalRequestId missing: the call's idempotency key"),
        ({"model": None}, "model missing: a call is priced and rolled up by its provider and model; add them"),
        ({"model": None, "provider": None}, "provider and model missing"),
        ({"model": None, "externalRequestId": None}, "externalRequestId missing: the call's idempotency key (a call "
         "sent twice is counted once); model missing"),
        # wrong types
        ({"inputTokens": "many"}, "inputTokens: Input should be a valid integer"),
        ({"inputTokens": True}, "inputTokens: a number, not true or false"),
        ({"latencyMs": "fast"}, "latencyMs: Input should be a valid number"),
        ({"userId": 42}, "userId: Input should be a valid string"),
        ({"endpointTag": ["sales"]}, "endpointTag: Input should be a valid string"),
        ({"dataMode": "live"}, "dataMode: Input should be 'real', 'test' or 'demo'"),
        # huge numbers
        ({"outputTokens": 10**30}, "outputTokens: Input should be less than or equal to 100000000"),
        ({"inputTokens": 1e300}, "inputTokens: a number far too large"),
        ({"latencyMs": 10**400}, "latencyMs: a number far too large"),
    ],
)  # fmt: skip
def test_what_a_usage_payload_cannot_hold_is_refused_with_a_reason_naming_its_fields(
    fields: dict[str, Any], reason: str
) -> None:
    sent = usage(**fields)
    result = ingest(json.dumps(sent).encode())  # orjson writes no integer over 64 bits
    [rejected] = result.rejected
    assert reason in rejected.reason and rejected.error_kind == "schema"
    assert rejected.event_id == sent.get("event_id", sent.get("externalRequestId", ""))


def test_user_id_as_tenant_refuses_a_payload_naming_a_tenant_twice() -> None:
    result = ingest(usage(tenant_id="acme"), usage(user_id="u_1"), user_id_as="tenant_id")
    assert reasons(result)[0].startswith("userId and tenant_id both given")
    assert reasons(result)[1:] == [] and rows(result)[0]["user_id"] == "u_1"


def test_without_ts_nor_a_record_timestamp_it_is_refused_saying_so() -> None:
    for timestamp in (None, -1):
        [reason] = reasons(ingest(usage(), timestamp=timestamp))
        assert reason == "ts missing, and the Kafka record has no timestamp: send ts (RFC 3339 or epoch ms)"
    assert reasons(ingest(usage(ts=None))) == []  # null is no ts: the record's
    # a native event is not given the record's time: its ts is required
    native = full_event()
    del native["ts"]
    assert reasons(ingest(native)) == ["ts: required field missing"]


def test_a_record_timestamp_far_off_is_refused_as_a_ts_would_be() -> None:
    [reason] = reasons(ingest(usage(), timestamp=RECORD_MS + 3 * 86_400_000))
    assert reason == "ts is more than a day in the future: check the producer's clock"


def test_its_fields_are_screened_for_personal_data_as_a_native_events_are() -> None:
    result = ingest(
        usage(userId="jane.doe@example.com"), usage(endpointTag="call 415-555-0123"),
        usage(promptVersion="sk-proj-abcdefghijklmnopqrstuvwx"), usage(externalRequestId="4111 1111 1111 1111"),
    )  # fmt: skip
    assert [r.split(" looks like ")[0] for r in reasons(result)] == [
        "userId: user_id", "endpointTag: feature", "promptVersion: prompt_version", "externalRequestId: event_id",
    ]  # fmt: skip
    for rejected in result.rejected:
        for canary in (b"jane.doe", b"555-0123", b"sk-proj", b"4111"):
            assert canary not in rejected.raw and canary.decode() not in rejected.reason + rejected.event_id
    as_tenant = ingest(usage(userId="jane.doe@example.com"), user_id_as="tenant_id")
    assert reasons(as_tenant) == [
        "tenant_id looks like an e-mail address: send the tenant's id, not a person's contact details or a credential"
    ]
    key = b"0123456789abcdef"
    [row] = rows(ingest(usage(userId="jane.doe@example.com"), user_id_key=key))
    assert row["user_id"] == pseudonymize("jane.doe@example.com", key)


def test_an_escaped_name_is_read_as_the_name() -> None:
    raw = orjson.dumps(usage(userId=None)).replace(b'"endpointTag"', b'"endpoint\\u0054ag"')
    assert model_for(raw) is UsageCallEvent
    result = ingest(raw + b" ", raw.replace(b"}", b', "user\\u0049d": "x", "user_id": "y"}'))
    assert [row["feature"] for row in rows(result)] == ["sales.email_draft"]
    assert reasons(result) == ["userId and user_id both given: send one (userId is read as user_id)"]


def test_native_events_are_read_by_the_plain_model() -> None:
    sent = orjson.dumps(full_event())
    assert model_for(sent) is not UsageCallEvent
    assert model_for(orjson.dumps({**full_event(), "inputTokens": 5})) is UsageCallEvent
