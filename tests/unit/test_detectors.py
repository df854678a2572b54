"""The detectors on the demo's days of traffic: each staged incident raises its alert, the controls stay quiet."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import cache

import pyarrow as pa
import pytest

from producers.demo import DemoTraffic
from producers.demo_incidents import (
    LOOP_SESSION,
    REGRESSED_FEATURE,
    SLOW_MODEL,
    SPIKE_FEATURE,
    DemoIncidents,
)
from schemas.alert import Alert
from schemas.call_event import CallEvent
from schemas.config import DetectorsConfig, LatencyConfig, SessionBudgetConfig, SessionCap
from sinks import call_block
from streams.detectors import calls as c
from streams.detectors import engine
from streams.detectors.engine import Detectors
from streams.detectors.errors import wilson_lower
from tests.demo_calls import NOW, demo_calls, priced


@cache
def demo_alerts(with_incidents: bool) -> tuple[Alert, ...]:
    detectors = Detectors(DetectorsConfig())
    alerts: list[Alert] = []
    for batch in demo_calls(DemoIncidents.before(NOW) if with_incidents else None):
        alerts.extend(detectors.observe(priced(batch).calls.columns))
    return tuple(alerts)


def firing(alerts: tuple[Alert, ...]) -> set[tuple[str, str, str]]:
    return {(a.kind, a.dimension, a.key) for a in alerts if a.status == "firing"}


def test_each_staged_incident_raises_its_alert_at_the_time_it_happened() -> None:
    incidents = DemoIncidents.before(NOW)
    alerts = demo_alerts(True)
    raised = firing(alerts)

    def first(kind: str, dimension: str, key: str) -> Alert:
        return next(a for a in alerts if (a.kind, a.dimension, a.key) == (kind, dimension, key))

    loop = first("loop_detected", "session_id", LOOP_SESSION)
    assert loop.ts - incidents.loop_start < timedelta(minutes=2)
    assert "same prompt" in loop.message and loop.severity == "critical"
    assert any("order_status" in a.message for a in alerts if a.key == LOOP_SESSION and a.status == "firing")
    slow = first("latency_p95", "model", SLOW_MODEL)
    assert timedelta(0) <= slow.ts - incidents.slow_window[0] < timedelta(minutes=3)
    assert slow.severity == "critical" and slow.value > 30_000
    regression = first("prompt_version_regression", "prompt_version", f"{REGRESSED_FEATURE}@v2")
    assert regression.ts < incidents.anchor and "tokens" in regression.message
    spike = first("spend_spike", "feature", SPIKE_FEATURE)
    burn = first("hourly_burn", "feature", SPIKE_FEATURE)
    assert incidents.spike_window[0] < burn.ts < spike.ts < incidents.spike_window[1] + timedelta(hours=1)
    # the spike's user and tenant are named too; a loop resolves once its session went quiet
    assert any(kind == "hourly_burn" and dim == "user_id" for kind, dim, _ in raised)
    assert any(a.status == "resolved" and a.key == LOOP_SESSION for a in alerts)


def test_the_controls_stay_quiet() -> None:
    raised = firing(demo_alerts(True))
    quiet_features = {"support.ticket_reply", "eng.code_review"}
    quiet_models = {"claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o-mini", "text-embedding-3-small"}
    assert not {r for r in raised if r[2] in quiet_features | quiet_models}
    # other prompt rollouts (same cost per call) do not look like a regression
    assert {r[2] for r in raised if r[0] == "prompt_version_regression"} == {f"{REGRESSED_FEATURE}@v2"}
    assert not {r for r in raised if r[0] in ("error_rate", "unattributed_spend", "tenant_concentration")}
    # every alert belongs to one of the four incidents
    slow_features = {"sales.email_draft", "sales.crm_followup", "sales.proposal_summary", SPIKE_FEATURE}
    for kind, dimension, key in raised:
        if kind == "latency_p95":
            assert key == SLOW_MODEL or key in slow_features
        elif kind in ("spend_spike", "hourly_burn"):  # the spike, and who and what it ran on
            spike = {"feature": SPIKE_FEATURE, "tenant_id": "tenant_initech", "model": "gpt-4o",
                     "team": "sales-eng", "agent_id": "sales_copilot"}  # fmt: skip
            assert spike.get(dimension, key) == key
    assert len({key for _, dimension, key in raised if dimension == "user_id"}) == 1


def test_the_controls_stay_quiet_when_the_history_starts_before_a_weekend() -> None:
    """The demo run on a Friday: Monday's ordinary traffic, against a baseline of little more than a weekend."""
    friday = datetime(2026, 11, 20, 12, 45, tzinfo=UTC)
    detectors = Detectors(DetectorsConfig())
    alerts: list[Alert] = []
    for batch in demo_calls(DemoIncidents.before(friday), now=friday):
        alerts.extend(detectors.observe(priced(batch).calls.columns))
    raised = firing(tuple(alerts))
    quiet = {"support.ticket_reply", "eng.code_review", "claude-haiku-4-5"}
    assert not {r for r in raised if r[2] in quiet or (r[0] == "loop_detected" and r[2] != LOOP_SESSION)}


