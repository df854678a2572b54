"""Personal data sent in any field of an event is stored nowhere: not in a table, not in the dead letters, not in logs.

Canaries (an e-mail address, a phone number, a card number, an API key) are planted in every text
field of events sent through a real ``spendstream up``; then every String and Map column of every
table of the database is searched for them, ``rejected_events.raw`` included, and so are the
dead-letter topic and the worker's log. Each such event is refused with a reason naming its field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer

from producers import pseudonymize
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration

CANARIES = {
    "e-mail": "pii-canary-7f3e@example.com",
    "phone": "+1 (415) 555-0199",
    "card": "4000 0566 5566 5556",
    "key": "sk-proj-CanaryKey0123456789abcdefXYZ",
}
KINDS = {
    "e-mail": "an e-mail address",
    "phone": "a phone number",
    "card": "a payment card number",
    "key": "a secret or access token",
}
FRAGMENTS = ["pii-canary-7f3e", "555-0199", "5550199", "5566 5556", "5566-5556", "4000056655665556", "CanaryKey0123"]
"""What of a canary would show that it was kept, in whatever form."""
TEXT_FIELDS = [
    "event_id", "provider", "model", "feature", "prompt_version", "agent_id", "task_id", "session_id", "trace_id",
    "parent_id", "user_id", "tenant_id", "team", "environment", "tool_name", "prompt_hash", "args_hash",
    "error_type",
]  # fmt: skip
ALIASES = {"userId": "user_id", "endpointTag": "feature", "promptVersion": "prompt_version"}


def call(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(), "provider": "openai", "model": "gpt-4o",
        "feature": "support.triage", "input_tokens": 1000, "output_tokens": 100, "session_id": "s-1",
    }  # fmt: skip
    base.update(fields)
    return base


def planted() -> list[tuple[str, str, dict[str, object]]]:
    """(field, canary kind, event) for each canary in each text field, a tag value and the camelCase aliases."""
    events = []
    for kind, canary in CANARIES.items():
        for field in [*TEXT_FIELDS, *ALIASES]:
            event = call(**{"event_id": f"pii-{field}-{kind}", field: f"x {canary}"})
            if field in ALIASES:
                event.pop(ALIASES[field], None)
            events.append((field, kind, event))
        events.append(("tags", kind, call(event_id=f"pii-tags-{kind}", tags={"note": canary})))
    return events


def send(broker: str, topic: str, events: list[dict[str, object]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker)
    for event in events:
        producer.send(topic, json.dumps(event).encode())
    producer.flush()
    producer.close()


def found_in_tables(up: UpProcess) -> list[tuple[str, str, str]]:
    """(table, column, fragment) for each canary fragment in any String or Map column of any table."""
    client = up.client()
    tables = [row[0] for row in client.query(
        "SELECT name FROM system.tables WHERE database = 'spendstream' AND engine NOT LIKE '%View'"
    ).result_rows]  # fmt: skip
    assert {"llm_calls", "rejected_events", "alerts", "rollup_hour", "outcomes"} <= set(tables)
    found = []
    for table in tables:
        columns = client.query(
            "SELECT name, type FROM system.columns WHERE database = 'spendstream' AND table = {t:String}",
            parameters={"t": table},
        ).result_rows
        for column, type_ in columns:
            if "String" not in type_ and "Map" not in type_:
                continue
            for fragment in FRAGMENTS:
                hits = client.query(
                    f"SELECT count() FROM `{table}` WHERE position(toString(`{column}`), {{f:String}}) > 0",
                    parameters={"f": fragment},
                ).result_rows[0][0]
                if hits:
                    found.append((table, column, fragment))
    return found


def dead_letters(broker: str, topic: str, expected: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", consumer_timeout_ms=15_000,
        group_id=f"dlq-{uuid.uuid4().hex[:6]}", session_timeout_ms=6000,
    )  # fmt: skip
    letters = []
    for message in consumer:
        letters.append((message.value, dict(message.headers)))
        if len(letters) == expected:
            break
    consumer.close()
    return letters


def test_personal_data_in_any_field_is_refused_and_stored_nowhere(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    prefix = up.env["SPENDSTREAM_TOPIC_PREFIX"]
    bad = planted()
    invisible = call(event_id="zero-width", model="gpt-4o\u200b")
    legit = [
        call(event_id="550e8400-e29b-41d4-a716-446655440000", user_id="10045678"),
        call(event_id="legit-snowflake", session_id="1541815603606036480", prompt_version="2024-01-15"),
        call(event_id="legit-otel", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", parent_id="00f067aa0ba902b7"),
        call(event_id="legit-version", prompt_version="v1.2.3", tenant_id="192.168.100.200", task_id="task-42"),
    ]
    send(broker, prefix + "llm.calls", [event for _, _, event in bad] + [invisible] + legit)

    assert up.wait_for("SELECT count() FROM llm_calls", len(legit)) == len(legit)
    assert up.wait_for("SELECT count() FROM rejected_events", len(bad) + 1) == len(bad) + 1
    stored = up.client().query("SELECT event_id, user_id, session_id, trace_id, prompt_version FROM llm_calls")
    assert sorted(stored.result_rows) == sorted([
        ("550e8400-e29b-41d4-a716-446655440000", "10045678", "s-1", "", ""),
        ("legit-otel", "", "s-1", "4bf92f3577b34da6a3ce929d0e0e4736", ""),
        ("legit-snowflake", "", "1541815603606036480", "", "2024-01-15"),
        ("legit-version", "", "s-1", "", "v1.2.3"),
    ])  # fmt: skip

    reasons = dict(up.client().query("SELECT event_id, reason FROM rejected_events").result_rows)
    assert reasons["zero-width"].startswith("model holds U+200B (ZERO WIDTH SPACE)")
    for field, kind, _ in bad:
        if field == "event_id":  # its id is the canary, kept redacted
            reason = next(r for r in reasons.values() if r.startswith(f"event_id looks like {KINDS[kind]}"))
        else:
            reason = reasons[f"pii-{field}-{kind}"]
        named = "tag 'note'" if field == "tags" else f"{ALIASES.get(field, field)}"
        assert f"{named} looks like {KINDS[kind]}" in reason, (field, kind, reason)

    assert found_in_tables(up) == []
    letters = dead_letters(broker, prefix + "llm.calls.dlq", len(bad) + 1)
    assert len(letters) == len(bad) + 1
    for value, headers in letters:
        for fragment in FRAGMENTS:
            assert fragment.encode() not in value and all(fragment.encode() not in h for h in headers.values())
    assert b"[redacted e-mail]" in b"".join(value for value, _ in letters)
    log = up.log.read_text()
    assert [fragment for fragment in FRAGMENTS if fragment in log] == []


def test_with_the_user_id_key_the_worker_stores_the_sdks_pseudonym_not_the_id(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    key = "a-worker-key-of-32-characters-xx"
    up = start_up(SPENDSTREAM_USER_ID_KEY=key)
    prefix = up.env["SPENDSTREAM_TOPIC_PREFIX"]
    already = pseudonymize("someone", key.encode())
    send(broker, prefix + "llm.calls", [
        call(event_id="raw-email", user_id=CANARIES["e-mail"]),
        call(event_id="raw-phone", userId=CANARIES["phone"]),
        call(event_id="sdk", user_id=already),
    ])  # fmt: skip
    assert up.wait_for("SELECT count() FROM llm_calls", 3) == 3
    stored = dict(up.client().query("SELECT event_id, user_id FROM llm_calls").result_rows)
    assert stored == {
        "raw-email": pseudonymize(CANARIES["e-mail"], key.encode()),
        "raw-phone": pseudonymize(CANARIES["phone"], key.encode()),
        "sdk": already,
    }
    assert up.wait_for("SELECT sum(calls) FROM rollup_minute WHERE dimension = 'user_id'", 3) == 3
    assert found_in_tables(up) == []


def test_refused_bytes_are_redacted_whatever_their_form_and_numeric_ids_kept(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    # a tag-style phone number and a key-like token in malformed JSON, an array, UTF-16 bytes; an
    # international number (00 and a country code) in team, tenant_id and tool_name
    up = start_up()
    prefix = up.env["SPENDSTREAM_TOPIC_PREFIX"]
    token, phone = "AbCdEfGh1234567890AbCdEfGh123456", "4155550199"
    tags = json.dumps({"n": token, "m": phone})
    event = json.dumps(call(event_id="utf16", tags={"n": token, "m": phone}))
    raws = [
        f'{{"event_id": "malformed", "tags": {tags}, "bad": 1'.encode(),
        f'[{{"event_id": "array", "tags": {tags}}}]'.encode(),
        event.encode("utf-16"),
        event.encode("utf-16-le"),
        *(json.dumps(call(event_id=f"intl-{f}", **{f: "00447946095812"})).encode() for f in ("team", "tenant_id")),
        json.dumps(call(event_id="intl-tool", kind="tool", tool_name="0044 7946 095812")).encode(),
    ]
    kept = call(event_id="numeric", tenant_id=phone, team="100234")
    producer = KafkaProducer(bootstrap_servers=broker)
    for raw in [*raws, json.dumps(kept).encode()]:
        producer.send(prefix + "llm.calls", raw)
    producer.flush()
    producer.close()

    assert up.wait_for("SELECT count() FROM rejected_events", len(raws)) == len(raws)
    assert up.wait_for("SELECT count() FROM llm_calls", 1) == 1
    assert up.client().query("SELECT tenant_id, team FROM llm_calls").result_rows == [(phone, "100234")]
    reasons = dict(up.client().query("SELECT event_id, reason FROM rejected_events").result_rows)
    for field in ("team", "tenant_id"):
        assert reasons[f"intl-{field}"].startswith(f"{field} looks like a phone number"), reasons
    assert reasons["intl-tool"].startswith("tool_name looks like a phone number"), reasons
    fragments = [token, "7946095812", "7946 095812"]
    stored = [bytes.fromhex(raw) for (raw,) in up.client().query("SELECT hex(raw) FROM rejected_events").result_rows]
    letters = [value for value, _ in dead_letters(broker, prefix + "llm.calls.dlq", len(raws))]
    for raw in stored + letters:
        for form in ("utf-8", "utf-16-le", "utf-16-be"):
            text = raw.decode(form, "ignore")
            assert [f for f in fragments if f in text] == [], (form, raw)
        # the tag's phone number: only where it is not the numeric tenant id kept above
        assert phone.encode() not in raw and phone.encode("utf-16-le") not in raw, raw
