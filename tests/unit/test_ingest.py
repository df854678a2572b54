from __future__ import annotations

import json
import logging
import time

import orjson
import pytest

from producers import pseudonymize
from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS
from streams.ingest import Ingestor, IngestResult, RawEvent
from streams.pricing import Pricer

NOW_MS = int(time.time() * 1000)


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


def test_a_rejected_events_bytes_are_kept_without_its_personal_data() -> None:
    # whatever the reason an event is refused, its personal data is not kept
    ingestor = Ingestor(Pricer(), "llm.calls", max_event_bytes=2048)
    records = [
        RawEvent(raw(feature="jane.doe@example.com", input_tokens=-5), 0, 1),
        RawEvent(raw(event_id="jane.doe@example.com", feature="x\u200by"), 0, 2),
        RawEvent(raw(**{"jane.doe@example.com": 1, "tenant_id": "+1 (415) 555-0123"}), 0, 3),
        RawEvent(b'{"event_id": "e4", "note": "card 4111 1111 1111 1111"' + b" " * 3000 + b"}", 0, 4),
        RawEvent(b'{not json, "user_id": "sk-proj-abcdefghijklmnopqrstuvwx"', 0, 5),
    ]
    rejected = {r.offset: r for r in ingestor.process(records).rejected}
    assert rejected[1].raw == records[0].value.replace(b"jane.doe@example.com", b"[redacted e-mail]")  # type: ignore[union-attr]
    assert "input_tokens: Input should be" in rejected[1].reason and rejected[1].event_id == "e1"
    assert rejected[2].event_id == "[redacted e-mail]" and "feature holds U+200B" in rejected[2].reason
    assert "; [redacted e-mail]: unknown field" in rejected[3].reason
    assert b"[redacted phone]" in rejected[3].raw and rejected[4].error_kind == "oversize"
    assert b"[redacted card]" in rejected[4].raw and b"[redacted secret]" in rejected[5].raw
    for rejection in rejected.values():
        for canary in (b"jane.doe", b"555-0123", b"4111", b"sk-proj"):
            assert canary not in rejection.raw and canary.decode() not in rejection.reason + rejection.event_id


def test_the_worker_refuses_invisible_characters_on_either_path_and_keeps_other_scripts() -> None:
    sent = {
        1: raw(event_id="i1", model="gpt-4o\U000e0041"),
        2: raw(event_id="i2", model="gpt\u034f-4o"),
        3: raw(event_id="i3", model="gpt-4o\u3164"),
        4: raw(event_id="i4", prompt_hash="abc\u202edef"),
        5: raw(event_id="i5", feature="請求書の要約", team="équipe"),
        6: raw(event_id="i6", feature="support"),
    }
    result = Ingestor(Pricer(), "llm.calls").process([RawEvent(value, 0, offset) for offset, value in sent.items()])
    reasons = {r.offset: r.reason for r in result.rejected}
    assert reasons.keys() == {1, 2, 3, 4}
    for offset, code_point in {1: "U+E0041", 2: "U+034F", 3: "U+3164", 4: "U+202E"}.items():
        assert code_point in reasons[offset], reasons[offset]
    assert reasons[4].startswith("prompt_hash holds U+202E")
    assert len(result.calls) == 2


def test_personal_data_in_a_field_is_refused_with_a_reason_naming_it() -> None:
    result = Ingestor(Pricer(), "llm.calls").process([RawEvent(raw(team="call 415-555-0123"), 0, 1)])
    [rejected] = result.rejected
    assert rejected.reason == "team looks like a phone number: names are labels, never personal data or a credential"
    assert len(result.calls) == 0


def test_given_the_key_the_worker_pseudonymises_user_ids_instead_of_refusing_them() -> None:
    key = b"0123456789abcdef"
    already = pseudonymize("someone", key)
    records = [RawEvent(raw(event_id=f"e{n}", user_id=user), 0, n)
               for n, user in enumerate(["jane.doe@example.com", "42", already, " padded@example.com "])]  # fmt: skip
    result = Ingestor(Pricer(), "llm.calls", user_id_key=key).process(records)
    stored = [dict(zip(LLM_CALL_COLUMNS, row, strict=True))["user_id"] for row in result.calls.rows]
    assert stored == [pseudonymize("jane.doe@example.com", key), pseudonymize("42", key), already,
                      pseudonymize("padded@example.com", key)]  # fmt: skip
    assert result.calls.columns is not None and result.calls.columns.column("user_id").to_pylist() == stored
    without = Ingestor(Pricer(), "llm.calls").process(records)
    assert [r.reason.split(":")[0] for r in without.rejected] == ["user_id looks like an e-mail address"] * 2


def test_a_model_name_with_personal_data_is_never_looked_up_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = Ingestor(Pricer(), "llm.calls").process([RawEvent(raw(model="gpt jane@example.com"), 0, 1)])
    assert "jane" not in caplog.text and result.unpriced_calls == {} and len(result.rejected) == 1


