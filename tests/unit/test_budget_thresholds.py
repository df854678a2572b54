"""Thresholds, actions and periods of budgets (pure logic: no services), and what the guard does with them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import producers._guard
import producers._track
from alerting.routes import channel_for
from producers import BudgetExceededError, BudgetGuard, Tracker
from schemas.alert import Alert
from schemas.budget import BudgetState
from schemas.config import BudgetConfig, BudgetThreshold, load_config
from schemas.exceptions import ConfigError
from sinks.batch import LLM_CALL_COLUMNS
from sinks.burn import action_past_limit, monthly_limit
from streams.budgets import BudgetBook, Budgets, Spend
from tests.unit.test_track import Collected

NOW = datetime(2026, 11, 23, 15, tzinfo=UTC)
STAGED = BudgetConfig.model_validate(
    {"dimension": "tenant_id", "key": "tenant_acme", "limit_usd": 100, "period": "month", "thresholds": [
        {"at": 75, "severity": "warning"},
        {"at": 90, "action": "throttle", "throttle_seconds": 2},
        {"at": 100, "action": "downgrade", "downgrade_to": "small"},
        {"at": 120, "severity": "critical", "action": "deny"},
    ]}
)  # fmt: skip
SCOPE = "tenant_id=tenant_acme"


def spend(n: int, cost: float, at: datetime = NOW, dimension: str = "tenant_id", key: str = "tenant_acme") -> Spend:
    return Spend(f"e{n}", at.timestamp(), dimension, key, cost, at.timestamp())


def spend_to(book: BudgetBook, total: float, at: datetime = NOW) -> tuple[BudgetState, list[Alert]]:
    """Spend up to ``total`` USD this month; the state then, and the alerts raised on the way."""
    book.add(spend(int(total * 1000), total - book.spent(SCOPE, "monthly", at), at))
    states, alerts = book.settle(at)
    return (states[-1] if states else book.state(SCOPE, at)), alerts


def test_each_threshold_raises_once_with_its_severity_and_its_action_holds_from_there_on() -> None:
    book = BudgetBook(Budgets([STAGED]))
    seen = {}
    raised: list[Alert] = []
    for total in (50, 75, 80, 90, 95, 100, 110, 120, 130):
        state, alerts = spend_to(book, total)
        seen[total] = state
        raised += alerts

    assert [(round(a.threshold or 0), a.severity, a.window) for a in raised] == [
        (75, "warning", "1mo"), (90, "warning", "1mo"), (100, "critical", "1mo"), (120, "critical", "1mo")
    ]  # fmt: skip
    assert "past the 90% mark); now the guard delays each call 2 s" in raised[1].message
    assert "past the 75% mark); from 90% the guard delays each call 2 s" in raised[0].message
    assert [seen[t].state for t in seen] == ["allow", "allow", "allow", "throttle", "throttle", "downgrade",
                                             "downgrade", "deny", "deny"]  # fmt: skip
    assert [seen[t].threshold_pct for t in seen] == [None, 75, 75, 90, 90, 100, 100, 120, 120]
    at_75 = seen[75]
    assert at_75.next is not None and (at_75.next.state, at_75.next.usd, at_75.next.at_pct) == ("throttle", 15, 90)
    downgraded = seen[110]  # throttled from 90% and downgraded from 100%: both
    assert (downgraded.downgrade_to, downgraded.throttle_seconds) == ("small", 2)
    assert downgraded.reason == (
        "tenant_id tenant_acme: $110.00 of the monthly budget of $100.00 spent (110%, past the 100% threshold): "
        "calls are downgraded to small and throttled (2 s)"
    )
    assert downgraded.next is not None and (downgraded.next.state, downgraded.next.usd) == ("deny", 10)
    assert seen[130].next is None and seen[130].remaining_usd == 0
    assert seen[130].period_end == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_budget_without_thresholds_keeps_its_single_action_from_100_percent() -> None:
    legacy = BudgetConfig(dimension="team", key="growth", daily_usd=10, action="throttle", throttle_seconds=3)
    assert [(t.at, t.action, t.alert_severity) for t in legacy.levels] == [
        (70, "alert", "warning"), (100, "throttle", "critical"), (120, "alert", "critical")
    ]  # fmt: skip
    book = BudgetBook(Budgets([legacy]))
    book.add(spend(1, 5.0, dimension="team", key="growth"))
    [half] = book.settle(NOW)[0]
    # published as before thresholds: the action and its delay ahead, no threshold fields (old guards read it)
    assert (half.state, half.action, half.throttle_seconds, half.next, half.threshold_pct) == (
        "allow", "throttle", 3, None, None
    )  # fmt: skip
    assert "next" not in half.model_dump_json(exclude_none=True)


BEFORE_THRESHOLDS = {
    "scope", "dimension", "key", "state", "action", "reason", "period", "spent_usd", "limit_usd", "remaining_usd",
    "period_end", "downgrade_to", "throttle_seconds", "updated_at",
}  # fmt: skip
"""The fields of a budget state a guard from before thresholds reads (it refuses a state with any other)."""


@pytest.mark.parametrize("action", ["alert", "throttle", "downgrade", "deny"])
@pytest.mark.parametrize("spent", [5.0, 10.0, 13.0])
def test_a_budget_without_thresholds_publishes_what_a_guard_from_before_thresholds_reads(
    action: str, spent: float
) -> None:
    budget = BudgetConfig.model_validate(
        {"dimension": "team", "key": "growth", "daily_usd": 10, "monthly_usd": 100, "action": action,
         **({"downgrade_to": "small"} if action == "downgrade" else {})}
    )  # fmt: skip
    book = BudgetBook(Budgets([budget]))
    book.add(spend(1, spent, dimension="team", key="growth"))
    [state] = book.settle(NOW)[0]
    published = orjson.loads(state.model_dump_json(exclude_none=True))
    assert set(published) <= BEFORE_THRESHOLDS and published["period"] in ("daily", "monthly")
    assert published["state"] == ("allow" if spent < 10 or action == "alert" else action)


def test_ten_cent_calls_reach_a_ten_cent_budget() -> None:
    """0.01 added ten times is 0.09999999999999999: the limit is reached all the same."""
    book = BudgetBook(Budgets([BudgetConfig(dimension="agent_id", key="coder", daily_usd=0.10, action="deny")]))
    alerts = []
    for n in range(10):
        book.add(spend(n, 0.01, dimension="agent_id", key="coder"))
        alerts += book.settle(NOW)[1]
    assert book.state("agent_id=coder", NOW).state == "deny"
    assert [round(a.threshold or 0, 2) for a in alerts] == [0.07, 0.10]


def test_a_throttling_budget_can_still_deny_at_a_later_threshold() -> None:
    budget = BudgetConfig.model_validate(
        {"dimension": "feature", "key": "*", "limit_usd": 10, "period": "day",
         "thresholds": [{"at": 90, "action": "throttle"}, {"at": 150, "action": "deny"}]}
    )  # fmt: skip
    book = BudgetBook(Budgets([budget]))
    book.add(spend(1, 12.0, dimension="feature", key="rag.answer"))
    assert (book.state("feature=rag.answer", NOW).state, book.state("feature=rag.answer", NOW).throttle_seconds) == (
        "throttle", 5.0
    )  # fmt: skip
    book.add(spend(2, 3.0, dimension="feature", key="rag.answer"))
    assert book.state("feature=rag.answer", NOW).state == "deny"


def test_a_rolling_24h_budget_lets_spend_age_out_and_raises_a_threshold_once_per_24_hours() -> None:
    budget = BudgetConfig(dimension="tenant_id", key="tenant_acme", limit_usd=10, period="rolling_24h")
    book = BudgetBook(Budgets([budget]))
    book.add(spend(1, 8.0, NOW - timedelta(hours=23, minutes=50)))
    book.add(spend(2, 3.0, NOW - timedelta(hours=1)))
    [state], alerts = book.settle(NOW)
    assert (state.spent_usd, state.period, state.period_end) == (11.0, "rolling_24h", None)
    assert [(round(a.threshold or 0), a.window) for a in alerts] == [(7, "24h"), (10, "24h")]
    assert "ts >= toDateTime('2026-11-22 15:01:00', 'UTC') GROUP BY" in alerts[0].query

    later = NOW + timedelta(minutes=15)  # the $8 left the window
    assert book.spent(SCOPE, "rolling_24h", later) == 3.0
    book.add(spend(3, 8.0, later))  # back at $11 within 24 hours of the alerts: not raised again
    assert book.settle(later)[1] == []
    next_day = NOW + timedelta(hours=24, minutes=10)
    book.add(spend(4, 3.0, next_day))  # $11 in the 24 hours to then: raised again, a day after
    assert [round(a.threshold or 0) for a in book.settle(next_day)[1]] == [7, 10]


def test_a_rolling_30d_budget_counts_per_hour_and_is_warmed_up_per_hour() -> None:
    budget = BudgetConfig(dimension="tenant_id", key="tenant_acme", limit_usd=100, period="rolling_30d")
    book = BudgetBook(Budgets([budget]))
    hour = int(NOW.timestamp() // 3600)
    book.load("tenant_id", "tenant_acme", "rolling_30d", hour - 720, 50.0)  # 30 days and an hour ago: out
    book.load("tenant_id", "tenant_acme", "rolling_30d", hour - 719, 40.0)  # the window's first hour
    book.add(spend(1, 20.0, NOW - timedelta(days=3)))
    assert book.spent(SCOPE, "rolling_30d", NOW) == 60.0
    assert book.spent(SCOPE, "rolling_30d", NOW + timedelta(hours=1)) == 20.0


def test_a_book_forgets_sessions_with_no_spend_left_in_their_periods() -> None:
    budget = BudgetConfig(
        dimension="session_id", key="*", limit_usd=2, period="rolling_24h", thresholds=[{"at": 100, "action": "deny"}]
    )
    book = BudgetBook(Budgets([budget]))
    for n in range(3):
        book.add(spend(n, 1.0, NOW, "session_id", f"s-{n}"))
    book.add(spend(9, 1.0, NOW + timedelta(hours=20), "session_id", "s-late"))
    book.settle(NOW + timedelta(hours=20))
    book.add(spend(8, 1.0, NOW, "session_id", "s-elsewhere"))  # a session another worker owns: never settled
    book.add(spend(7, 3.0, NOW + timedelta(hours=1), "session_id", "s-denied"))
    book.settle(NOW + timedelta(hours=1), owns=lambda scope: scope != "session_id=s-elsewhere")
    book.sweep(NOW + timedelta(hours=25))  # s-denied's spend is out of its window, its deny still published
    assert book.scopes() == ["session_id=s-late", "session_id=s-denied"]
    # their published states are removed (tombstones), but only of the scopes this worker owns
    assert book.take_forgotten(lambda scope: scope != "session_id=s-1") == ["session_id=s-0", "session_id=s-2"]
    assert book.take_forgotten() == []


def test_a_sweep_forgets_the_thresholds_raised_in_past_calendar_periods_only() -> None:
    book = BudgetBook(Budgets([BudgetConfig(dimension="team", key="growth", daily_usd=10, monthly_usd=1000)]))
    book.add(spend(1, 8.0, NOW - timedelta(days=1), "team", "growth"))
    book.settle(NOW - timedelta(days=1))  # 70% yesterday
    book.add(spend(2, 8.0, NOW, "team", "growth"))
    assert [a.dedup_key.split(":")[-2:] for a in book.settle(NOW)[1]] == [["2026-11-23", "70"]]  # today's own
    book.sweep(NOW)
    book.add(spend(3, 1.0, NOW, "team", "growth"))
    assert book.settle(NOW)[1] == []  # today's 70% is remembered
    assert book._crossed == {("team=growth", "daily", NOW.date().toordinal(), 70)}


def test_routes_send_each_threshold_to_its_channel(tmp_path: Path) -> None:
    path = tmp_path / "spendstream.yaml"
    path.write_text(
        "alerts:\n  routes:\n"
        "    - {match: {kind: budget_threshold, threshold_pct: 120}, channel: '#escalation'}\n"
        "    - {match: {kind: budget_threshold, threshold_pct: 100}, channel: '#finance'}\n"
        "    - {channel: '#llm-costs'}\n"
    )
    routes = load_config(path).alerts.routes
    book = BudgetBook(Budgets([STAGED]))
    alerts = spend_to(book, 130)[1]
    assert [channel_for(a, routes) for a in alerts] == ["#llm-costs", "#llm-costs", "#finance", "#escalation"]


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ("{dimension: tenant_id, key: a, limit_usd: 5}", "budgets.0",
         "budget tenant_id 'a' gives limit_usd without period"),
        ("{dimension: tenant_id, key: a, limit_usd: 5, period: week}", "budgets.0.period",
         "budget tenant_id 'a': Input should be"),
        ("{dimension: tenant_id, key: a, limit_usd: 5, period: day, daily_usd: 5}", "budgets.0", "use one form"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, action: deny, thresholds: [{at: 100}]}", "budgets.0",
         "budget team 'b' gives thresholds and action: put them on a threshold"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: [{at: 90}, {at: 90}]}", "budgets.0",
         "two thresholds at the same percent"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: [{at: 100, action: deny}, "
         "{at: 120, action: throttle}]}", "budgets.0", "the 120% threshold's throttle comes after deny at 100%"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: [{at: 100, action: downgrade}]}",
         "budgets.0.thresholds.0",
         "budget team 'b': the 100% threshold's action downgrade needs downgrade_to"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: [{at: 0}]}", "budgets.0.thresholds.0.at",
         "budget team 'b': Input should be greater than or equal to 1"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: [{at: 90, throttle_seconds: 3}]}",
         "budgets.0.thresholds.0", "throttle_seconds is only used with action throttle"),
        ("{dimension: team, key: b, limit_usd: 5, period: day, thresholds: []}", "budgets.0.thresholds",
         "at least 1 item"),
    ],
)  # fmt: skip
def test_a_bad_threshold_or_period_is_refused_naming_the_budget_field_and_reason(
    tmp_path: Path, entry: str, field: str, reason: str
) -> None:
    path = tmp_path / "spendstream.yaml"
    path.write_text(f"budgets:\n  - {entry}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.field == field and reason in refused.value.reason


def test_todays_budget_configs_stay_valid() -> None:
    for entry in (
        {"dimension": "tenant_id", "key": "a", "daily_usd": 50, "monthly_usd": 1000, "action": "deny"},
        {"dimension": "agent_id", "key": "*", "daily_usd": 2, "action": "downgrade", "downgrade_to": "gpt-4o-mini"},
        {"dimension": "feature", "key": "f", "daily_usd": 20, "action": "throttle", "throttle_seconds": 5},
        {"dimension": "team", "key": "t", "monthly_usd": 20, "throttle_seconds": 5},  # accepted before, unused
    ):
        assert BudgetConfig.model_validate(entry).levels[1].at == 100
    assert BudgetThreshold(at=99).alert_severity == "warning" and BudgetThreshold(at=100).alert_severity == "critical"


# -- the guard applying each threshold ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reader() -> Iterator[BudgetGuard]:
    guard = BudgetGuard("127.0.0.1:1", fail="open")  # what it read holds; nothing else limits the calls
    yield guard
    guard.close()


@pytest.fixture
def guard(reader: BudgetGuard) -> BudgetGuard:
    """The module's guard, emptied: no states, no counts."""
    for state in reader.states():
        reader._apply(state.scope.encode(), None)
    reader._counts = dict.fromkeys(reader._counts, 0)
    return reader


