"""Budget totals, states and threshold alerts (pure logic: no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.config import BudgetConfig, load_config
from schemas.exceptions import ConfigError
from streams.budgets import BudgetBook, Budgets, Spend

NOW = datetime(2026, 11, 23, 15, tzinfo=UTC)
BUDGETS = [
    BudgetConfig(dimension="tenant_id", key="tenant_acme", daily_usd=10, monthly_usd=100, action="deny"),
    BudgetConfig(dimension="agent_id", key="*", daily_usd=2, action="downgrade", downgrade_to="gpt-4o-mini"),
    BudgetConfig(dimension="agent_id", key="coordinator", daily_usd=5, action="throttle", throttle_seconds=3),
]


def spend(n: int, dimension: str, key: str, cost: float, at: datetime = NOW) -> Spend:
    return Spend(f"e{n}", at.timestamp(), dimension, key, cost, at.timestamp())


def test_a_key_passes_70_100_and_120_percent_once_each_and_is_denied_past_its_limit() -> None:
    book = BudgetBook(Budgets(BUDGETS))
    raised = []
    states = []
    for n in range(13):  # $1 each: 13 of a $10 daily budget
        book.add(spend(n, "tenant_id", "tenant_acme", 1.0))
        published, alerts = book.settle(NOW)
        states.extend(published)
        raised.extend(alerts)

    assert [(a.severity, a.threshold) for a in raised] == [("warning", 7.0), ("critical", 10.0), ("critical", 12.0)]
    assert len({a.alert_id for a in raised}) == 3 and all(a.kind == "budget_threshold" for a in raised)
    assert "spent $7.00 of its daily budget of $10.00" in raised[0].message and "refuses calls" in raised[0].message
    assert [s.state for s in states[:9]] == ["allow"] * 9 and states[-1].state == "deny"
    assert states[-1].remaining_usd == 0 and states[-1].period == "daily"
    assert states[8].remaining_usd == pytest.approx(1.0)


def test_a_redelivered_spend_counts_once_and_a_late_one_counts_in_its_own_day() -> None:
    book = BudgetBook(Budgets(BUDGETS))
    assert book.add(spend(1, "tenant_id", "tenant_acme", 4.0))
    assert not book.add(spend(1, "tenant_id", "tenant_acme", 4.0))  # the same call again
    book.add(spend(2, "tenant_id", "tenant_acme", 30.0, NOW - timedelta(days=1)))  # yesterday's, arriving late

    assert book.spent("tenant_id=tenant_acme", "daily", NOW) == 4.0
    assert book.spent("tenant_id=tenant_acme", "monthly", NOW) == 34.0


def test_a_keys_own_budget_wins_over_its_dimensions_star_and_each_key_is_apart() -> None:
    book = BudgetBook(Budgets(BUDGETS))
    for n, agent in enumerate(["coordinator", "coder", "coder", "reviewer"]):
        book.add(spend(n, "agent_id", agent, 2.5))

    states = {s.key: s for s in book.settle(NOW)[0]}

    assert states["coordinator"].state == "allow"  # $2.50 of its own $5
    assert (states["coder"].state, states["coder"].downgrade_to) == ("downgrade", "gpt-4o-mini")  # $5 of $2
    assert states["reviewer"].state == "downgrade"  # $2.50 of its own $2 (each key has its own total)
    book.add(spend(9, "agent_id", "coordinator", 3.0))
    [coordinator] = book.settle(NOW)[0]
    assert (coordinator.state, coordinator.throttle_seconds) == ("throttle", 3.0)


def test_the_next_day_starts_allowed_and_the_monthly_limit_can_bind_first() -> None:
    book = BudgetBook(Budgets(BUDGETS))
    book.load("tenant_id", "tenant_acme", "daily", NOW.date().toordinal(), 12.0)  # warmed up from ClickHouse
    book.load("tenant_id", "tenant_acme", "monthly", NOW.year * 12 + NOW.month - 1, 95.0)
    [denied] = book.settle(NOW)[0]
    assert denied.state == "deny" and denied.period_end == datetime(2026, 11, 24, tzinfo=UTC)

    book.expire()
    [tomorrow] = book.settle(NOW + timedelta(days=1))[0]
    assert tomorrow.state == "allow" and tomorrow.remaining_usd == pytest.approx(5.0)  # $95 of $100 this month

    book.add(spend(1, "tenant_id", "tenant_acme", 6.0, NOW + timedelta(days=1)))
    [month] = book.settle(NOW + timedelta(days=1))[0]
    assert (month.state, month.period) == ("deny", "monthly")


def test_only_real_calls_with_a_budgeted_key_are_counted() -> None:
    budgets = Budgets(BUDGETS)
    assert budgets.of("tenant_id", "tenant_acme") is not None
    assert budgets.of("tenant_id", "tenant_globex") is None  # no budget for it, no '*' for tenants
    assert budgets.of("agent_id", "") is None  # calls without an agent are not an agent's


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ("{dimension: tenant_id, key: a, action: deny}", "budgets.0", "needs limit_usd with a period"),
        ("{dimension: tenant_id, key: a, daily_usd: 5, action: downgrade}", "budgets.0", "needs downgrade_to"),
        ("{dimension: tenant_id, key: a, daily_usd: -5}", "budgets.0.daily_usd", "greater than 0"),
        ("{dimension: colour, key: a, daily_usd: 5}", "budgets.0.dimension", "Input should be"),
        ("{dimension: tenant_id, key: a, daily_usd: 5, action: block}", "budgets.0.action", "Input should be"),
        ("{dimension: team, key: a, daily_usd: 5}\n  - {dimension: team, key: a, monthly_usd: 9}", "", "second budget"),
    ],
)
def test_a_bad_budget_is_refused_with_the_field_and_reason(tmp_path: Path, entry: str, field: str, reason: str) -> None:
    path = tmp_path / "spendstream.yaml"
    path.write_text(f"budgets:\n  - {entry}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert field in refused.value.field and reason in refused.value.reason
