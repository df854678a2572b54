"""The demo traffic: realistic, deterministic per seed, and sent only when its time has come."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson

from producers.demo import SALES_FEATURES, DemoRunner, DemoTraffic
from schemas.call_event import CallEvent
from schemas.outcome_event import OutcomeEvent

# a Tuesday afternoon: busy hours
START = datetime(2026, 11, 17, 12, tzinfo=UTC)


class Sent:
    def __init__(self) -> None:
        self.calls: list[CallEvent] = []
        self.raw: list[bytes] = []

    def emit(self, event: CallEvent) -> None:
        self.calls.append(event)

    def emit_raw(self, value: bytes, key: str | None = None) -> None:
        self.raw.append(value)


def day_of_requests(seed: int = 7) -> list[CallEvent]:
    traffic = DemoTraffic(seed=seed)
    return [c for r in traffic.requests_between(START, START + timedelta(hours=6)) for c in r.calls]


def test_the_same_seed_sends_the_same_traffic() -> None:
    first, again, other = day_of_requests(), day_of_requests(), day_of_requests(seed=8)
    assert [c.model_dump() for c in first] == [c.model_dump() for c in again]
    assert [c.event_id for c in first] != [c.event_id for c in other]


def test_traffic_covers_the_workloads_providers_and_failure_modes() -> None:
    calls = day_of_requests()
    features = Counter(c.feature for c in calls)
    assert set(SALES_FEATURES) | {"support.ticket_reply", "eng.code_review"} == set(features)
    assert {c.provider for c in calls} == {"openai", "anthropic", "google", "internal"}
    assert {c.agent_id for c in calls} >= {
        "sales_copilot",
        "support_agent",
        "coordinator",
        "code_agent",
        "syntax_analyzer",
    }
    assert len({c.tenant_id for c in calls}) == 5 and len({c.user_id for c in calls if c.user_id}) > 20
    assert all(c.user_id is None or c.user_id.startswith("u_") for c in calls)  # pseudonymous
    assert any(c.kind == "tool" for c in calls) and any(c.ttft_ms for c in calls)
    retried = [c for c in calls if c.attempt == 2]
    assert retried and all(c.status in ("success", "error") for c in retried)
    assert {c.status for c in calls} >= {"success", "rate_limited", "timeout", "error"}
    assert {c.data_mode for c in calls} == {"demo"}


def test_every_call_but_the_root_points_to_a_call_of_its_own_trace() -> None:
    traffic = DemoTraffic(seed=3)
    for request in traffic.requests_between(START, START + timedelta(hours=2)):
        ids = {c.event_id: c.trace_id for c in request.calls}
        roots = {c.trace_id for c in request.calls if c.parent_id is None}
        for call in request.calls:
            assert call.parent_id is None or ids[call.parent_id] == call.trace_id
        assert {c.trace_id for c in request.calls} == roots


def test_coordinator_requests_delegate_two_levels_down() -> None:
    traffic = DemoTraffic(seed=5)
    requests = [
        r
        for r in traffic.requests_between(START, START + timedelta(hours=6))
        if r.calls[0].feature == "eng.code_review"
    ]
    assert requests
    for request in requests:
        by_id = {c.event_id: c for c in request.calls}
        analyzer = next(c for c in request.calls if c.agent_id == "syntax_analyzer")
        assert analyzer.parent_id is not None
        coder = by_id[analyzer.parent_id]
        assert coder.agent_id == "code_agent" and coder.parent_id is not None
        assert by_id[coder.parent_id].agent_id == "coordinator"


def test_history_sends_only_what_has_happened_and_keeps_the_rest_for_live() -> None:
    calls, outcomes = Sent(), Sent()
    runner = DemoRunner(DemoTraffic(seed=11, scale=5), calls, outcomes)
    runner.history(days=0.25)
    sent_at = datetime.now(UTC)

    assert calls.calls and all(c.ts <= sent_at for c in calls.calls)
    assert runner.progress.calls == len(calls.calls) and runner.progress.outcomes == len(outcomes.raw)
    sent_outcomes = [OutcomeEvent.model_validate(orjson.loads(raw)) for raw in outcomes.raw]
    assert sent_outcomes and all(o.trace_id or o.session_id for o in sent_outcomes)
    cutoff = runner.progress.at
    assert cutoff is not None and cutoff <= sent_at
    assert all(c.ts <= cutoff for c in calls.calls)
    assert all(event.ts > cutoff for _, _, event in runner._pending)  # later calls of requests in flight