def test_the_same_traffic_without_incidents_raises_nothing() -> None:
    assert demo_alerts(False) == ()


def test_an_incident_is_raised_once_while_it_lasts() -> None:
    alerts = demo_alerts(True)
    loop = [a for a in alerts if a.key == LOOP_SESSION]
    assert [a.status for a in loop] == ["firing", "resolved"]
    assert len({a.alert_id for a in alerts}) == len(alerts)


def test_a_replay_in_other_batches_raises_the_same_alerts() -> None:
    again = Detectors(DetectorsConfig())
    replayed: list[Alert] = []
    for batch in demo_calls(DemoIncidents.before(NOW), size=1700):
        replayed.extend(again.observe(priced(batch).calls.columns))
    assert [a.alert_id for a in replayed] == [a.alert_id for a in demo_alerts(True)]


def session_call(n: int, tool: str, at: datetime, **extra: object) -> CallEvent:
    return CallEvent.model_validate(
        {"event_id": f"e{n}", "ts": at, "provider": "internal", "model": tool, "kind": "tool", "tool_name": tool,
         "session_id": "s-1", "agent_id": "a", "feature": "f", "cost_usd": 0.001, **extra}
    )  # fmt: skip


def test_session_caps_come_from_the_config_per_feature_or_agent() -> None:
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    tools = ["search", "fetch", "search", "fetch", "summarize"] * 4  # varied tools, 20 tool calls
    calls = [session_call(n, tool, start + timedelta(seconds=n)) for n, tool in enumerate(tools)]
    rows = priced(calls).calls.columns

    capped = Detectors(
        DetectorsConfig(session_budget=SessionBudgetConfig(caps=[SessionCap(feature="f", max_tool_calls=15)]))
    )
    other = Detectors(
        DetectorsConfig(session_budget=SessionBudgetConfig(caps=[SessionCap(agent_id="b", max_tool_calls=15)]))
    )

    raised = capped.observe(rows)
    assert [(a.kind, a.key) for a in raised] == [("session_budget", "s-1")]
    assert "20 tool calls (the cap of feature f is 15 tool calls)" in raised[0].message
    assert other.observe(rows) == []  # caps of another agent; varied tools are no loop
    assert Detectors(DetectorsConfig()).observe(rows) == []  # no caps set, no history: nothing to compare with


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_demos_ordinary_sessions_never_page_with_any_seed(seed: int) -> None:
    """A support session resends its history each turn; however the dice fall, it is no loop and no outlier."""
    start = datetime(2026, 11, 17, 8, tzinfo=UTC)  # a Tuesday's busiest twelve hours
    traffic = DemoTraffic(seed=seed)
    calls = sorted(
        (call for request in traffic.requests_between(start, start + timedelta(hours=12)) for call in request.calls),
        key=lambda call: call.ts,
    )
    detectors = Detectors(DetectorsConfig(session_budget=SessionBudgetConfig(min_history_sessions=10)))
    raised = [
        a for a in detectors.observe(priced(calls).calls.columns) if a.kind in ("loop_detected", "session_budget")
    ]
    assert not raised, raised[0].message


