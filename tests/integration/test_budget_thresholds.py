"""Budget thresholds end to end: ``spendstream up`` raises 75/90/100/120% once each, routes them to their
channels (the Slack stand-in), and the SDK's guard throttles, downgrades, then denies as spend crosses.

Real tansu broker, real chDB; calls are priced by overrides, so every amount is exact.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from producers import BudgetExceededError
from tests.conftest import UpProcess
from tests.integration.test_budgets import PRICES, cent_call, guarded_sdk, wait_state
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
