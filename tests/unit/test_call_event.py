from __future__ import annotations

import json
import re
import time

import pytest
from pydantic import ValidationError

from producers import pseudonymize
from schemas import CallEvent
from schemas.call_event import PSEUDONYMS
from schemas.jsonschema import EXPORTED, SCHEMA_DIR, render
from schemas.privacy import Pseudonyms


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
        ({"input_tokens": True}, "a number, not true or false"),  # not one token
        ({"latency_ms": False}, "a number, not true or false"),
        ({"attempt": True}, "a number, not true or false"),
        ({"cost_usd": True}, "a number, not true or false"),
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


IDS = ["event_id", "agent_id", "task_id", "session_id", "trace_id", "parent_id", "user_id", "tenant_id"]
NAMES = ["provider", "model", "feature", "prompt_version", "team", "environment", "tool_name"]
CANARIES = {
    "an e-mail address": "jane.doe@example.com",
    "a phone number": "+1 415 555 0123",
    "a payment card number": "4111 1111 1111 1111",
    "a secret or access token": "sk-proj-abcdefghijklmnopqrstuvwx",
}


@pytest.mark.parametrize("kind", sorted(CANARIES))
@pytest.mark.parametrize("field", [*IDS, *NAMES, "prompt_hash", "args_hash", "error_type"])
def test_personal_data_in_any_text_field_is_refused_with_a_reason_naming_the_field(field: str, kind: str) -> None:
    canary = CANARIES[kind]
    with pytest.raises(ValidationError) as refused:
        CallEvent.model_validate(event(**{field: f"x {canary}"}))
    assert f"{field} looks like {kind}: " in str(refused.value)
    assert canary not in str(refused.value)  # not even in the error's text: it is logged, stored, published


@pytest.mark.parametrize("phone", ["00447946095812", "0044 7946 095812", "+447946095812"])
@pytest.mark.parametrize("field", ["team", "tenant_id", "tool_name", "feature", "session_id"])
def test_an_international_phone_number_is_refused_in_ids_and_names(field: str, phone: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} looks like a phone number"):
        CallEvent.model_validate(event(**{field: phone}))


def test_numeric_ids_are_kept_even_when_they_have_as_many_digits_as_a_phone_number() -> None:
    kept = CallEvent.model_validate(event(tenant_id="4155550199", team="100234", tool_name="0012345678"))
    assert (kept.tenant_id, kept.team, kept.tool_name) == ("4155550199", "100234", "0012345678")


def test_a_user_id_that_looks_like_personal_data_says_to_send_a_pseudonym() -> None:
    with pytest.raises(ValidationError, match=r"user_id looks like an e-mail address: send a pseudonymous id"):
        CallEvent.model_validate(event(userId="jane.doe@example.com"))


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\xad", "\u061c", "\u200b", "\u200d", "\u200e", "\u2028",
     "\u202a", "\u202e", "\u2060", "\u2066", "\u2069", "\ufeff"],
)  # fmt: skip
@pytest.mark.parametrize("field", [*IDS, *NAMES])
def test_ids_and_names_refuse_control_invisible_and_bidi_characters(field: str, char: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} holds U\\+{ord(char):04X} .*must be printable"):
        CallEvent.model_validate(event(**{field: f"gpt{char}4o"}))


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\u200b", "\u202e", "\u2066", "\ufeff"])
def test_error_types_and_tag_values_refuse_control_invisible_and_bidi_characters(char: str) -> None:
    with pytest.raises(ValidationError, match=f"error_type holds U\\+{ord(char):04X} .*must be printable"):
        CallEvent.model_validate(event(status="error", error_type=f"Rate{char}LimitError"))
    with pytest.raises(ValidationError, match=f"tag 'tier' holds U\\+{ord(char):04X} .*must be printable"):
        CallEvent.model_validate(event(tags={"tier": f"gold{char}"}))
    kept = CallEvent.model_validate(event(status="error", error_type="RateLimitError: 429", tags={"city": "Zürich"}))
    assert kept.error_type == "RateLimitError: 429" and kept.tags == {"city": "Zürich"}


INVISIBLE_BY_CATEGORY = {
    "\U000e0041": "TAG LATIN CAPITAL LETTER A",  # Cf, outside the old list
    "\u034f": "COMBINING GRAPHEME JOINER",  # Mn, invisible
    "\u3164": "HANGUL FILLER",  # Lo, invisible
    "\u115f": "HANGUL CHOSEONG FILLER",
    "\uffa0": "HALFWIDTH HANGUL FILLER",
    "\ufe0f": "VARIATION SELECTOR-16",
    "\U000e0100": "VARIATION SELECTOR-17",
    "\u2800": "BRAILLE PATTERN BLANK",
    "\u00a0": "NO-BREAK SPACE",  # Zs other than the space
    "\u3000": "IDEOGRAPHIC SPACE",
    "\ue000": "a private-use character",  # Co
    "\U0010ffff": "an unassigned character",  # Cn
    "\u0378": "an unassigned character",
}


@pytest.mark.parametrize(("char", "name"), INVISIBLE_BY_CATEGORY.items())
@pytest.mark.parametrize("field", [*IDS, *NAMES, "error_type", "prompt_hash", "args_hash"])
def test_every_id_name_and_hash_refuses_invisible_characters_by_unicode_category(
    field: str, char: str, name: str
) -> None:
    extra = {"kind": "tool", "tool_name": "search"} if field == "args_hash" else {}
    extra |= {"status": "error"} if field == "error_type" else {}
    with pytest.raises(ValidationError, match=f"{field} holds U\\+{ord(char):04X} \\({name}\\).*must be printable"):
        CallEvent.model_validate(event(**{**extra, field: f"abc{char}def"}))


