"""The fast decoder against the model: it may decline any event, but never accept one differently.

The ingestor decodes clean events with ``schemas.call_event_decoder`` and validates the rest with
the pydantic model. Here every event goes through both ways, the ingestor as it runs and the
ingestor with the fast decoder switched off, and what a user would see (the rows, the rejections
with their reasons, the unpriced counts) must be the same.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from producers.demo import DemoTraffic
from schemas.call_event import CAMEL_OF, CallEvent
from schemas.call_event_decoder import CleanCallEvent, decode_clean, decode_usage
from streams import ingest
from streams.ingest import Ingestor, IngestResult, RawEvent
from streams.pricing import Pricer

NOW_MS = int(time.time() * 1000)
HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)
STAMP = HOUR_AGO.strftime("%Y-%m-%dT%H:%M:%S")


def full_event(n: int = 0) -> dict[str, Any]:
    """An event with every field set, as the SDK sends it."""
    return {
        "event_id": f"e-{n}", "ts": STAMP + ".123456Z", "provider": "anthropic", "model": "claude-sonnet-4-5",
        "feature": "support.triage", "prompt_version": "v3", "agent_id": "triager", "task_id": "t-1",
        "session_id": "s-1", "trace_id": "tr-1", "parent_id": "e-0", "user_id": "u_4f2a", "tenant_id": "acme",
        "team": "support", "environment": "staging", "data_mode": "test", "tags": {"tier": "gold", "region": "eu"},
        "prompt_hash": "9f86d081", "args_hash": "4111111111111111", "kind": "llm", "input_tokens": 5000,
        "output_tokens": 900, "cache_read_tokens": 3000, "cache_write_tokens": 1000, "reasoning_tokens": 200,
        "latency_ms": 2100.5, "ttft_ms": 340, "status": "error", "error_type": "overloaded_error", "attempt": 2,
    }  # fmt: skip


# Values each field is tried with: valid ones in other forms, edges of each rule, and wrong types.
TEXTS = ["x", " x", "x ", "", " ", "é", "x\u00a0", "\u3000x", "x\ny", "x\x7f", "x\x1f", "a|b", 5, None, True]
# Personal data and secrets (refused), what real ids and names look like (kept), near misses, and
# invisible characters (refused in ids and names).
PRIVATE = [
    "jane.doe@example.com", "x jane@example.com", "jane\u0040example.com", "+1 415 555 0123", "(415) 555-0123",
    "415-555-0123", "+14155550123", "4111 1111 1111 1111", "4111111111111111", "4111111111111112",
    "sk-proj-abcdefghijklmnopqrstuvwx", "AKIAIOSFODNN7EXAMPLE", "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "Zk3pQ9vT2xLm8aR4cW7yH1nB6dF0gJ5s", "10045678", "1541815603606036480", "2024-01-15", "v1.2.3",
    "192.168.100.200", "550e8400-e29b-41d4-a716-446655440000", "4bf92f3577b34da6a3ce929d0e0e4736",
    "task-summarization-agent", "u_4f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d", " 415-555-0123 ", "a|415-555-0123|b",
    "gpt-4o\u200b", "x\u202ey", "\ufeffx", "x\u2066y", "x\x85y", "x\xady", "x\u2028y", "x\x1by", "x\x00",
]  # fmt: skip
VARIANTS: dict[str, list[Any]] = {
    "event_id": [*TEXTS, *PRIVATE, "a" * 256, "a" * 257],
    "ts": [
        NOW_MS,
        10**20,
        -(10**20),
        10**400,
        NOW_MS - 86_400_000,
        NOW_MS + 2 * 86_400_000,
        946_684_800_000,
        946_684_799_999,
        NOW_MS // 1000,
        NOW_MS / 1000,
        20_000_000_000,
        20_000_000_001,
        0,
        -5,
        True,
        str(NOW_MS),
        None,
        STAMP + "Z",
        STAMP + "+01:00",
        STAMP + "-05:30",
        STAMP + "-00:00",
        STAMP + "+23:59",
        STAMP + "+24:00",
        STAMP + "+12:60",
        STAMP + "+0100",
        STAMP + "+01",
        STAMP.replace("T", " ") + "Z",
        STAMP.replace("T", "t") + "z",
        STAMP + ".1Z",
        STAMP + ".123Z",
        STAMP + ".1234567Z",
        STAMP + ".9999995Z",
        STAMP + ".123456789+02:00",
        STAMP + ".1234567891Z",
        STAMP + ".123456789123Z",
        STAMP + ".Z",
        STAMP,
        STAMP[:10],
        STAMP[:16] + "Z",
        "2026-02-30T10:00:00Z",
        "12026-01-01T10:00:00Z",
        STAMP.replace("T", "_") + "Z",
        "2026-11-20T23:59:60Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-11-20T24:00:00Z",
        "1999-12-31T23:59:59Z",
        "2000-01-01T00:00:00Z",
        "٢٠٢٦-11-20T10:00:00Z",
        "2026-W47-5T10:00:00Z",
        "20261120T100000Z",
    ],
    "provider": [*TEXTS, *PRIVATE, "OpenAI", "x" * 128, "x" * 129],
    "model": [*TEXTS, *PRIVATE, "gpt-4o", "no-such-model"],
    "feature": [*TEXTS, *PRIVATE, "unattributed", "x" * 129],
    "prompt_version": [*TEXTS, *PRIVATE],
    "agent_id": [*TEXTS, *PRIVATE],
    "task_id": [*TEXTS, *PRIVATE],
    "session_id": [*TEXTS, *PRIVATE],
    "trace_id": [*TEXTS, *PRIVATE],
    "parent_id": [*TEXTS, *PRIVATE],
    "user_id": [*TEXTS, *PRIVATE, "a" * 257],
    "tenant_id": [*TEXTS, *PRIVATE],
    "team": [*TEXTS, *PRIVATE],
    "environment": [*TEXTS, *PRIVATE],
    "data_mode": ["real", "demo", "prod", "REAL", None, 1],
    "tags": [
        {},
        {"tier": "gold"},
        {"tier": ""},
        {"tier": " gold "},
        {"owner": "jane@example.com"},
        {"key": "sk-abcdefghijklmnopqrstuvwxyz"},
        {"415-555-0123": "x"},
        {"sk-abcdefghijklmnopqrstuvwxyz": "x"},
        {"tier": "1234567"},
        {"bad key": "x"},
        {"k\n": "x"},
        {"k" * 65: "x"},
        {"k": "x" * 129},
        {"k": "gold\u200b"},
        {"k": "x\x1by"},
        {"k": "x\u202ey"},
        {"k": "Zürich"},
        {f"k{i}": "v" for i in range(33)},
        {f"k{i}": "v" for i in range(32)},
        {"k": 5},
        {"k": None},
        [],
        None,
    ],
    "prompt_hash": ["", " h ", "h" * 129, None, 7, *PRIVATE],
    "args_hash": ["", " h ", "h" * 128, "h" * 129, "9f86d081884c7d65", None, 7, True, ["a"], *PRIVATE],
    "kind": ["llm", "tool", "agent", None],
    "tool_name": [*TEXTS, *PRIVATE, "web_search"],
    "input_tokens": [0, -1, 1.0, 5.5, "5", True, 100_000_000, 100_000_001, 2**70, None, 1000],
    "output_tokens": [0, 10, -1, 2.0, "10", False],
    "cache_read_tokens": [0, 4000, 6000, -1, 1.5],
    "cache_write_tokens": [0, 1000, 2001, None],
    "reasoning_tokens": [0, 900, 901, -1],
    "cost_usd": [0, 0.25, 1, -1, 1_000_000, 1_000_001, "0.25", None, float("inf")],
    "latency_ms": [0, 800, 800.5, -1, 86_400_000, 86_400_001, "800", None, True],
    "ttft_ms": [0, 12.5, -0.5, None],
    "status": ["success", "rate_limited", "ok", "", None],
    "error_type": ["", " x ", "x" * 1024, "x" * 1025, None, 3, *PRIVATE],
    "attempt": [1, 100, 0, 101, 2.0, "2", None],
}
SHAPES: list[tuple[str, Any]] = [
    ("unknown field", {"extra": 1}),
    ("alias", {"inputTokens": 5}),
    ("alias for the id", {"externalRequestId": "r-1"}),
    ("camelCase feature", {"endpointTag": "sales.email_draft"}),
]
ENCODINGS = [
    orjson.dumps,
    lambda d: json.dumps(d).encode(),
    lambda d: json.dumps(d, indent=2).encode(),
    lambda d: json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode(),
]
ODD_BYTES = [
    b"", b"null", b"[]", b'"x"', b"5", b"{not json", b'{"a":1}garbage', b"\xef\xbb\xbf" + orjson.dumps(full_event()),
    b'{"event_id":"a\xff","ts":1,"provider":"p","model":"m"}', b" " + orjson.dumps(full_event()) + b"\n",
    b'{"event_id":"a","event_id":"b","ts":"' + STAMP.encode() + b'Z","provider":"p","model":"m"}',
    b'{"event_id":"a","ts":"' + STAMP.encode() + b'Z","provider":"p","model":"m","input_tokens":1e3}',
]  # fmt: skip


def mutated(rng: random.Random, n: int) -> bytes:
    event = full_event(n)
    for field in rng.sample(sorted(VARIANTS), rng.choice([1, 1, 2, 3])):
        value = rng.choice(VARIANTS[field])
        if value is None and rng.random() < 0.5:
            event.pop(field, None)
        else:
            event[field] = value
    if rng.random() < 0.05:
        event.update(rng.choice(SHAPES)[1])
    if event.get("event_id") == "externalRequestId":
        event.pop("event_id")
    try:
        return rng.choice(ENCODINGS)(event)
    except (TypeError, ValueError):  # a value orjson cannot write (an int over 64 bits, inf)
        return json.dumps(event).encode()


def every_case() -> list[bytes]:
    rng = random.Random(20261123)
    cases = [orjson.dumps(full_event()), *ODD_BYTES]
    for field, values in VARIANTS.items():
        for value in values:
            event = full_event(len(cases))
            event[field] = value
            cases.append(json.dumps(event).encode())
    for _, extra in SHAPES:
        cases.append(orjson.dumps({**full_event(len(cases)), **extra}))
    cases += [mutated(rng, len(cases) + i) for i in range(3000)]
    return cases


def seen(result: IngestResult) -> tuple[list[list[tuple[type, Any]]], list[tuple[Any, ...]], dict[Any, int]]:
    """What a user sees of a batch: its rows (values with their types), rejections and unpriced counts."""
    rows = [[(type(value), value) for value in row] for row in result.calls.rows]
    rejected = sorted((r.offset, r.error_kind, r.reason, r.event_id, r.raw) for r in result.rejected)
    return rows, rejected, result.unpriced_calls


def model_only(
    monkeypatch: pytest.MonkeyPatch, records: list[RawEvent], key: bytes | None = None, **options: Any
) -> IngestResult:
    with monkeypatch.context() as patch:
        patch.setattr(ingest, "decode_clean", lambda raw, pseudonyms=None: None)
        patch.setattr(ingest, "decode_usage", lambda *args: None)
        return Ingestor(Pricer(), "llm.calls", user_id_key=key, **options).process(records)


def test_every_event_reads_the_same_with_and_without_the_fast_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = every_case()
    records = [RawEvent(raw, n % 3, n) for n, raw in enumerate(cases)]
    fast = Ingestor(Pricer(), "llm.calls").process(records)
    assert seen(fast) == seen(model_only(monkeypatch, records))
    # both sides of the fast path were exercised, the batch has good and refused events
    decoded = sum(decode_clean(raw) is not None for raw in cases)
    assert decoded > 1000 and len(cases) - decoded > 1000
    assert len(fast.calls) > 1000 and len(fast.rejected) > 1000


def test_with_a_user_id_key_every_event_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # the worker pseudonymises user ids not yet pseudonymous, on the fast path as the model does
    cases = every_case()
    records = [RawEvent(raw, 0, n) for n, raw in enumerate(cases)]
    key = b"0123456789abcdef"
    fast = Ingestor(Pricer(), "llm.calls", user_id_key=key).process(records)
    assert seen(fast) == seen(model_only(monkeypatch, records, key))
    stored = {row[13] for row in fast.calls.rows}
    assert stored - {""} and all(user_id.startswith("u_") and len(user_id) == 34 for user_id in stored - {""})


def test_with_the_attribution_switches_every_event_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # tag-or-reject, and usage payloads (their userId as the tenant, their time the record's) among them
    usage = {"externalRequestId": "r-1", "provider": "openai", "model": "gpt-4o", "userId": "acct-1", "status": "ok"}
    cases = [*every_case(), orjson.dumps(usage), orjson.dumps({**usage, "endpointTag": "sales.email_draft"})]
    records = [RawEvent(raw, 0, n, NOW_MS - n) for n, raw in enumerate(cases)]
    options: dict[str, Any] = {"require_feature": True, "user_id_as": "tenant_id"}
    fast = Ingestor(Pricer(), "llm.calls", **options).process(records)
    assert seen(fast) == seen(model_only(monkeypatch, records, **options))
    kinds = {r.error_kind for r in fast.rejected}
    assert {"missing_feature", "schema"} <= kinds and len(fast.calls) > 1000
    refused = {r.offset: r.error_kind for r in fast.rejected}
    assert refused[len(cases) - 2] == "missing_feature" and fast.calls.rows[-1][0] == "r-1"
    assert fast.calls.rows[-1][14] == "acct-1"  # tenant_id


# The usage payload of hosted cost trackers: their names, words and forms, and twins of the contract's.
SENT_STATUSES = ["ok", " OK ", "Failed", "timed_out", "throttled", "canceled", "weird", "", 200, 429, 503, 302,
                 200.0, 10**30, True, None]  # fmt: skip
USAGE_VARIANTS: dict[str, list[Any]] = {
    "status": SENT_STATUSES,
    "environment": ["production", " Production ", "development", "prod ", "staging", "", 5, None],
    "userId": [*TEXTS, *PRIVATE],
    "externalRequestId": [*TEXTS, *PRIVATE],
    "endpointTag": [*TEXTS, *PRIVATE, "unattributed"],
    "ts": [None, NOW_MS, STAMP + "Z", STAMP, "yesterday", 5],
    "tenant_id": ["acme", "", None],
    "event_id": ["e-twin"],  # twins
    "user_id": ["u_twin"],
    "inputTokens": [0, -1, 5.0, "5", True, 2**70, None],
    "latencyMs": [800, -1, "800", True, None],
    "dataMode": ["real", "live", None],
}


def usage_payload(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as a hosted cost tracker's SDK sends it: camelCase names, no ts, its userId the only id of whom."""
    payload = {CAMEL_OF.get(name, name): value for name, value in event.items() if name not in ("ts", "tenant_id")}
    payload["status"] = "ok"
    return payload


