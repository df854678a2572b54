"""The rules of ``schemas.privacy``: what counts as personal data or a secret in ids and names, and what does not."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from genai_prices import data as price_data

from producers import pseudonymize
from schemas import privacy
from schemas.privacy import (
    ID_CANDIDATES,
    NAME_CANDIDATES,
    Pseudonyms,
    id_kind,
    name_kind,
    redact,
    redact_raw,
    sensitive_kind,
)

# What real producers send as ids and names: none of it is personal data.
LEGIT_IDS = [
    "10045678", "42", "000123", "550e8400-e29b-41d4-a716-446655440000", "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "1541815603606036480",
    "1234567890123456789", "2024-01-15", "2024-01-15T10:30:00Z", "v1.2.3", "v2024.10.01", "192.168.100.200",
    "10.0.0.1", "2001:db8::1", "a8Kd93jfLq0ZpX7mN2bV5cR1tY6uW4eH", "V1StGXR8_Z5jdHi6B-myT", "task-summarization-agent",
    "risk-assessment-workflow-v2", "desk-booking-assistant-prod-eu", "u_4f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d",
    "cus_NffrFeUfNV2Hib", "req_011CPNkdvMUtKQm2ZrWd3Sv8", "sess-2024-01-15-0042", "order-20240115-000042",
    "tenant_acme", "acme-corp", "1700000000000", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "ticket #4521", "build 2024.01.15.1234", "01HQ3K5V8Z6XJ2M9P4R7T0W1YC", "evt_1NG8Du2eZvKYlo2CxyZ1A2B3",
    "100234", "4155550199", "0012345678", "000000012345", "0015000000VALDtAAP", "00123456789",
]  # fmt: skip
"""Numeric ids are ids, whatever their digits: a bare run of digits (``4155550199``) is no phone number; a
phone number is written as one (``+`` or ``00`` and a country code, or grouped like one)."""
RANDOM_IDS = {"a8Kd93jfLq0ZpX7mN2bV5cR1tY6uW4eH"}
"""Random ids are welcome as ids; as names they read like a key."""
LEGIT_NAMES = [
    "gpt-4o", "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet@20240620", "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "mistralai/Mixtral-8x7B-Instruct-v0.1", "NousResearch/Nous-Hermes-2-Mixtral-8x7B-DPO",
    "accounts/fireworks/models/llama-v3p1-405b-instruct", "ft:gpt-4o-mini-2024-07-18:acme:support:9abcDEF1",
    "sales.email_draft", "support.triage", "2024-01-15", "v3", "prod", "eu-west-1", "RateLimitError",
    "openai.APIConnectionError", "HTTP 429", "context_length_exceeded", "getUserById2HandlerForTheWebhooks",
]  # fmt: skip

CARDS = ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "2223003122003222",
         "378282246310005", "3782 822463 10005", "6011111111111117", "30569309025904", "4222222222222"]  # fmt: skip
PHONES = ["+14155550123", "+1 415 555 0123", "+44 20 7946 0958", "+1 (415) 555-0123", "(415) 555-0123",
          "(415)555-0123", "415-555-0123", "415.555.0123", "415 555 0123", "call 415-555-0123 today",
          "00447946095812", "0044 20 7946 0958", "0033 1 42 68 53 00", "00-1-415-555-0123"]  # fmt: skip
EMAILS = ["jane.doe@example.com", "x+tag@mail.example.co.uk", "user at bob@corp.io"]
SECRETS = [
    "sk-proj-abcdefghijklmnopqrstuvwx", "sk-ant-api03-abcdefghijklmnop", "sk_live_51HxxAbCdEfGhIjKlMn",
    "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "xoxb-123456789012-abcdefghij",
    "AIzaSyA1234567890abcdefghijklmnopqrstu", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "Bearer abcdefghijklmnopqrstuvwxyz012345", "-----BEGIN RSA PRIVATE KEY-----", "key=sk-abcdefghijklmnopqrstu",
]  # fmt: skip
KEYLIKE = ["Zk3pQ9vT2xLm8aR4cW7yH1nB6dF0gJ5s", "prefix/9fK2mQ7xLp3ZrT8vW1cN6bY4hJ0dG5sA"]


def price_table_names() -> set[str]:
    names = set()
    for provider in price_data.providers:
        names.update({provider.id, provider.name})
        names.update(model.id for model in provider.models)
        names.update(model.name for model in provider.models if model.name)
    return names


@pytest.mark.parametrize("value", LEGIT_IDS)
def test_ids_real_producers_send_are_not_personal_data(value: str) -> None:
    assert id_kind(value) is None


@pytest.mark.parametrize("value", LEGIT_NAMES + [v for v in LEGIT_IDS if v not in RANDOM_IDS])
def test_names_real_producers_send_are_not_personal_data(value: str) -> None:
    assert name_kind(value) is None


def test_no_provider_or_model_of_the_price_table_looks_like_personal_data() -> None:
    names = price_table_names()
    assert len(names) > 1000
    assert [name for name in names if name_kind(name) is not None] == []


@pytest.mark.parametrize(
    ("values", "kind"),
    [(EMAILS, "an e-mail address"), (PHONES, "a phone number"), (CARDS, "a payment card number"),
     (SECRETS, "a secret or access token")],
)  # fmt: skip
def test_personal_data_and_secrets_are_found_in_ids_and_names(values: list[str], kind: str) -> None:
    for value in values:
        assert (id_kind(value), name_kind(value)) == (kind, kind), value
        assert (id_kind(f"x {value} y"), name_kind(f"x:{value}")) == (kind, kind), value


def test_a_key_like_token_is_refused_in_names_not_in_ids() -> None:
    for value in [*KEYLIKE, *RANDOM_IDS]:
        assert name_kind(value) == "a secret or access token" and id_kind(value) is None


@pytest.mark.parametrize(
    "value",
    ["4111111111111112", "1234567890123456", "41111111111111111111", "24-01-15", "+123456", "415-5550-123",
     "x4111111111111111", "1.4111111111111111", "a415-555-0123", "+1234567890123456"],
)  # fmt: skip
def test_near_misses_are_not_cards_or_phones(value: str) -> None:
    # a card needs Luhn and a card's first digit, a phone a phone's shape: a bare digit run is neither
    assert id_kind(value) is None


def test_tags_keep_their_stricter_rules() -> None:
    assert sensitive_kind("1234567") == "a phone number"  # any phone-like run, as before
    assert sensitive_kind("Zk3pQ9vT2xLm8aR4cW7yH1nB6dF0gJ5s") == "a secret or access token"
    assert sensitive_kind("enterprise") is None and sensitive_kind("task-summarization-agent") is None


def corpus() -> list[str]:
    """Values near every rule's edges: the cases above, and random text of digits, separators and letters."""
    rng = random.Random(16)
    alphabet = "0123456789" * 4 + " -.()+@_/=:|xAKskyeJ"
    values = [*LEGIT_IDS, *LEGIT_NAMES, *CARDS, *PHONES, *EMAILS, *SECRETS, *KEYLIKE, *sorted(price_table_names())]
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(6, 40))) for _ in range(20_000)]
    values += [rng.choice(["", "a", "a-", "1.", "(", "x "]) + rng.choice(CARDS + PHONES + SECRETS) + rng.choice(
        ["", "a", "0", "-1", ".", " x", ")"]) for _ in range(3_000)]  # fmt: skip
    values += ["".join(rng.choice("abcXYZ0123456789-_/+=") for _ in range(rng.randint(28, 48))) for _ in range(3_000)]
    values += [
        "".join(rng.choice("0123456789" * 6 + "abcdef-") for _ in range(rng.randint(8, 40))) for _ in range(5_000)
    ]
    values += [str(rng.randint(10**11, 10**20)) for _ in range(2_000)]
    return values


