"""Alert routes: the first matching route takes an alert; a bad route is refused with the field and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.routes import channel_for
from schemas.alert import Alert
from schemas.config import load_config
from schemas.exceptions import ConfigError

CONFIG = """
alerts:
  routes:
    - match: {kind: loop_detected}
      channel: "#agent-loops"
    - match: {severity: critical}
      channel: "#llm-oncall"
    - match: {dimension: tenant_id, key: "tenant_acme*"}
      channel: "#acme-account"
    - channel: "#llm-costs"        # everything else
"""


def alert(kind: str = "spend_spike", severity: str = "warning", dimension: str = "feature", key: str = "x") -> Alert:
    return Alert.model_validate(
        {"alert_id": "a", "ts": datetime.now(UTC), "kind": kind, "severity": severity, "dimension": dimension,
         "key": key, "value": 1.0, "window": "1h", "message": "m", "query": "SELECT 1", "dedup_key": "d"}
    )  # fmt: skip


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spendstream.yaml"
    path.write_text(text)
    return path


def test_the_first_matching_route_takes_the_alert(tmp_path: Path) -> None:
    routes = load_config(write(tmp_path, CONFIG)).alerts.routes
    assert channel_for(alert(kind="loop_detected", severity="critical"), routes) == "#agent-loops"
    assert channel_for(alert(severity="critical"), routes) == "#llm-oncall"
    assert channel_for(alert(dimension="tenant_id", key="tenant_acme_eu"), routes) == "#acme-account"
    assert channel_for(alert(dimension="tenant_id", key="tenant_globex"), routes) == "#llm-costs"
    assert channel_for(alert(), routes[:3]) is None


ROUTE = "alerts:\n  routes:\n    "
DETECTORS = "detectors:\n  "


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (ROUTE + "- match: {kind: loops}\n      channel: '#x'", "alerts.routes.0.match.kind", "Input should be"),
        (ROUTE + "- channel: 'llm costs'", "alerts.routes.0.channel", "should match pattern"),
        (ROUTE + "- match: {severity: high}\n      channel: '#x'", "alerts.routes.0.match.severity", "Input should be"),
        (ROUTE + "- channel: '#x'\n      chanel: '#y'", "alerts.routes.0.chanel", "unknown field"),
        (ROUTE + "- channel: '#x'\n      webhook_env: 'https://hooks'", "alerts.routes.0.webhook_env", "pattern"),
        (ROUTE + "- {channel: '#x', webhook_env: A}\n    - {channel: '#x'}", "alerts", "disagree on webhook_env"),
        (DETECTORS + "spend_spike: {min_excess_usd: -5}", "detectors.spend_spike.min_excess_usd", "or equal to 0"),
        (DETECTORS + "loop_detected: {same_tool_share: 1.5}", "detectors.loop_detected.same_tool_share", "equal to 1"),
        (DETECTORS + "latency_p95: {warning_ms: 20000, critical_ms: 10000}", "detectors", "must not be below"),
        (DETECTORS + "hourly_burn: {dimensions: [colour]}", "detectors.hourly_burn.dimensions.0", "Input should be"),
        (DETECTORS + "error_rate: {thresold: 0.2}", "detectors.error_rate.thresold", "unknown field"),
        (DETECTORS + "loop_detected: {max_tokens: 20000}", "detectors.loop_detected", "session_budget.caps"),
        (DETECTORS + "session_budget: {caps: [{max_tokens: 5}]}", "detectors.session_budget.caps.0", "agent_id"),
        (DETECTORS + "session_budget: {caps: [{feature: f}]}", "detectors.session_budget.caps.0", "at least one"),
    ],
)  # fmt: skip
def test_a_bad_route_or_threshold_is_refused_with_the_file_field_and_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(path) in str(refused.value) and field in str(refused.value) and reason in str(refused.value)


def test_thresholds_are_read_from_the_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "detectors:\n  loop_detected: {min_run: 4}\n  session_budget: {caps: [{agent_id: coder, max_tool_calls: 40}]}\n"
        "alerts:\n  group_wait_seconds: 2\n",
    )
    config = load_config(path)
    assert config.detectors.loop_detected.min_run == 4
    assert config.detectors.loop_detected.tool_window == 15  # the rest keeps its default
    assert [(c.agent_id, c.max_tool_calls, c.max_tokens) for c in config.detectors.session_budget.caps] == [
        ("coder", 40, None)
    ]
    assert config.alerts.group_wait_seconds == 2
