"""Budget thresholds: what the reached thresholds of a limit make the guard do, and their alerts and reasons."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas.alert import Alert, alert_id_for
from schemas.budget import SEVERITY_ORDER, WORKFLOW_TAG, GuardState, budget_scope
from schemas.config import BudgetConfig, BudgetThreshold, LimitPeriod
from sinks.clickhouse import sql_string
from streams.budget_periods import NAME, WINDOW_LABEL, bounds, is_rolling

WORKFLOW_SQL = f"if(tags['{WORKFLOW_TAG}'] != '', tags['{WORKFLOW_TAG}'], if(parent_id = '', feature, ''))"
"""A stored call's workflow in SQL, as ``streams.budgets.workflow_of`` reads it."""
"""A stored call's workflow in SQL, as :func:`workflow_of` reads it."""
EPSILON_USD = 1e-9
"""Spend this close below a threshold's amount has reached it: ten $0.01 calls add up to $0.0999...9."""


def sql_of(dimension: str) -> str:
    """The SQL of a budget dimension over ``llm_calls``: its column, or the workflow's expression."""
    return WORKFLOW_SQL if dimension == "workflow" else dimension


@dataclass(frozen=True, slots=True)
class Effects:
    """What the guard does once some thresholds are reached: their actions together."""

    state: GuardState = "allow"
    throttle_seconds: float | None = None
    downgrade_to: str | None = None

    @classmethod
    def of(cls, levels: Iterable[BudgetThreshold]) -> Effects:
        throttle = downgrade = None
        deny = False
        for level in levels:
            if level.action == "throttle":
                throttle = level.delay_seconds
            elif level.action == "downgrade":
                downgrade = level.downgrade_to
            elif level.action == "deny":
                deny = True
        state: GuardState = "deny" if deny else "downgrade" if downgrade else "throttle" if throttle else "allow"
        return cls(state, throttle, downgrade)

    def does(self) -> str:
        """What happens to calls, for a message."""
        if self.state == "deny":
            return "the guard refuses calls"
        if self.state == "downgrade":
            slowed = f", delayed {self.throttle_seconds:g} s each" if self.throttle_seconds else ""
            return f"the guard switches calls to {self.downgrade_to}{slowed}"
        if self.state == "throttle":
            return f"the guard delays each call {self.throttle_seconds:g} s"
        return "calls go on"


def reached(spent: float, limit: float, level: BudgetThreshold) -> bool:
    return spent >= limit * level.at / 100 - EPSILON_USD


@dataclass(frozen=True, slots=True)
class Step:
    """The next threshold that changes what the guard does, and what is left to spend before it."""

    level: BudgetThreshold
    effects: Effects
    """What the guard does from there on (the actions of every threshold up to it)."""
    usd: float


def next_step(levels: Sequence[BudgetThreshold], standings: Iterable[Standing], now: Effects) -> Step | None:
    """The nearest threshold, over every limit, from which the guard does more than ``now`` (a stricter action,
    or as strict with another delay or model): one that changes nothing (the throttle in force, reached on
    another limit) is passed over for the next."""
    best: Step | None = None
    for standing in standings:
        for level in levels:
            if level.action == "alert" or reached(standing.spent, standing.limit, level):
                continue
            effects = Effects.of(lvl for lvl in levels if lvl.at <= level.at)
            if effects == now or SEVERITY_ORDER[effects.state] < SEVERITY_ORDER[now.state]:
                continue
            usd = max(0.0, standing.limit * level.at / 100 - standing.spent)
            if best is None or usd < best.usd:
                best = Step(level, effects, usd)
            break
    return best


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one limit of a key stands at a time: its spend, the thresholds reached, the next action."""

    period: LimitPeriod
    limit: float
    spent: float
    top: BudgetThreshold | None
    """The highest threshold reached."""
    effects: Effects
    """What the thresholds reached make the guard do."""


def reason_of(dimension: str, key: str, standing: Standing, remaining: float) -> str:
    spent, limit = standing.spent, standing.limit
    what = f"{dimension} {key}: ${spent:,.2f} of the {NAME[standing.period]} budget of ${limit:,.2f} spent"
    effects = standing.effects
    pct = f"{100 * spent / limit:.0f}%"
    if effects.state == "allow":
        if spent >= limit - EPSILON_USD:
            return f"{what} ({pct}): over budget (no action set: calls go on)"
        return f"{what}, ${remaining:,.2f} left"
    top = standing.top.at if standing.top is not None else 100
    if effects.state == "deny":
        does = "calls are denied"
    elif effects.state == "downgrade":
        slowed = f" and throttled ({effects.throttle_seconds:g} s)" if effects.throttle_seconds else ""
        does = f"calls are downgraded to {effects.downgrade_to}{slowed}"
    else:
        does = f"calls are throttled ({effects.throttle_seconds or 0:g} s)"
    return f"{what} ({pct}, past the {top}% threshold): {does}"


def threshold_alert(budget: BudgetConfig, key: str, standing: Standing, level: BudgetThreshold, now: datetime) -> Alert:
    period, spent, limit = standing.period, standing.spent, standing.limit
    scope = budget_scope(budget.dimension, key)
    start, end = bounds(period, now)
    when = start.isoformat() if is_rolling(period) else start.date().isoformat()
    dedup_key = f"budget_threshold:{scope}:{period}:{when}:{level.at}"
    levels = budget.levels
    here = Effects.of(lvl for lvl in levels if lvl.at <= level.at)
    later = next((lvl for lvl in levels if lvl.at > level.at and lvl.action != "alert"), None)
    if here.state != "allow" or later is None:
        then = f"now {here.does()}"
    else:
        then = f"from {later.at}% {Effects.of(lvl for lvl in levels if lvl.at <= later.at).does()}"
    since = f"ts >= toDateTime('{start:%Y-%m-%d %H:%M:%S}', 'UTC')"
    until = "" if end is None else f"AND ts < toDateTime('{end:%Y-%m-%d %H:%M:%S}', 'UTC') "
    return Alert(
        alert_id=alert_id_for(dedup_key), ts=now, kind="budget_threshold", severity=level.alert_severity,
        dimension=budget.dimension, key=key, value=round(spent, 4), baseline=limit, threshold=limit * level.at / 100,
        window=WINDOW_LABEL[period], dedup_key=dedup_key,
        message=(
            f"{budget.dimension} {key} has spent ${spent:,.2f} of its {NAME[period]} budget of ${limit:,.2f} "
            f"({100 * spent / limit:.0f}%, past the {level.at}% mark); {then}. The query shows where it went."
        ),
        query=(
            "SELECT feature, model, agent_id, count() AS calls, round(sum(cost_usd), 4) AS usd FROM llm_calls "
            f"WHERE {sql_of(budget.dimension)} = {sql_string(key)} AND data_mode = 'real' AND {since} {until}"
            "GROUP BY feature, model, agent_id ORDER BY usd DESC LIMIT 20"
        ),
    )  # fmt: skip
