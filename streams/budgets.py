"""Budgets: which budget a stored call counts toward, the running totals per budget key, and its state.

The ingest agent turns every stored call into one :class:`Spend` per budgeted dimension and sends
it to ``spendstream.budget-spend`` keyed by the budget's scope (``tenant_id=tenant_acme``), so one
partition, and one worker, owns each key's total. That worker's :class:`BudgetBook` adds the
spends (each ``(event_id, dimension)`` once), decides the state the SDK's guard applies (allow,
throttle, downgrade, deny), and raises a ``budget_threshold`` alert once per threshold (70%, 100%,
120%) per period. Periods are UTC days and months of the calls' event time; only ``real`` calls
count (not the demo's, not tests').
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson

from schemas.alert import Alert, Severity, alert_id_for
from schemas.budget import BudgetState, GuardState, Period, budget_scope
from schemas.config import BudgetConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c

THRESHOLDS = (70, 100, 120)
SEEN_LIMIT = 1_000_000
"""How many recent (event_id, dimension) pairs a book remembers to count a redelivered spend once."""
_COLUMN = {dimension: c.column(dimension) for dimension in ("user_id", "tenant_id", "feature", "agent_id", "team",
                                                             "environment")}  # fmt: skip
_ACTION_STATE: dict[str, GuardState] = {"alert": "allow", "throttle": "throttle", "downgrade": "downgrade",
                                        "deny": "deny"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Spend:
    """The cost of one stored call, for one budgeted dimension."""

    event_id: str
    ts: float
    """Event time, epoch seconds: picks the day and month it counts in."""
    dimension: str
    key: str
    cost: float
    sent: float
    """When the ingest worker sent it (epoch seconds)."""

    @property
    def scope(self) -> str:
        return budget_scope(self.dimension, self.key)

    def encode(self) -> bytes:
        return orjson.dumps([self.event_id, self.ts, self.dimension, self.key, self.cost, self.sent])

    @classmethod
    def decode(cls, value: bytes) -> Spend:
        event_id, ts, dimension, key, cost, sent = orjson.loads(value)
        return cls(event_id, ts, dimension, key, cost, sent)


class Budgets:
    """The budgets of the config, and which one a key falls under (its own, else its dimension's ``*``)."""

    def __init__(self, budgets: Sequence[BudgetConfig]) -> None:
        self._own: dict[tuple[str, str], BudgetConfig] = {(b.dimension, b.key): b for b in budgets if b.key != "*"}
        self._each: dict[str, BudgetConfig] = {b.dimension: b for b in budgets if b.key == "*"}
        self.dimensions: tuple[str, ...] = tuple(dict.fromkeys(b.dimension for b in budgets))

    def __bool__(self) -> bool:
        return bool(self.dimensions)

    def of(self, dimension: str, key: str) -> BudgetConfig | None:
        if not key:
            return None
        return self._own.get((dimension, key)) or self._each.get(dimension)

    def spends_of(self, rows: Iterable[c.Row], sent: float) -> Iterator[Spend]:
        """The spends of stored call rows: one per budgeted dimension whose key has a budget."""
        if not self.dimensions:
            return
        for row in rows:
            cost = row[c.COST_USD]
            if not cost or row[c.DATA_MODE] != "real":
                continue
            ts = row[c.TS].timestamp()
            for dimension in self.dimensions:
                key = row[_COLUMN[dimension]]
                if self.of(dimension, key) is not None:
                    yield Spend(row[c.EVENT_ID], ts, dimension, key, cost, sent)


def period_bounds(period: Period, at: datetime) -> tuple[datetime, datetime]:
    """Start and end (UTC) of the day or month containing ``at``."""
    day = at.astimezone(UTC).date()
    if period == "daily":
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    return start, start + timedelta(days=calendar.monthrange(day.year, day.month)[1])


class BudgetBook:
    """Running totals per budget key and period, and the states and alerts that follow from them."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._daily: dict[tuple[str, date], float] = {}
        """(scope, day) -> USD."""
        self._monthly: dict[tuple[str, date], float] = {}
        """(scope, first day of the month) -> USD."""
        self._keys: dict[str, tuple[str, str]] = {}
        self._seen: dict[tuple[str, str], None] = {}
        self._crossed: set[tuple[str, Period, date, int]] = set()
        self._published: dict[str, tuple[GuardState, float, float]] = {}
        self._dirty: set[str] = set()

    def reset(self) -> None:
        """Forget the totals and the counted calls before a warm-up (crossed thresholds stay)."""
        self._daily.clear()
        self._monthly.clear()
        self._seen.clear()

    def load(self, dimension: str, key: str, day: date, day_usd: float, month_usd: float) -> None:
        """Totals read from ClickHouse at warm-up: ``day``'s and its month's."""
        scope = budget_scope(dimension, key)
        self._keys[scope] = (dimension, key)
        self._daily[(scope, day)] = day_usd
        self._monthly[(scope, day.replace(day=1))] = month_usd
        self._dirty.add(scope)

    def add(self, spend: Spend) -> bool:
        """Count ``spend`` unless this (event, dimension) was counted already; True if counted."""
        seen = (spend.event_id, spend.dimension)
        if seen in self._seen:
            return False
        self._seen[seen] = None
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        scope = spend.scope
        self._keys[scope] = (spend.dimension, spend.key)
        day = datetime.fromtimestamp(spend.ts, UTC).date()
        self._daily[(scope, day)] = self._daily.get((scope, day), 0.0) + spend.cost
        month = day.replace(day=1)
        self._monthly[(scope, month)] = self._monthly.get((scope, month), 0.0) + spend.cost
        self._dirty.add(scope)
        return True

    def spent(self, scope: str, period: Period, at: datetime) -> float:
        day = at.astimezone(UTC).date()
        if period == "daily":
            return self._daily.get((scope, day), 0.0)
        return self._monthly.get((scope, day.replace(day=1)), 0.0)

    def state(self, scope: str, now: datetime) -> BudgetState:
        """The guard's state for ``scope`` at ``now``: the tightest of its daily and monthly limits."""
        dimension, key = self._keys[scope]
        budget = self.budgets.of(dimension, key)
        assert budget is not None
        limits = _limits(budget)
        period, limit = max(limits, key=lambda pl: self.spent(scope, pl[0], now) / pl[1])
        spent = self.spent(scope, period, now)
        remaining = min(max(0.0, lim - self.spent(scope, p, now)) for p, lim in limits)
        over = spent >= limit
        state: GuardState = _ACTION_STATE[budget.action] if over else "allow"
        what = f"{dimension} {key}: ${spent:,.2f} of the {period} budget of ${limit:,.2f}"
        if not over:
            reason = f"{what} spent, ${remaining:,.2f} left"
        elif budget.action == "alert":
            reason = f"{what} spent: over budget (action alert: calls go on)"
        else:
            reason = f"{what} spent: over budget, calls are {'throttled' if state == 'throttle' else state + 'd'}"
        throttle = budget.throttle_seconds if budget.action == "throttle" else None
        return BudgetState(
            scope=scope, dimension=dimension, key=key, state=state, action=budget.action, reason=reason,
            period=period, spent_usd=round(spent, 6), limit_usd=limit, remaining_usd=round(remaining, 6),
            period_end=period_bounds(period, now)[1], downgrade_to=budget.downgrade_to, throttle_seconds=throttle,
            updated_at=now,
        )  # fmt: skip

    def settle(self, now: datetime, owns: Callable[[str], bool] | None = None) -> tuple[list[BudgetState], list[Alert]]:
        """States to publish (changed scopes) and thresholds newly crossed, for the scopes that changed.

        ``owns``: when given, only the changed scopes it owns are settled (the rest stay pending).
        """
        scopes = {s for s in self._dirty if owns is None or owns(s)}
        self._dirty -= scopes
        states: list[BudgetState] = []
        alerts: list[Alert] = []
        for scope in sorted(scopes):
            state = self.state(scope, now)
            mark = (state.state, round(state.spent_usd, 4), round(state.remaining_usd or 0.0, 4))
            if self._published.get(scope) != mark:
                self._published[scope] = mark
                states.append(state)
            alerts.extend(self._crossings(scope, now))
        return states, alerts

    def expire(self) -> None:
        """Settle again every scope not allowed: one whose period is over starts the next one allowed."""
        for scope, (state, *_) in self._published.items():
            if state != "allow":
                self._dirty.add(scope)

    def scopes(self) -> list[str]:
        return list(self._keys)

    def _crossings(self, scope: str, now: datetime) -> Iterator[Alert]:
        dimension, key = self._keys[scope]
        budget = self.budgets.of(dimension, key)
        assert budget is not None
        for period, limit in _limits(budget):
            spent = self.spent(scope, period, now)
            start = period_bounds(period, now)[0].date()
            for pct in THRESHOLDS:
                crossed = (scope, period, start, pct)
                if spent < limit * pct / 100 or crossed in self._crossed:
                    continue
                self._crossed.add(crossed)
                yield _threshold_alert(budget, key, period, start, pct, spent, limit, now)


def _limits(budget: BudgetConfig) -> list[tuple[Period, float]]:
    limits: list[tuple[Period, float]] = []
    if budget.daily_usd is not None:
        limits.append(("daily", budget.daily_usd))
    if budget.monthly_usd is not None:
        limits.append(("monthly", budget.monthly_usd))
    return limits


_DOES = {
    "alert": "calls go on (action alert)",
    "throttle": "the guard delays each call",
    "downgrade": "the guard switches calls to {model}",
    "deny": "the guard refuses calls",
}


def _threshold_alert(
    budget: BudgetConfig, key: str, period: Period, start: date, pct: int, spent: float, limit: float, now: datetime
) -> Alert:
    scope = budget_scope(budget.dimension, key)
    dedup_key = f"budget_threshold:{scope}:{period}:{start.isoformat()}:{pct}"
    severity: Severity = "warning" if pct < 100 else "critical"
    does = _DOES[budget.action].format(model=budget.downgrade_to)
    then = f"past 100% {does}" if pct < 100 else f"now {does}"
    end = period_bounds(period, now)[1]
    return Alert(
        alert_id=alert_id_for(dedup_key), ts=now, kind="budget_threshold", severity=severity,
        dimension=budget.dimension, key=key, value=round(spent, 4), baseline=limit, threshold=limit * pct / 100,
        window="1d" if period == "daily" else "1mo", dedup_key=dedup_key,
        message=(
            f"{budget.dimension} {key} has spent ${spent:,.2f} of its {period} budget of ${limit:,.2f} "
            f"({100 * spent / limit:.0f}%, past the {pct}% mark); {then}. The query shows where it went."
        ),
        query=(
            "SELECT feature, model, agent_id, count() AS calls, round(sum(cost_usd), 4) AS usd FROM llm_calls "
            f"WHERE {budget.dimension} = {sql_string(key)} AND data_mode = 'real' "
            f"AND ts >= toDateTime('{start.isoformat()} 00:00:00', 'UTC') "
            f"AND ts < toDateTime('{end.date().isoformat()} 00:00:00', 'UTC') "
            "GROUP BY feature, model, agent_id ORDER BY usd DESC LIMIT 20"
        ),
    )  # fmt: skip
