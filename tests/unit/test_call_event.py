from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from schemas import CallEvent
from schemas.jsonschema import EXPORTED, SCHEMA_DIR, render


def event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "ts": "2026-11-01T10:00:00Z",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 10,
    }
    base.update(overrides)
    return base


def test_accepts_epoch_millis_and_rfc3339() -> None:
    millis = int(time.time() * 1000)
    assert CallEvent.model_validate(event(ts=millis)).ts.timestamp() == pytest.approx(millis / 1000)
    assert CallEvent.model_validate(event()).ts.isoformat() == "2026-11-01T10:00:00+00:00"


def test_camel_case_aliases_of_the_saas_payload() -> None:
    parsed = CallEvent.model_validate(
        {
            "externalRequestId": "r-1", "ts": "2026-11-01T10:00:00Z", "provider": "openai", "model": "gpt-4o",
            "endpointTag": "sales.email_draft", "promptVersion": "v3", "userId": "u_abc", "inputTokens": 5,
            "outputTokens": 2, "latencyMs": 120.5, "dataMode": "test",
        }
    )  # fmt: skip
    assert (parsed.event_id, parsed.feature, parsed.prompt_version, parsed.user_id) == (
        "r-1", "sales.email_draft", "v3", "u_abc",
    )  # fmt: skip
    assert (parsed.input_tokens, parsed.output_tokens, parsed.latency_ms, parsed.data_mode) == (
        5,
        2,
        120.5,
        "test",
    )


def test_missing_feature_is_the_unattributed_bucket() -> None:
    assert CallEvent.model_validate(event()).feature_or_unattributed == "unattributed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_tokens": -1}, "greater than or equal to 0"),
        ({"status": "exploded"}, "'success', 'error', 'timeout', 'rate_limited' or 'cancelled'"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": "2026-11-01T10:00:00"}, "timezone"),
        ({"ts": 1}, "before 2000"),
        ({"cache_read_tokens": 200}, "input_tokens must count every prompt token"),
        ({"reasoning_tokens": 50}, "output_tokens must count every generated token"),
        ({"kind": "tool"}, "needs tool_name"),
        ({"feature": "x" * 200}, "at most 128"),
        ({"tags": {"k": "v" * 200}}, "at most 128"),
        ({"tags": {f"k{i}": "v" for i in range(40)}}, "at most 32"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_refuses_bad_events_with_a_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CallEvent.model_validate(event(**overrides))


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("jane.doe@example.com", "e-mail"),
        ("+1 (415) 555-0132", "phone"),
        ("4111 1111 1111 1111", "payment card"),
        ("sk-proj-abcdefghijklmnopqrstuvwx", "secret"),
        ("AKIAIOSFODNN7EXAMPLE", "secret"),
        ("Bearer abcdefghijklmnopqrstuvwxyz012345", "secret"),
    ],
)
def test_refuses_tags_that_look_like_personal_data_or_secrets(value: str, kind: str) -> None:
    with pytest.raises(ValidationError, match=kind):
        CallEvent.model_validate(event(tags={"note": value}))


@pytest.mark.parametrize("value", ["enterprise", "eu-west-1", "v2024-10", "gold", "1234"])
def test_keeps_categorical_tags(value: str) -> None:
    assert CallEvent.model_validate(event(tags={"label": value})).tags == {"label": value}


def test_committed_json_schemas_match_the_models() -> None:
    for name, model in EXPORTED.items():
        committed = (SCHEMA_DIR / name).read_text()
        assert committed == render(model), f"{name} is stale: run python -m schemas.jsonschema"


def test_a_time_at_the_edge_of_the_calendar_is_refused_with_a_reason() -> None:
    # moved to UTC, these fall outside what a datetime holds: refused, not a crash of the worker
    for ts, reason in [("0001-01-01T00:00:00+01:00", "before 2000-01-01"), ("9999-12-31T23:59:59-01:00", "future")]:
        with pytest.raises(ValidationError, match=reason):
            CallEvent.model_validate(event(ts=ts))
