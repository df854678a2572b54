"""Budget thresholds end to end: ``spendstream up`` raises 75/90/100/120% once each, routes them to their
channels (the Slack stand-in), and the SDK's guard throttles, downgrades, then denies as spend crosses.

Real tansu broker, real chDB; calls are priced by overrides, so every amount is exact.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from producers import BudgetExceededError
from tests.conftest import UpProcess
from tests.integration.test_budgets import PRICES, cent_call, guarded_sdk, wait_state
from tests.integration.test_guardrails import wait_until
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration

CONFIG = """
alerts:
  group_wait_seconds: 0
  routes:
    - {match: {kind: budget_threshold, threshold_pct: 120}, channel: "#llm-oncall"}
    - {match: {kind: budget_threshold, severity: critical}, channel: "#finance"}
    - {match: {kind: budget_threshold}, channel: "#llm-costs"}
budgets:
  - dimension: tenant_id
    key: tenant_acme
    limit_usd: 0.10
    period: day
    thresholds:
      - {at: 75}
      - {at: 90, action: throttle, throttle_seconds: 0.05}
      - {at: 100, action: downgrade, downgrade_to: small}
      - {at: 120, action: deny}
"""
SCOPE = "tenant_id=tenant_acme"


def test_thresholds_are_raised_once_each_to_their_channels_and_the_guard_throttles_then_denies(
    start_up: Callable[..., UpProcess], broker: str, slack: SlackStandIn, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(PRICES + CONFIG)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    slack.known_channels.add("#finance")
    up = start_up(
        SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_TOPIC_PREFIX=prefix, SPENDSTREAM_SLACK_BOT_TOKEN="xoxb-test",
        SPENDSTREAM_SLACK_API_URL=slack.url,
    )  # fmt: skip
    emitter, guard, tracker = guarded_sdk(broker, prefix, "sales.email_draft")
    acme = {"tenant_id": "tenant_acme"}

    assert [cent_call(tracker, **acme) for _ in range(8)] == ["large"] * 8  # $0.08: past 75%, no action yet
    emitter.flush()
    allowed = wait_state(guard, SCOPE, "allow", spent=0.08)
    assert allowed.threshold_pct == 75 and allowed.next is not None and allowed.next.state == "throttle"

    cent_call(tracker, **acme)  # $0.09: 90%
    emitter.flush()
    wait_state(guard, SCOPE, "throttle", spent=0.09)
    with tracker.attribute(**acme), tracker.track(provider="house", model="large") as throttled:
        throttled.usage(input_tokens=1000)  # $0.10: 100%
    assert throttled.decision is not None
    assert (throttled.decision.action, throttled.decision.delay_seconds) == ("throttle", 0.05)
    emitter.flush()

    wait_state(guard, SCOPE, "downgrade", spent=0.10)
    assert cent_call(tracker, **acme) == "small"  # $0.001 on the cheaper model, still throttled
    assert guard.stats().throttled == 2
    for n in range(2):  # an application without the guard spends on: $0.121, past 120%
        event = {"event_id": f"unguarded-{n}", "ts": datetime.now(UTC).isoformat(), "provider": "house",
                 "model": "large", "input_tokens": 1000, **acme}  # fmt: skip
        emitter.emit_raw(orjson.dumps(event))
    emitter.flush()
    denied = wait_state(guard, SCOPE, "deny")
    assert denied.reason.startswith(
        "tenant_id tenant_acme: $0.12 of the daily budget of $0.10 spent (121%, past the 120%"
    )
    with pytest.raises(BudgetExceededError, match="calls are denied"):
        cent_call(tracker, **acme)

    raised = up.wait_for(
        "SELECT groupArray((toUInt32(round(threshold / baseline * 100)), severity, delivery_state)) FROM "
        "(SELECT * FROM alerts FINAL WHERE kind = 'budget_threshold' ORDER BY threshold)",
        [(75, "warning", "delivered"), (90, "warning", "delivered"), (100, "critical", "delivered"),
         (120, "critical", "delivered")],
    )  # fmt: skip
    assert raised == [(75, "warning", "delivered"), (90, "warning", "delivered"), (100, "critical", "delivered"),
                      (120, "critical", "delivered")]  # fmt: skip
    posted = sorted(  # each threshold in one message (the two warnings, raised close together, may share one)
        (int(pct), p.channel)
        for p in slack.messages()
        for pct in re.findall(
            r"past the (\d+)% mark", " ".join(b["text"]["text"] for b in p.blocks or [] if "text" in b)
        )
    )
    assert posted == [(75, "#llm-costs"), (90, "#llm-costs"), (100, "#finance"), (120, "#llm-oncall")]
    emitter.close()
    guard.close()


PERIODS = """
budgets:
  - {dimension: tenant_id, key: tenant_acme, limit_usd: 0.10, period: rolling_24h}
  - {dimension: workflow, key: support.chat, limit_usd: 1, period: rolling_30d}
  - {dimension: session_id, key: "*", limit_usd: 0.05, period: rolling_30d, thresholds: [{at: 100, action: deny}]}