def test_latency_needs_enough_calls_and_counts_successful_calls_only() -> None:
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    slow = [
        CallEvent.model_validate({"event_id": f"s{n}", "ts": start + timedelta(seconds=n), "provider": "p",
                                  "model": "m", "feature": "f", "latency_ms": 40_000.0,
                                  "status": "timeout" if n % 2 else "success"})
        for n in range(24)
    ]  # fmt: skip
    config = DetectorsConfig(latency_p95=LatencyConfig(min_calls=12))
    raised = [a for a in Detectors(config).observe(priced(slow).calls.columns) if a.kind == "latency_p95"]
    assert {(a.dimension, a.key, a.severity) for a in raised} == {
        ("model", "m", "critical"),
        ("feature", "f", "critical"),
    }
    too_few = Detectors(config).observe(priced(slow[:20]).calls.columns)  # 10 successful calls
    assert [a for a in too_few if a.kind == "latency_p95"] == []


@pytest.mark.parametrize(
    ("failures", "calls", "fires"), [(3, 20, False), (10, 20, True), (30, 300, False), (60, 300, True)]
)
def test_error_share_fires_only_when_surely_above_the_threshold(failures: int, calls: int, fires: bool) -> None:
    assert (wilson_lower(failures, calls) > 0.1) is fires


def test_a_regressed_prompt_version_replaced_by_a_newer_one_is_resolved() -> None:
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)

    def version(name: str, tokens: int, minute: int) -> list[CallEvent]:
        return [
            CallEvent.model_validate({"event_id": f"{name}-{n}", "ts": start + timedelta(minutes=minute, seconds=n),
                                      "provider": "openai", "model": "gpt-4o", "feature": "sales.brief",
                                      "prompt_version": name, "input_tokens": tokens, "output_tokens": 100})
            for n in range(60)
        ]  # fmt: skip

    detectors = Detectors(DetectorsConfig())
    raised = [
        (a.key, a.status)
        for batch in [version("v1", 1000, 0), version("v2", 3000, 2), version("v3", 1000, 4)]
        for a in detectors.observe(priced(batch).calls.columns)
        if a.kind == "prompt_version_regression"
    ]

    assert raised == [("sales.brief@v2", "firing"), ("sales.brief@v2", "resolved")]


def test_a_quiet_partition_with_records_still_to_read_holds_the_clock_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "IDLE_PARTITION_SECONDS", 0.05)
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)

    def rows_of(partition: int, at: datetime) -> pa.Table:
        event = CallEvent.model_validate({"event_id": f"p{partition}-{at:%H%M}", "ts": at, "provider": "openai",
                                          "model": "gpt-4o", "feature": "f", "input_tokens": 10})  # fmt: skip
        rows = priced([event]).calls.rows
        return call_block.table(
            [(*row[: c.SOURCE_PARTITION], partition, *row[c.SOURCE_PARTITION + 1 :]) for row in rows]
        )

    def clock(lagging: frozenset[int]) -> float:
        detectors = Detectors(DetectorsConfig())
        detectors.observe(rows_of(1, start))
        time.sleep(0.1)  # partition 1 has been quiet longer than the idle time
        detectors.observe(rows_of(0, start + timedelta(hours=2)), lagging=lagging)
        return detectors.now_of["real"]

    assert clock(frozenset()) == (start + timedelta(hours=2)).timestamp()  # idle: it no longer holds the clock
    assert clock(frozenset({1})) == start.timestamp()  # starved, not idle: its calls are still to come