def every_usage_case() -> list[bytes]:
    rng = random.Random(20261204)
    clean = orjson.dumps(usage_payload(full_event()))
    cases = [
        clean, clean.replace(b"{", b'{"externalRequestId":"first",', 1),  # a name twice: the last counts
        clean.replace(b"{", b'{"userId":"jane@example.com",', 1), clean.replace(b'"userId"', b'"user\\u0049d"'),
        clean.replace(b"}", b',"ts":null}'), clean.replace(b"}", b',"ts":' + str(NOW_MS).encode() + b"}"),
    ]  # fmt: skip
    for field, values in USAGE_VARIANTS.items():
        for value in values:
            payload = usage_payload(full_event(len(cases)))
            payload[field] = value
            cases.append(json.dumps(payload).encode())
    for n in range(1500):
        payload = usage_payload(full_event(len(cases) + n))
        for field in rng.sample(sorted(USAGE_VARIANTS), rng.choice([1, 2, 3])):
            if field in ("event_id", "user_id") and rng.random() < 0.8:
                continue
            value = rng.choice(USAGE_VARIANTS[field])
            if value is None and rng.random() < 0.5:
                payload.pop(field, None)
            else:
                payload[field] = value
        cases.append(json.dumps(payload).encode())
    return cases


@pytest.mark.parametrize(
    "options",
    [{}, {"user_id_as": "tenant_id"}, {"require_feature": True}, {"key": b"0123456789abcdef"}],
    ids=["default", "userId as tenant", "tag or reject", "user id key"],
)
def test_every_usage_payload_reads_the_same_with_and_without_the_fast_decoder(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    cases = every_usage_case()
    records = [RawEvent(raw, 0, n, NOW_MS - n if n % 50 else None) for n, raw in enumerate(cases)]
    key = options.pop("key", None)
    fast = Ingestor(Pricer(), "llm.calls", user_id_key=key, **options).process(records)
    assert seen(fast) == seen(model_only(monkeypatch, records, key, **options))
    decoded = sum(decode_usage(r.value, r.timestamp) is not None for r in records)  # type: ignore[arg-type]
    assert decoded > 500 and len(cases) - decoded > 500
    assert len(fast.calls) > 400 and len(fast.rejected) > 400


def test_what_hosted_cost_trackers_send_takes_the_fast_path() -> None:
    sent = orjson.dumps(usage_payload(full_event()))
    event = decode_usage(sent, NOW_MS, user_id_as="tenant_id")
    assert isinstance(event, CleanCallEvent) and event.ts == datetime.fromtimestamp(NOW_MS / 1000, UTC)
    assert (event.event_id, event.status, event.tenant_id, event.user_id) == ("e-0", "success", "u_4f2a", "")
    assert decode_usage(sent, None) is None  # no time at all: the model says so


def test_personal_data_in_any_text_field_is_refused_on_the_fast_path_too() -> None:
    # each of these the fast decoder reads as clean; the batch's text check sends it to the model
    fields = [name for name in VARIANTS if isinstance(full_event().get(name), str) or name in ("tool_name",)]
    records = []
    for n, field in enumerate(sorted(set(fields) - {"ts", "data_mode", "status", "kind"})):
        records.append(RawEvent(orjson.dumps({**full_event(n), field: "x jane.doe@example.com"}), 0, n))
    result = Ingestor(Pricer(), "llm.calls").process(records)
    assert len(result.calls) == 0 and len(result.rejected) == len(records) >= 17
    for rejected in result.rejected:
        assert "looks like an e-mail address" in rejected.reason and b"jane.doe" not in rejected.raw


def test_one_event_at_a_time_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # alone in its batch, an event the Arrow check sends back to the model is stripped or refused alike
    for n, raw in enumerate(every_case()[:400]):
        record = [RawEvent(raw, 0, n)]
        assert seen(Ingestor(Pricer(), "llm.calls").process(record)) == seen(model_only(monkeypatch, record)), raw


def test_what_producers_send_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = CallEvent.model_validate(full_event())
    demo = [call for request in DemoTraffic(seed=3).requests_between(HOUR_AGO, HOUR_AGO + timedelta(minutes=20))
            for call in request.calls]  # fmt: skip
    assert len(demo) > 50
    bench_style = json.dumps({"event_id": "b-1", "ts": NOW_MS, "provider": "openai", "model": "gpt-4o",
                              "latency_ms": 800, "session_id": "s1"}).encode()  # fmt: skip
    sent = [orjson.dumps(event.model_dump(mode="json", exclude_none=True)) for event in [sdk, *demo]]
    sent.append(bench_style)
    assert all(isinstance(decode_clean(raw), CleanCallEvent) for raw in sent)
    records = [RawEvent(raw, 0, n) for n, raw in enumerate(sent)]
    result = Ingestor(Pricer(), "llm.calls").process(records)
    assert len(result.calls) == len(sent) and seen(result) == seen(model_only(monkeypatch, records))


def test_a_padded_name_is_stored_stripped_like_the_model_does() -> None:
    raw = orjson.dumps({**full_event(), "feature": " support.triage ", "tenant_id": "acme\u00a0"})
    result = Ingestor(Pricer(), "llm.calls").process([RawEvent(orjson.dumps(full_event(1)), 0, 1), RawEvent(raw, 0, 2)])
    features = [row[6] for row in result.calls.rows]
    tenants = [row[14] for row in result.calls.rows]
    assert features == ["support.triage", "support.triage"] and tenants == ["acme", "acme"]
    assert result.calls.columns is not None and result.calls.columns.column("feature").to_pylist() == features