"""


def test_rolling_windows_sessions_and_workflows_are_counted_live_and_warmed_up_from_clickhouse(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(PRICES + PERIODS)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    up = start_up(SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_TOPIC_PREFIX=prefix, SPENDSTREAM_BUDGET_SWEEP_S="1")
    emitter, guard, _ = guarded_sdk(broker, prefix, "support.chat")
    now = datetime.now(UTC)

    def cent(event_id: str, hours_ago: float, **fields: object) -> None:
        event = {"event_id": event_id, "ts": (now - timedelta(hours=hours_ago)).isoformat(), "provider": "house",
                 "model": "large", "input_tokens": 1000, "tenant_id": "tenant_acme", **fields}  # fmt: skip
        emitter.emit_raw(orjson.dumps(event))

    cent("old", 25)  # out of the 24 hours
    cent("ancient", 31 * 24, session_id="s-gone")  # a session of last month: out of its 30 days
    for n in range(3):  # roots of the workflow, in session s-1
        cent(f"root-{n}", 23, feature="support.chat", session_id="s-1")
    for n in range(2):  # calls under root-0, tagged with its workflow by the SDK
        cent(f"child-{n}", 0, feature="kb.search", parent_id="root-0", tags={"workflow": "support.chat"},
             session_id="s-1")  # fmt: skip
    for n in range(2):
        cent(f"late-{n}", 1)
    emitter.flush()
    wait_state(guard, SCOPE, "allow", spent=0.07)  # 70%: its alert raised
    wait_state(guard, "workflow=support.chat", "allow", spent=0.05)
    session = wait_state(guard, "session_id=s-1", "deny", spent=0.05)
    assert session.period == "rolling_30d" and session.period_end is None

    # a key with no spend left in its period is forgotten, and its state removed from the topic (a tombstone)
    wait_until(lambda: "keys with no spend left in their periods forgotten" in up.log.read_text(), "swept", 30)
    wait_until(lambda: guard.state("session_id=s-gone") is None, "s-gone's state removed")
    assert guard.state("session_id=s-1") is not None
    seventy = "SELECT count() FROM alerts FINAL WHERE key = 'tenant_acme' AND window = '24h'"
    assert up.wait_for(seventy, 1) == 1
    up.stop()
    restarted = start_up(home=up.home, SPENDSTREAM_CONFIG=str(config), SPENDSTREAM_TOPIC_PREFIX=prefix)
    cent("after-restart", 0, parent_id="root-1", tags={"workflow": "support.chat"}, session_id="s-2")
    emitter.flush()
    # counted on top of the totals read back from ClickHouse, per minute and per hour
    wait_state(guard, SCOPE, "allow", spent=0.08, timeout=60)
    wait_state(guard, "workflow=support.chat", "allow", spent=0.06)
    wait_state(guard, "session_id=s-2", "allow", spent=0.01)
    time.sleep(2)  # the alerts of that settle are stored with it
    assert restarted.scalar(seventy) == 1  # still past 70% of the 24 hours: not raised again after the restart
    emitter.close()
    guard.close()
