"""A model with no known price: its calls are stored unpriced and one ``unpriced_model`` alert is raised."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from producers import Emitter
from schemas import Alert
from tests.conftest import UpProcess
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration


def test_an_unpriced_model_raises_one_alert_per_day_with_what_to_do(
    start_up: Callable[..., UpProcess], broker: str, slack: SlackStandIn, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(
        "alerts:\n  routes:\n    - match: {kind: loop_detected}\n      channel: '#agent-loops'\n"
        "    - channel: '#llm-costs'\n"
    )
    up = start_up(
        SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_SLACK_BOT_TOKEN="xoxb-test", SPENDSTREAM_SLACK_API_URL=slack.url
    )
    prefix = up.env["SPENDSTREAM_TOPIC_PREFIX"]
    emitter = Emitter(broker, topic=prefix + "llm.calls")
    for n in range(30):
        model = "in-house-llm" if n % 2 else "gpt-4o"
        provider = "selfhost" if n % 2 else "openai"
        emitter.emit_raw(
            json.dumps({"event_id": f"u-{n}", "ts": datetime.now(UTC).isoformat(), "provider": provider,
                        "model": model, "feature": "support.triage", "input_tokens": 900}).encode()
        )  # fmt: skip
        if n == 14:
            emitter.flush()  # two batches at least: the alert is raised once, not per batch
    assert emitter.close().delivered == 30

    assert up.wait_for("SELECT count() FROM llm_calls", 30) == 30
    assert up.wait_for("SELECT count() FROM alerts FINAL", 1) == 1
    kind, key, severity, message, query = (
        up.client().query("SELECT kind, key, severity, message, query FROM alerts FINAL").result_rows[0]
    )
    assert (kind, key, severity) == ("unpriced_model", "selfhost/in-house-llm", "warning")
    assert "spendstream reprice --since" in message and "--model in-house-llm" in message
    drill_down = up.client().query(query).result_rows
    assert drill_down == [("support.triage", 15, 13500, 0)]

    consumer = KafkaConsumer(
        prefix + "spendstream.alerts", bootstrap_servers=broker, auto_offset_reset="earliest",
        consumer_timeout_ms=15_000, group_id=f"a-{uuid.uuid4().hex[:6]}", session_timeout_ms=6000,
    )  # fmt: skip
    published = [Alert.model_validate_json(message.value) for message in consumer]
    consumer.close()
    assert [(a.kind, a.key) for a in published] == [("unpriced_model", "selfhost/in-house-llm")]

    # the alerter of `up` posts it to the channel of the first route that matches
    assert up.wait_for("SELECT any(delivery_state) FROM alerts FINAL", "delivered") == "delivered"
    assert slack.channels() == ["#llm-costs"]
    assert "in-house-llm" in slack.posted[0].text