@pytest.mark.parametrize("unsure_every", [20, 2])  # few rows patched in as slices, or many: the columns built anew
def test_rows_sent_back_to_the_model_are_patched_into_the_batch(unsure_every: int) -> None:
    records = []
    for n in range(300):
        fields: dict[str, object] = {"event_id": f"e{n}", "model": "gpt-4o" if n % 3 else "no-such-model"}
        if n % unsure_every == 0:  # kept once stripped, or refused, in turns
            fields |= {"model": " gpt-4o "} if n % (2 * unsure_every) else {"feature": "x 415-555-0123"}
        records.append(RawEvent(raw(**fields), 0, n))
    result = Ingestor(Pricer(), "llm.calls").process(records)
    kept = [n for n in range(300) if n % (2 * unsure_every)]
    assert [row[0] for row in result.calls.rows] == [f"e{n}" for n in range(300) if n % (2 * unsure_every) or n % 1]
    assert result.calls.columns is not None and result.calls.columns.equals(call_block.table(result.calls.rows))
    assert [r.offset for r in result.rejected] == [n for n in range(0, 300, 2 * unsure_every)]
    unpriced = sum(1 for n in kept if n % 3 == 0 and n % unsure_every)
    assert sum(result.unpriced_calls.values()) == unpriced


def test_an_oversize_record_is_redacted_only_as_far_as_it_is_kept_and_keeps_its_size() -> None:
    secret = b"sk-" + b"A1b2C3d4E5f6G7h8J9k0" * 2
    head = b'{"note": "' + secret + b'", "pad": "'
    record = head + b"x" * 2_000_000 + b'"}'
    result = Ingestor(Pricer([]), "llm.calls", max_event_bytes=65_536).process([RawEvent(record, 0, 1)])
    [rejected] = result.rejected
    assert rejected.error_kind == "oversize" and rejected.size == len(record)
    assert secret not in rejected.raw and len(rejected.raw) < 65_536 + 8192  # not the whole 2 MB redacted


def test_require_feature_refuses_untagged_calls_on_either_path_with_their_own_kind() -> None:
    records = [
        RawEvent(raw(event_id="tagged", feature="sales.email_draft"), 0, 1),
        RawEvent(raw(event_id="untagged"), 0, 2),  # the fast decoder's
        RawEvent(raw(event_id="null", feature=None), 0, 3),  # the model's
        RawEvent(raw(event_id="bucket", feature="unattributed"), 0, 4),  # the bucket is no tag
        RawEvent(raw(event_id="padded", feature="unattributed ", model=" gpt-4o"), 0, 5),  # back to the model
        RawEvent(raw(event_id="camel", endpointTag="support.triage"), 0, 6),
        RawEvent(orjson.dumps({"externalRequestId": "camel-untagged", "provider": "p", "model": "m"}), 0, 7, NOW_MS),
        RawEvent(raw(event_id="bad", input_tokens=-1), 0, 8),  # refused for what it holds first
    ]  # fmt: skip
    result = Ingestor(Pricer(), "llm.calls", require_feature=True).process(records)
    assert [row[0] for row in result.calls.rows] == ["tagged", "camel"]
    assert result.calls.columns is not None and result.calls.columns.column("event_id").to_pylist() == [
        "tagged",
        "camel",
    ]
    refused = {r.event_id: r for r in result.rejected}
    assert sorted(refused) == ["bad", "bucket", "camel-untagged", "null", "padded", "untagged"]
    assert {r.error_kind for name, r in refused.items() if name != "bad"} == {"missing_feature"}
    assert refused["bad"].error_kind == "schema" and refused["untagged"].reason == (
        "feature missing: this worker refuses calls not tagged with the feature they serve "
        "(SPENDSTREAM_REQUIRE_FEATURE); send feature (endpointTag in the usage payload)"
    )
    assert refused["untagged"].raw == records[1].value and (
        refused["untagged"].partition,
        refused["untagged"].offset,
    ) == (0, 2)
    assert result.unpriced_calls == {}


def test_by_default_untagged_calls_are_stored_in_the_unattributed_bucket() -> None:
    result = Ingestor(Pricer(), "llm.calls").process(
        [RawEvent(raw(), 0, 1), RawEvent(raw(event_id="e2", feature=None), 0, 2)]
    )
    assert [row[6] for row in result.calls.rows] == ["unattributed", "unattributed"] and result.rejected == []


def test_a_number_far_too_large_is_refused_saying_so_and_its_event_keeps_its_id() -> None:
    base = {"ts": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o"}
    sent = [{**base, "event_id": "float", "input_tokens": 1e300}, {**base, "event_id": "int", "latency_ms": 10**400},
            {**base, "event_id": "big", "output_tokens": 10**30}]  # fmt: skip
    records = [RawEvent(json.dumps(event).encode(), 0, n) for n, event in enumerate(sent)]  # orjson writes no such int
    refused = {r.event_id: r.reason for r in Ingestor(Pricer(), "llm.calls").process(records).rejected}
    assert refused == {
        "float": "input_tokens: a number far too large",
        "int": "latency_ms: a number far too large",
        "big": "output_tokens: Input should be less than or equal to 100000000",
    }