def test_a_prompt_hash_with_a_bidi_override_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"prompt_hash holds U\+202E \(RIGHT-TO-LEFT OVERRIDE\)"):
        CallEvent.model_validate(event(prompt_hash="abc\u202edef"))


def test_printable_letters_of_any_script_are_kept_in_names_and_ids() -> None:
    kept = CallEvent.model_validate(
        event(model="modèle-été", feature="請求書の要約", team="équipe données", tenant_id="顧客-42",
              prompt_version="版本2", tool_name="поиск", error_type="Ошибка", tags={"city": "Zürich"},
              prompt_hash="é" * 8, agent_id="नमस्ते"),
    )  # fmt: skip
    assert (kept.model, kept.feature, kept.team) == ("modèle-été", "請求書の要約", "équipe données")
    assert (kept.agent_id, kept.tool_name, kept.prompt_hash) == ("नमस्ते", "поиск", "é" * 8)


def test_a_model_name_with_a_zero_width_space_is_refused_not_stored_unpriced() -> None:
    with pytest.raises(ValidationError, match=r"model holds U\+200B \(ZERO WIDTH SPACE\)"):
        CallEvent.model_validate(event(model="gpt-4o\u200b"))


def test_ids_and_names_real_producers_send_are_kept() -> None:
    kept = CallEvent.model_validate(
        event(
            event_id="550e8400-e29b-41d4-a716-446655440000", user_id="10045678", session_id="1541815603606036480",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736", parent_id="00f067aa0ba902b7", tenant_id="tenant_acme",
            task_id="task-summarization-agent", prompt_version="2024-01-15", team="growth", feature="sales.v1.2.3",
            model="NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO", provider="together", agent_id="192.168.100.200",
            error_type="RateLimitError", prompt_hash="9f86d081884c7d659a2feaa0c55ad015",
            tags={"tier": "gold", "region": "eu-west-1"}, environment="prod",
        )
    )  # fmt: skip
    assert (kept.user_id, kept.prompt_version, kept.session_id) == ("10045678", "2024-01-15", "1541815603606036480")


def test_given_the_key_the_model_pseudonymises_user_ids_as_the_sdk_does() -> None:
    key = b"0123456789abcdef0123"
    context = {PSEUDONYMS: Pseudonyms(key)}
    for sent in ["jane.doe@example.com", " +1 415 555 0123 ", "42"]:
        parsed = CallEvent.model_validate(event(user_id=sent), context=context)
        assert parsed.user_id == pseudonymize(sent.strip(), key)
    already = pseudonymize("jane", key)
    assert CallEvent.model_validate(event(user_id=already), context=context).user_id == already
    odd = "u_" + "0" * 31 + "\x1b"  # not the SDK's form: pseudonymised with the key, refused without
    assert re.fullmatch("u_[0-9a-f]{32}", CallEvent.model_validate(event(user_id=odd), context=context).user_id or "")
    with pytest.raises(ValidationError, match="user_id holds U\\+001B"):
        CallEvent.model_validate(event(user_id=odd))


def test_a_tag_key_that_looks_like_personal_data_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValidationError, match="a tag key looks like a phone number") as refused:
        CallEvent.model_validate(event(tags={"415-555-0123": "x"}))
    assert "415-555-0123" not in str(refused.value)


def test_a_prompt_hash_of_digits_is_a_digest_not_a_card_but_an_address_in_it_is_refused() -> None:
    digits = "4111111111111111"  # passes for a card number: in an id it is refused
    assert CallEvent.model_validate(event(prompt_hash=digits)).prompt_hash == digits
    with pytest.raises(ValidationError, match="card"):
        CallEvent.model_validate(event(session_id=digits))
    with pytest.raises(ValidationError, match="e-mail"):
        CallEvent.model_validate(event(prompt_hash="ada@example.com"))


def test_an_args_hash_is_a_digest_kept_as_sent_and_hostile_ones_are_refused_saying_why() -> None:
    tool = {"kind": "tool", "tool_name": "search"}
    for digest in ["4111111111111111", "9f86d081884c7d659a2feaa0c55ad015", "h" * 128, "sha256:ab12", ""]:
        assert CallEvent.model_validate(event(**tool, args_hash=digest)).args_hash == digest
    assert CallEvent.model_validate(event(**tool)).args_hash is None
    refused = {
        "ada@example.com": "args_hash looks like an e-mail address: send an opaque id",
        "sk-proj-abcdefghijklmnopqrstuvwx": "args_hash looks like a secret or access token",
        "4111 1111 1111 1111": "args_hash looks like a payment card number",  # grouped: not a hex digest
        "ab\u202ecd": "args_hash holds U\\+202E .*must be printable",
        "ab\x00": "args_hash holds U\\+0000",
        "h" * 129: "args_hash\n.*at most 128 characters",
        7: "args_hash\n.*valid string",
    }
    for value, reason in refused.items():
        with pytest.raises(ValidationError, match=reason):
            CallEvent.model_validate(event(**tool, args_hash=value))


def test_the_json_schema_allows_empty_text_exactly_where_the_model_does() -> None:
    # error_type and args_hash may be empty: their printable pattern must allow it, as ids' must not
    schema = json.loads(render(CallEvent))
    checked = []
    for name, spec in schema["properties"].items():
        for branch in spec.get("anyOf", [spec]):
            if "pattern" not in branch or name not in CallEvent.model_fields:
                continue
            try:
                CallEvent.model_validate(event(**{name: ""}))
                accepted = True
            except ValidationError:
                accepted = False
            assert (re.search(branch["pattern"], "") is not None) == accepted, name
            checked.append(name)
    assert {"event_id", "model", "error_type", "args_hash"} <= set(checked)