def unhinted_id_kind(value: str) -> str | None:
    """``id_kind`` with every rule run, not only where its hint says it may match."""
    for kind, rule in [
        (privacy.EMAIL, privacy._EMAIL.search),
        (privacy.SECRET, privacy._SECRET_PREFIXES.search),
        (privacy.CARD, privacy._has_card),
        (privacy.PHONE, privacy._PHONE_GROUPED.search),
        (privacy.PHONE, privacy._PHONE_E164.search),
        (privacy.PHONE, privacy._PHONE_00.search),
    ]:
        if rule(value):
            return kind
    return None


def unhinted_name_kind(value: str) -> str | None:
    found = unhinted_id_kind(value)
    tokens = any(privacy._is_token(run) for run in privacy._TOKEN_RUN.findall(value))
    return found or (privacy.SECRET if tokens else None)


def test_the_hints_and_the_candidate_patterns_miss_nothing_the_rules_find() -> None:
    # The rules run only where their hints match (Python), and only on the rows the RE2 candidate
    # patterns pick out of a batch (streams.ingest): a value a rule flags must pass both.
    values = corpus()
    text = pa.array(values)
    for kind_of, unhinted, candidates in ((id_kind, unhinted_id_kind, ID_CANDIDATES),
                                          (name_kind, unhinted_name_kind, NAME_CANDIDATES)):  # fmt: skip
        flagged = [value for value in values if unhinted(value) is not None]
        assert len(flagged) > 1000
        assert [value for value in values if (kind_of(value) is None) != (unhinted(value) is None)] == []
        in_re2 = pc.match_substring_regex(text, candidates).to_pylist()
        assert [
            value for value, candidate in zip(values, in_re2, strict=True) if not candidate and unhinted(value)
        ] == []