def read_state_at(guard: BudgetGuard, total: float) -> None:
    """The guard reads the tenant's state once it has spent ``total`` (its reader thread's own step)."""
    state = spend_to(BudgetBook(Budgets([STAGED])), total, datetime.now(UTC))[0]  # a state of this month
    guard._apply(state.scope.encode(), state.model_dump_json(exclude_none=True).encode())


@pytest.mark.parametrize(
    ("total", "estimate", "action", "model", "delay"),
    [
        (80, None, "allow", "large", 0.0),
        (80, 9.0, "allow", "large", 0.0),  # $89 with it: under 90%
        (80, 11.0, "throttle", "large", 2.0),  # would pass 90%
        (95, None, "throttle", "large", 2.0),
        (95, 6.0, "downgrade", "small", 2.0),  # would pass 100%: downgraded, and still throttled
        (105, None, "downgrade", "small", 2.0),
        (115, 6.0, "deny", "large", 0.0),  # would pass 120%
        (125, None, "deny", "large", 0.0),
    ],
)
def test_the_guard_applies_each_threshold_in_force_or_passed_by_the_calls_estimate(
    guard: BudgetGuard, total: float, estimate: float | None, action: str, model: str, delay: float
) -> None:
    read_state_at(guard, total)
    decision = guard.check(model="large", estimated_usd=estimate, tenant_id="tenant_acme")
    assert (decision.action, decision.model, decision.delay_seconds) == (action, model, delay)
    if action != "allow":  # what it read applies (an allowed call is allowed by failing open)
        assert decision.scope == SCOPE and decision.reason.startswith(f"tenant_id tenant_acme: ${total:.2f} of the")


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the sync (``time.sleep``) and async (``asyncio.sleep``) paths waited, without waiting."""
    delays: list[float] = []

    async def asleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(producers._guard.time, "sleep", delays.append)
    monkeypatch.setattr(producers._track.asyncio, "sleep", asleep)
    return delays


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize(
    ("total", "model", "delay"), [(80, "large", None), (95, "large", 2.0), (105, "small", 2.0), (125, None, None)]
)
def test_a_tracked_call_is_throttled_downgraded_and_denied_on_the_sync_and_async_paths(
    guard: BudgetGuard, slept: list[float], path: str, total: float, model: str | None, delay: float | None
) -> None:
    read_state_at(guard, total)
    sent = Collected()
    tracker = Tracker(sent, guard=guard, feature="support.chat", tenant_id="tenant_acme")

    async def call_async() -> str:
        async with tracker.track(provider="house", model="large") as call:
            return call.model

    def call() -> str:
        if path == "async":
            return asyncio.run(call_async())
        with tracker.track(provider="house", model="large") as tracked:
            return tracked.model

    if model is None:
        with pytest.raises(BudgetExceededError, match="past the 120% threshold"):
            call()
        assert sent.events == [] and guard.stats().denied == 1
    else:
        assert call() == model
        assert [e.model for e in sent.events] == [model]
    assert slept == ([] if delay is None else [delay])
    assert guard.stats().throttled == (0 if delay is None else 1)


def test_a_throttle_of_one_budget_delays_a_call_another_budget_downgrades(guard: BudgetGuard) -> None:
    read_state_at(guard, 92)  # the tenant: throttled 2 s
    legacy = BudgetBook(Budgets([BudgetConfig(dimension="agent_id", key="coder", daily_usd=1, action="downgrade",
                                              downgrade_to="small")]))  # fmt: skip
    legacy.add(spend(1, 1.0, datetime.now(UTC), dimension="agent_id", key="coder"))
    [downgraded] = legacy.settle(datetime.now(UTC))[0]
    guard._apply(downgraded.scope.encode(), downgraded.model_dump_json(exclude_none=True).encode())
    decision = guard.check(model="large", tenant_id="tenant_acme", agent_id="coder")
    assert (decision.action, decision.model, decision.delay_seconds) == ("downgrade", "small", 2.0)


# -- session and workflow budgets ------------------------------------------------------------------


def row(
    event_id: str, feature: str, parent_id: str = "", tags: dict[str, str] | None = None, **more: object
) -> tuple[object, ...]:
    """A stored call row (``llm_calls`` columns), $1, real."""
    values: dict[str, object] = dict.fromkeys(LLM_CALL_COLUMNS, "")
    values.update(event_id=event_id, ts=NOW, feature=feature, parent_id=parent_id, tags=tags or {}, cost_usd=1.0,
                  data_mode="real", **more)  # fmt: skip
    return tuple(values[column] for column in LLM_CALL_COLUMNS)


def test_a_call_counts_toward_its_session_and_the_workflow_of_its_traces_root() -> None:
    budgets = Budgets([
        BudgetConfig(dimension="workflow", key="support.chat", limit_usd=10, period="day"),
        BudgetConfig(dimension="session_id", key="*", limit_usd=1, period="rolling_24h"),
    ])  # fmt: skip
    rows = [
        row("root", "support.chat", session_id="s-1"),  # a root call: its own feature's workflow
        row("child", "kb.search", parent_id="root", tags={"workflow": "support.chat"}),  # tagged by the SDK
        row("orphan", "kb.search", parent_id="root"),  # under a root, untagged: no workflow
        row("other", "kb.search"),  # another workflow's root: no budget
    ]
    spends = [(s.event_id, s.dimension, s.key) for s in budgets.spends_of(rows, 0.0)]
    assert spends == [
        ("root", "workflow", "support.chat"), ("root", "session_id", "s-1"), ("child", "workflow", "support.chat")
    ]  # fmt: skip


def test_the_sdk_tags_calls_under_a_root_with_its_workflow_and_the_guard_holds_them_to_its_budget(
    guard: BudgetGuard,
) -> None:
    budget = BudgetConfig(dimension="workflow", key="support.chat", limit_usd=1, period="day", thresholds=[
        BudgetThreshold(at=100, action="deny")
    ])  # fmt: skip
    book = BudgetBook(Budgets([budget]))
    book.add(Spend("e1", datetime.now(UTC).timestamp(), "workflow", "support.chat", 1.0, 0.0))
    [denied] = book.settle(datetime.now(UTC))[0]
    sent = Collected()
    tracker = Tracker(sent, guard=guard)
    with tracker.track(provider="house", model="large", feature="support.chat") as root:
        with tracker.track(provider="house", model="large", feature="kb.search") as child:
            pass
        guard._apply(denied.scope.encode(), denied.model_dump_json(exclude_none=True).encode())
        with (
            pytest.raises(BudgetExceededError, match=r"workflow support\.chat"),
            tracker.track(provider="house", model="large", feature="kb.search"),
        ):
            pytest.fail("a call of a workflow past its budget was made")
    assert (root.workflow, child.workflow) == ("support.chat", "support.chat")
    assert [(e.feature, e.tags) for e in sent.events] == [("kb.search", {"workflow": "support.chat"}),
                                                          ("support.chat", {})]  # fmt: skip
    with (
        pytest.raises(BudgetExceededError),
        tracker.track(provider="house", model="large", feature="support.chat", session_id="s-9"),
    ):
        pass  # a new request of the workflow: its root is refused too


def test_the_month_end_forecast_reads_a_monthly_limit_of_either_form_and_its_action_at_100_percent() -> None:
    assert (monthly_limit(STAGED), action_past_limit(STAGED)) == (100, "downgrade")  # throttled too: downgrade wins
    legacy = BudgetConfig(dimension="team", key="growth", daily_usd=5, monthly_usd=90, action="deny")
    assert (monthly_limit(legacy), action_past_limit(legacy)) == (90, "deny")
    rolling = BudgetConfig(dimension="team", key="growth", limit_usd=90, period="rolling_30d")
    assert (monthly_limit(rolling), action_past_limit(rolling)) == (None, "alert")  # 30 days are not a month


def test_thresholds_apply_to_each_limit_and_the_strictest_decides() -> None:
    budget = BudgetConfig.model_validate(
        {"dimension": "team", "key": "growth", "daily_usd": 10, "monthly_usd": 100,
         "thresholds": [{"at": 50, "action": "throttle"}, {"at": 100, "action": "deny"}]}
    )  # fmt: skip
    book = BudgetBook(Budgets([budget]))
    book.load("team", "growth", "monthly", NOW.year * 12 + NOW.month - 1, 60.0)  # 60% of the month
    book.add(spend(1, 2.0, dimension="team", key="growth"))  # 20% of the day
    state = book.state("team=growth", NOW)
    assert (state.state, state.period, state.threshold_pct) == ("throttle", "monthly", 50)
    assert state.next is not None and (state.next.state, state.next.usd) == ("deny", 8.0)  # the day's $10 first
    alerts = book.settle(NOW)[1]
    assert [(a.window, round(a.threshold or 0)) for a in alerts] == [("1mo", 50)]
