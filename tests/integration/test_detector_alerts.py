"""The demo's staged incidents through `spendstream up`: the detectors catch each, Slack gets one thread each."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from producers.demo_incidents import LOOP_SESSION, REGRESSED_FEATURE, SLOW_MODEL, SPIKE_FEATURE
from tests.conftest import UpProcess
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration

CONFIG = """
alerts:
  group_wait_seconds: 1
  routes:
    - match: {kind: loop_detected}
      channel: "#agent-loops"
    - match: {severity: critical}
      channel: "#llm-oncall"
    - channel: "#llm-costs"
"""
EXPECTED = {
    ("loop_detected", "session_id", LOOP_SESSION),
    ("latency_p95", "model", SLOW_MODEL),
    ("prompt_version_regression", "prompt_version", f"{REGRESSED_FEATURE}@v2"),
    ("spend_spike", "feature", SPIKE_FEATURE),
    ("hourly_burn", "feature", SPIKE_FEATURE),
}


def test_staged_incidents_reach_their_channels_once_and_controls_stay_quiet(
    start_up: Callable[..., UpProcess], slack: SlackStandIn, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(CONFIG)
    up = start_up(
        SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_SLACK_BOT_TOKEN="xoxb-test", SPENDSTREAM_SLACK_API_URL=slack.url
    )
    done = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "demo", "--days", "7", "--no-live"],
        env=up.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    deadline = time.monotonic() + 240
    raised: set[tuple[str, str, str]] = set()
    while time.monotonic() < deadline and not raised >= EXPECTED:
        rows = up.client().query("SELECT kind, dimension, key FROM alerts FINAL WHERE status = 'firing'").result_rows
        raised = {tuple(row) for row in rows}  # type: ignore[misc]
        time.sleep(2)
    assert raised >= EXPECTED, f"missing: {EXPECTED - raised}"
    # the controls: the support agent's other sessions, the code reviews, the other prompt rollouts
    assert not [r for r in raised if r[2] in ("support.ticket_reply", "eng.code_review", "claude-haiku-4-5")]
    assert not [r for r in raised if r[0] == "loop_detected" and r[2] != LOOP_SESSION]
    assert not [r for r in raised if r[0] == "prompt_version_regression" and r[2] != f"{REGRESSED_FEATURE}@v2"]

    pending = "SELECT countIf(delivery_state = 'pending') FROM alerts FINAL"
    assert up.wait_for(pending, 0, timeout=120) == 0, (
        up.client()
        .query(
            "SELECT kind, key, status, severity, ts, delivery_error FROM alerts FINAL WHERE delivery_state = 'pending'"
        )
        .result_rows
    )
    loops = [p for p in slack.messages() if p.channel == "#agent-loops"]
    assert len(loops) == 1 and LOOP_SESSION in loops[0].text
    # the loop ended (its session went quiet): said in the thread of its message, not in a new one
    assert [r for r in slack.replies_to(loops[0]) if "Resolved" in r.text or "resolved" in r.text]
    oncall = [p.text for p in slack.messages() if p.channel == "#llm-oncall"]
    assert any(SLOW_MODEL in text for text in oncall)
    # grouping: fewer messages than alerts; every alert was delivered to the channel of its route
    alerts = up.scalar("SELECT count() FROM alerts FINAL WHERE delivery_state = 'delivered'")
    assert 5 <= len(slack.messages()) < alerts  # type: ignore[operator]
    assert set(slack.channels()) == {"#agent-loops", "#llm-oncall", "#llm-costs"}