def test_redact_replaces_each_span_with_a_marker() -> None:
    text = "mail jane.doe@example.com, call +1 415 555 0123, card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrstu"
    assert redact(text) == (
        "mail [redacted e-mail], call [redacted phone], card [redacted card], key [redacted secret]"
    )
    assert redact("order 10045678 on 2024-01-15 from 192.168.1.1") == "order 10045678 on 2024-01-15 from 192.168.1.1"


def test_e_mail_addresses_are_redacted_from_each_at_as_the_rule_finds_them() -> None:
    rng = random.Random(7)
    texts = ["".join(rng.choice("ab.-_+%@ \"x1Z") for _ in range(rng.randint(3, 30))) + rng.choice(["", ".com", ".c"])
             for _ in range(20_000)]  # fmt: skip
    marker = privacy.REDACTED[privacy.EMAIL]
    assert [t for t in texts if privacy._redact_emails(t) != privacy._EMAIL.sub(marker, t)] == []


def test_redact_raw_keeps_clean_bytes_as_they_arrived() -> None:
    for raw in [b'{"event_id": "e1",  "model": "gpt-4o"}', b"{not json", b'{"a":"\xff"}', b"", b"[1,2]"]:
        assert redact_raw(raw) is raw or redact_raw(raw) == raw


def test_redact_raw_finds_what_escapes_hide_and_what_each_field_refuses() -> None:
    raw = (
        b'{"event_id":"e1","user_id":"jane\\u0040example.com","model":"gpt Zk3pQ9vT2xLm8aR4cW7yH1nB6dF0gJ5s",'
        b'"tags":{"n":"1234567"},"extra":["+14155550123"]}'
    )
    redacted = orjson.loads(redact_raw(raw))
    assert redacted == {
        "event_id": "e1", "user_id": "[redacted e-mail]", "model": "gpt [redacted secret]",
        "tags": {"n": "[redacted phone]"}, "extra": ["[redacted phone]"],
    }  # fmt: skip


def test_redact_raw_redacts_text_that_is_not_json() -> None:
    raw = b'{"feature": "jane@example.com", broken \xff 4111-1111-1111-1111'
    assert redact_raw(raw) == b'{"feature": "[redacted e-mail]", broken \xff [redacted card]'


