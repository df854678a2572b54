"""Event fields reach Slack as text, never as Slack markup: no mentions, no links under a sender's label."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerting.mrkdwn import code, escape, safe_blocks
from alerting.slack import blocks_for, text_of
from producers import Emitter
from schemas.alert import Alert, alert_id_for
from tests.conftest import UpProcess
from tests.slack_standin import Posted, SlackStandIn

HOSTILE_MODEL = "<!channel> <https://evil.example/login|Re-authenticate Slack> & <@U123>"
_MARKUP = re.compile(r"<[!@#]|<(?:https?|mailto):")


def all_text(posted: Posted) -> str:
    """Every text Slack would render of a posted message: the notification and each mrkdwn text."""
    texts = [posted.text]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                texts.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(posted.blocks or [])
    return "\n".join(texts)


def test_escape_neutralises_slack_control_characters_and_links() -> None:
    assert escape("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert escape("<!here>") == "&lt;!here&gt;"
    assert escape("see https://evil.example/x now") == "see `https://evil.example/x` now"
    assert escape("www.evil.example") == "`www.evil.example`"
    assert code("a`b") == "`a'b`"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "<!channel>"}}, {"type": "divider"}]
    assert safe_blocks(blocks) == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "&lt;!channel&gt;"}},
        {"type": "divider"},
    ]
    assert blocks[0]["text"]["text"] == "<!channel>"  # the caller's blocks are left as they were


def test_an_alert_about_a_hostile_key_renders_without_markup() -> None:
    dedup = f"unpriced_model:model:{HOSTILE_MODEL}"
    alert = Alert(
        alert_id=alert_id_for(dedup), ts=datetime.now(UTC), kind="unpriced_model", severity="warning",
        dimension="model", key=HOSTILE_MODEL, value=1, window="1d", message=f"no price for {HOSTILE_MODEL}",
        query=f"SELECT * FROM llm_calls WHERE model = '{HOSTILE_MODEL}' AND ts > now() - 1", dedup_key=dedup,
    )  # fmt: skip
    rendered = Posted("#c", escape(text_of([alert])), safe_blocks(blocks_for(alert)), "1", None)
    assert _MARKUP.search(all_text(rendered)) is None


@pytest.mark.integration
def test_a_model_named_like_a_phishing_link_reaches_slack_as_text(
    start_up: Callable[..., UpProcess], broker: str, slack: SlackStandIn, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text("alerts:\n  group_wait_seconds: 0\n  routes:\n    - channel: '#llm-costs'\n")
    up = start_up(
        SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_SLACK_BOT_TOKEN="xoxb-test", SPENDSTREAM_SLACK_API_URL=slack.url
    )
    emitter = Emitter(broker, topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    for n in range(3):
        emitter.emit_raw(
            json.dumps({"event_id": f"h-{n}", "ts": datetime.now(UTC).isoformat(), "provider": "selfhost",
                        "model": HOSTILE_MODEL, "feature": "support.triage", "input_tokens": 900}).encode()
        )  # fmt: skip
    assert emitter.close().delivered == 3
    assert up.wait_for("SELECT any(delivery_state) FROM alerts FINAL", "delivered") == "delivered"
    assert slack.posted, "nothing was posted"
    for posted in slack.posted:
        text = all_text(posted)
        assert _MARKUP.search(text) is None, text
        assert "&lt;!channel&gt;" in text and "`https://evil.example/login|Re-authenticate`" in text
