"""The pipeline end to end: a real tansu broker, ``spendstream up`` with chDB, queried over its SQL endpoint."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer

from producers import Emitter
from schemas import CallEvent
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration


def call(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": str(uuid.uuid4()), "ts": datetime.now(UTC).isoformat(), "provider": "openai",
        "model": "gpt-4o", "feature": "sales.email_draft", "input_tokens": 1000, "output_tokens": 100,
        "latency_ms": 420.0, "session_id": f"s-{uuid.uuid4().hex[:6]}", "tenant_id": "tenant_acme",
    }  # fmt: skip
    base.update(fields)
    return base


def topic_of(up: UpProcess, name: str) -> str:
    return up.env["SPENDSTREAM_TOPIC_PREFIX"] + name


def test_events_from_the_sdk_and_an_independent_client_land_priced_and_counted_once(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    emitter = Emitter(broker, topic=topic_of(up, "llm.calls"))
    for _ in range(50):
        emitter.emit(CallEvent.model_validate(call()))
    assert emitter.close().delivered == 50

    other = KafkaProducer(bootstrap_servers=broker)
    duplicate = json.dumps(call(model="claude-sonnet-4-5", provider="anthropic", feature="support.triage")).encode()
    for _ in range(3):  # the same event_id three times: a producer retrying
        other.send(topic_of(up, "llm.calls"), duplicate)
    for _ in range(49):  # the common SaaS payload, camelCase
        saas = {
            "externalRequestId": str(uuid.uuid4()), "ts": int(time.time() * 1000), "provider": "openai",
            "model": "gpt-4o", "endpointTag": "sales.crm_followup", "inputTokens": 2000, "outputTokens": 10,
            "latencyMs": 300, "dataMode": "real", "tenant_id": "tenant_acme",
        }  # fmt: skip
        other.send(topic_of(up, "llm.calls"), json.dumps(saas).encode())
    other.flush()
    other.close()

    assert up.wait_for("SELECT count() FROM llm_calls", 100) == 100
    assert up.scalar("SELECT countIf(priced = 1 AND cost_usd > 0) FROM llm_calls") == 100
    assert up.scalar("SELECT round(sum(cost_usd), 6) FROM llm_calls WHERE feature = 'sales.email_draft'") == 0.175
    assert up.scalar("SELECT round(sum(cost_usd), 6) FROM llm_calls WHERE feature = 'sales.crm_followup'") == 0.2499
    assert up.wait_for("SELECT sum(calls) FROM rollup_day WHERE dimension = 'all'", 100) == 100
    triage = "SELECT sum(calls) FROM rollup_hour WHERE dimension = 'feature' AND key = 'support.triage'"
    assert up.wait_for(triage, 1) == 1
    assert up.wait_for("SELECT sum(calls) FROM rollup_minute WHERE dimension = 'tenant_id'", 100) == 100


def test_the_end_of_a_burst_is_stored_at_once_not_after_batch_seconds(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    # Batches of at most 200 events, cut after a minute when not full: a burst of 1,050 fills several,
    # and what is left over is stored once the worker has read everything, not a minute later.
    up = start_up(SPENDSTREAM_BATCH_SIZE="200", SPENDSTREAM_BATCH_SECONDS="60")
    emitter = Emitter(broker, topic=topic_of(up, "llm.calls"))
    for _ in range(1_050):
        emitter.emit(CallEvent.model_validate(call()))
    assert emitter.close().delivered == 1_050

    assert up.wait_for("SELECT count() FROM llm_calls", 1_050, timeout=40) == 1_050
    assert up.wait_for("SELECT sum(calls) FROM rollup_minute WHERE dimension = 'all'", 1_050, timeout=5) == 1_050


def test_bad_input_is_kept_with_a_reason_and_the_pipeline_keeps_going(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up(SPENDSTREAM_MAX_EVENT_BYTES="4096")
    producer = KafkaProducer(bootstrap_servers=broker, max_request_size=10_000_000)
    calls_topic = topic_of(up, "llm.calls")
    producer.send(calls_topic, b'{"event_id": "broken", "ts": ')
    producer.send(calls_topic, json.dumps(call(event_id="negative", input_tokens=-3)).encode())
    producer.send(calls_topic, json.dumps(call(event_id="huge", tags={"pad": "x" * 100})).encode() + b" " * 8000)
    for _ in range(10):
        producer.send(calls_topic, json.dumps(call()).encode())
    producer.flush()
    producer.close()

    assert up.wait_for("SELECT count() FROM llm_calls", 10) == 10
    assert up.wait_for("SELECT count() FROM rejected_events", 3) == 3
    reasons = dict(up.client().query("SELECT error_kind, reason FROM rejected_events").result_rows)
    assert reasons["malformed_json"].startswith("event: Invalid JSON")
    assert reasons["schema"] == "input_tokens: Input should be greater than or equal to 0"
    assert "over the limit of 4096" in reasons["oversize"]
    assert up.scalar("SELECT event_id FROM rejected_events WHERE error_kind = 'schema'") == "negative"

    consumer = KafkaConsumer(
        topic_of(up, "llm.calls.dlq"), bootstrap_servers=broker, auto_offset_reset="earliest",
        consumer_timeout_ms=15_000, group_id=f"dlq-{uuid.uuid4().hex[:6]}", session_timeout_ms=6000,
    )  # fmt: skip
    dead = []
    for message in consumer:
        dead.append(dict(message.headers)["error_kind"].decode())
        if len(dead) == 3:
            break
    consumer.close()
    assert sorted(dead) == ["malformed_json", "oversize", "schema"]


def test_a_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    start_up: Callable[..., UpProcess], broker: str, tmp_path
) -> None:
    home = tmp_path / "home"
    up = start_up(home=home)
    total = 20_000
    emitter = Emitter(broker, topic=topic_of(up, "llm.calls"))
    for n in range(total):
        emitter.emit_raw(json.dumps(call(event_id=f"k-{n}")).encode(), f"s{n % 97}")
        if n == total // 2:
            emitter.flush()
            deadline = time.monotonic() + 60
            while up.scalar("SELECT count() FROM llm_calls") == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            up.kill()  # SIGKILL while events stream in and batches are in flight
    assert emitter.close(timeout=60).delivered == total
    stored_before_restart = None

    restarted = start_up(home=home, SPENDSTREAM_TOPIC_PREFIX=up.env["SPENDSTREAM_TOPIC_PREFIX"])
    stored_before_restart = restarted.scalar("SELECT count() FROM llm_calls")
    assert 0 < stored_before_restart < total
    assert restarted.wait_for("SELECT count() FROM llm_calls", total, timeout=120) == total
    assert restarted.scalar("SELECT uniqExact(event_id) FROM llm_calls") == total
    assert restarted.wait_for("SELECT sum(calls) FROM rollup_minute WHERE dimension = 'all'", total) == total
    assert restarted.wait_for("SELECT sum(calls) FROM rollup_day WHERE dimension = 'feature'", total) == total