TAG_TOKEN = "AbCdEfGh1234567890AbCdEfGh123456"
"""A key-like token, as a tag value: refused there, and so redacted from a refused event's bytes."""


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "e1", "tags": {"n": "%s"}, "bad": 1' % TAG_TOKEN.encode(),  # malformed: no closing brace
        b'{"event_id": "e1", "tags": {"n": "%s", "m": "4155550199"}, broken' % TAG_TOKEN.encode(),
        b'[{"event_id": "e1", "tags": {"n": "%s"}}, {"tags": {"m": "4155550199"}}]' % TAG_TOKEN.encode(),
        b'{"tags": {"m": 4155550199, "n": "%s"}}' % TAG_TOKEN.encode(),  # a number where a label is due
        b'{"tags": {"n": "%s", "m": "4155550199"' % TAG_TOKEN.encode(),  # cut off
        b'{"tags": {"team": "4155550199", "model": "%s"}}' % TAG_TOKEN.encode(),  # tags named as fields
    ],
)
def test_redact_raw_finds_tag_style_phones_and_tokens_whatever_the_structure(raw: bytes) -> None:
    redacted = redact_raw(raw)
    assert TAG_TOKEN.encode() not in redacted and b"4155550199" not in redacted, redacted
    assert b"[redacted secret]" in redacted
    assert (b'"event_id": "e1"' in redacted) == (b'"event_id": "e1"' in raw)  # what is clean is kept


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_redact_raw_redacts_utf16_bytes_and_keeps_them_utf16(encoding: str) -> None:
    event = '{"event_id": "e1", "user_id": "jane@example.com", "model": "gpt", "tags": {"n": "%s", "m": "4155550199"}}'
    raw = (event % TAG_TOKEN).encode(encoding)
    redacted = redact_raw(raw).decode(encoding)
    assert "jane@example.com" not in redacted and TAG_TOKEN not in redacted and "4155550199" not in redacted
    assert orjson.loads(redacted.lstrip("\ufeff")) == {
        "event_id": "e1", "user_id": "[redacted e-mail]", "model": "gpt",
        "tags": {"n": "[redacted secret]", "m": "[redacted phone]"},
    }  # fmt: skip
    cut = redact_raw(raw[:-1])  # cut off inside a character: the odd byte at the end is kept as it came
    assert cut.endswith(raw[-2:-1]) and "jane@example.com" not in cut[:-1].decode(encoding)


def test_redact_raw_keeps_the_fields_values_its_rules_accept_and_redacts_international_numbers() -> None:
    raw = b'{"event_id": "4155550199", "tenant_id": "100234", "input_tokens": 12345678, "team": "00447946095812"}'
    assert redact_raw(raw) == raw.replace(b"00447946095812", b"[redacted phone]")


def test_pseudonyms_are_the_sdks() -> None:
    key = b"k" * 32
    pseudonyms = Pseudonyms(key)
    for user_id in ["jane@example.com", "42", "émilie", " padded "]:
        assert pseudonyms(user_id) == pseudonymize(user_id, key)
        assert pseudonyms(user_id) == pseudonyms(user_id)  # remembered, the same
    already = pseudonymize("jane", key)
    assert pseudonyms(already) == already
    # the SDK keeps any 34-character u_ id; the worker only its own form (u_ and 32 hex digits)
    assert pseudonyms("u_jane.doe.at.example.com.xxxxxxxx").startswith("u_")
    assert pseudonyms("u_jane.doe.at.example.com.xxxxxxxx") != "u_jane.doe.at.example.com.xxxxxxxx"
    assert "k" not in repr(pseudonyms).replace("key", "")
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonyms(b"short")


def test_pseudonyms_remember_a_bounded_number_of_ids() -> None:
    pseudonyms = Pseudonyms(b"k" * 16, remembered=10)
    assert [pseudonyms(str(n)) for n in range(25)] == [pseudonymize(str(n), b"k" * 16) for n in range(25)]
    assert len(pseudonyms._known) <= 10


def test_the_sdk_and_the_worker_make_the_same_pseudonym() -> None:
    from producers import pseudonymize
    from schemas.privacy import Pseudonyms

    key = b"k" * 32
    worker = Pseudonyms(key)
    for user_id in ("ada@example.com", "u_" + "Z" * 32, "u_" + "a" * 32, "42"):
        assert pseudonymize(user_id, key) == worker(user_id)
    assert pseudonymize("u_" + "Z" * 32, key) != "u_" + "Z" * 32  # not the pseudonym form: hashed, not passed on
