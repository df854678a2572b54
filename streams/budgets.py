"""Budgets: which budget a stored call counts toward, the running totals per budget key, and its state.

The ingest agent turns every stored call into one :class:`Spend` per budgeted dimension and sends
it to ``spendstream.budget-spend`` keyed by the budget's scope (``tenant_id=tenant_acme``), so one
partition, and one worker, owns each key's total. That worker's :class:`BudgetBook` adds the
spends (each ``(event_id, dimension)`` once), decides the state the SDK's guard applies (allow,
throttle, downgrade, deny: the actions of every threshold reached, the strictest named), and
raises a ``budget_threshold`` alert once per threshold per period (a rolling period's at most once
per window length). Periods follow the calls' event time (``streams.budget_periods``); only
``real`` calls count (not the demo's, not tests').
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from schemas.alert import Alert, alert_id_for
from schemas.budget import SEVERITY_ORDER, WORKFLOW_TAG, BudgetState, GuardState, NextStep, budget_scope
from schemas.config import BudgetAction, BudgetConfig, BudgetThreshold, LimitPeriod
from sinks.clickhouse import sql_string
from streams.budget_periods import NAME, ROLLING_BUCKETS, WINDOW_LABEL, bounds, bucket_of, is_rolling, window
from streams.detectors import calls as c

SEEN_LIMIT = 1_000_000
"""How many recent (event_id, dimension) pairs a book remembers to count a redelivered spend once."""
EPSILON_USD = 1e-9
"""Spend this close below a threshold's amount has reached it: ten $0.01 calls add up to $0.0999...9."""
SWEEP_SECONDS = 600
"""How often (wall clock) a book forgets the keys with no spend left in their periods."""
_COLUMN = {dimension: c.column(dimension) for dimension in ("user_id", "tenant_id", "feature", "agent_id", "team",
                                                             "environment", "session_id")}  # fmt: skip
_FEATURE, _PARENT_ID, _TAGS = c.column("feature"), c.column("parent_id"), c.column("tags")
WORKFLOW_SQL = f"if(tags['{WORKFLOW_TAG}'] != '', tags['{WORKFLOW_TAG}'], if(parent_id = '', feature, ''))"
"""A stored call's workflow in SQL, as :func:`workflow_of` reads it."""


def workflow_of(row: c.Row) -> str:
    """A stored call's workflow: its ``workflow`` tag, else, for a root call (no ``parent_id``), its feature.

    A call under another one without the tag belongs to no workflow: a child is usually stored before its
    root (a parent call ends, and is sent, after its children), so the worker cannot wait for the root.
    """
    tags = row[_TAGS]
    tagged = tags.get(WORKFLOW_TAG) if isinstance(tags, dict) else None
    if tagged:
        return str(tagged)
    return "" if row[_PARENT_ID] else str(row[_FEATURE])


def sql_of(dimension: str) -> str:
    """The SQL of a budget dimension over ``llm_calls``: its column, or the workflow's expression."""
    return WORKFLOW_SQL if dimension == "workflow" else dimension


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
        self._periods: dict[str, set[LimitPeriod]] = {}
        for b in budgets:
            self._periods.setdefault(b.dimension, set()).update(period for period, _ in b.limits)

    def periods(self, dimension: str) -> set[LimitPeriod]:
        """The periods of the budgets of ``dimension`` (what a warm-up reads)."""
        return self._periods.get(dimension, set())

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
                key = workflow_of(row) if dimension == "workflow" else row[_COLUMN[dimension]]
                if self.of(dimension, key) is not None:
                    yield Spend(row[c.EVENT_ID], ts, dimension, key, cost, sent)


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
class _Standing:
    """Where one limit of a key stands at a time: its spend, the thresholds reached, the next action."""

    period: LimitPeriod
    limit: float
    spent: float
    top: BudgetThreshold | None
    """The highest threshold reached."""
    effects: Effects
    next_level: BudgetThreshold | None
    """The first threshold ahead with an action."""

    @property
    def next_usd(self) -> float | None:
        if self.next_level is None:
            return None
        return max(0.0, self.limit * self.next_level.at / 100 - self.spent)


class BudgetBook:
    """Running totals per budget key and period, and the states and alerts that follow from them."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._totals: dict[tuple[str, LimitPeriod], dict[int, float]] = {}
        """(scope, period) -> bucket -> USD (``streams.budget_periods``)."""
        self._keys: dict[str, tuple[str, str]] = {}
        self._seen: dict[tuple[str, str], None] = {}
        self._crossed: set[tuple[str, LimitPeriod, int, int]] = set()
        """(scope, period, first bucket of the calendar period, percent): raised in that period."""
        self._raised: dict[tuple[str, LimitPeriod, int], int] = {}
        """(scope, rolling period, percent) -> the bucket it was last raised in."""
        self._published: dict[str, tuple[GuardState, float, float]] = {}
        self._dirty: set[str] = set()
        self._swept = time.monotonic()

    def reset(self) -> None:
        """Forget the totals and the counted calls before a warm-up (crossed thresholds stay)."""
        self._totals.clear()
        self._seen.clear()

    def load(self, dimension: str, key: str, period: LimitPeriod, bucket: int, usd: float) -> None:
        """A total read from ClickHouse at warm-up: ``usd`` in ``bucket`` of ``period``."""
        scope = budget_scope(dimension, key)
        self._keys[scope] = (dimension, key)
        self._totals.setdefault((scope, period), {})[bucket] = usd
        self._dirty.add(scope)

    def raised_before(self, dimension: str, key: str, period: LimitPeriod, pct: int, at: datetime) -> None:
        """A rolling period's threshold alert raised at ``at`` (read from ClickHouse at warm-up): not again
        within the window's length of it."""
        mark = (budget_scope(dimension, key), period, pct)
        bucket = bucket_of(period, at.timestamp())
        self._raised[mark] = max(bucket, self._raised.get(mark, bucket))

    def add(self, spend: Spend) -> bool:
        """Count ``spend`` unless this (event, dimension) was counted already; True if counted."""
        budget = self.budgets.of(spend.dimension, spend.key)
        seen = (spend.event_id, spend.dimension)
        if budget is None or seen in self._seen:
            return False
        self._seen[seen] = None
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        scope = spend.scope
        self._keys[scope] = (spend.dimension, spend.key)
        for period, _ in budget.limits:
            buckets = self._totals.setdefault((scope, period), {})
            bucket = bucket_of(period, spend.ts)
            buckets[bucket] = buckets.get(bucket, 0.0) + spend.cost
        self._dirty.add(scope)
        return True

    def spent(self, scope: str, period: LimitPeriod, at: datetime) -> float:
        buckets = self._totals.get((scope, period))
        if not buckets:
            return 0.0
        first, last = window(period, at)
        if first == last:
            return buckets.get(last, 0.0)
        return sum(usd for bucket, usd in buckets.items() if first <= bucket <= last)

    def _standings(self, scope: str, budget: BudgetConfig, now: datetime) -> list[_Standing]:
        levels = budget.levels
        standings = []
        for period, limit in budget.limits:
            spent = self.spent(scope, period, now)
            done = [level for level in levels if reached(spent, limit, level)]
            ahead = [level for level in levels if level not in done and level.action != "alert"]
            standings.append(
                _Standing(
                    period, limit, spent, done[-1] if done else None, Effects.of(done), ahead[0] if ahead else None
                )
            )
        return standings

    def state(self, scope: str, now: datetime, standings: list[_Standing] | None = None) -> BudgetState:
        """The guard's state for ``scope`` at ``now``: the strictest of its limits' (then the fullest)."""
        dimension, key = self._keys[scope]
        budget = self.budgets.of(dimension, key)
        assert budget is not None
        standings = standings or self._standings(scope, budget, now)
        deciding = max(standings, key=lambda s: (SEVERITY_ORDER[s.effects.state], s.spent / s.limit))
        effects = deciding.effects
        remaining = min(max(0.0, s.limit - s.spent) for s in standings)
        ahead = [s for s in standings if s.next_usd is not None]
        upcoming = min(ahead, key=lambda s: s.next_usd or 0.0) if ahead else None
        next_effects = None
        if upcoming is not None and upcoming.next_level is not None:
            next_effects = Effects.of(
                [lvl for lvl in budget.levels if reached(upcoming.limit * upcoming.next_level.at / 100,
                                                         upcoming.limit, lvl)]
            )  # fmt: skip
        legacy = budget.thresholds is None
        if legacy:  # as before thresholds: the action, what it downgrades to and its delay, in force or not
            action: BudgetAction = budget.action or "alert"
            downgrade_to = effects.downgrade_to or (next_effects.downgrade_to if next_effects else None)
            throttle = effects.throttle_seconds or (next_effects.throttle_seconds if next_effects else None)
            step = None
        else:
            action = "deny" if effects.state == "deny" else "alert"
            downgrade_to, throttle, step = effects.downgrade_to, effects.throttle_seconds, None
            if upcoming is not None and upcoming.next_level is not None and next_effects is not None:
                action = upcoming.next_level.action
                step = NextStep(
                    at_pct=upcoming.next_level.at, state=next_effects.state, usd=round(upcoming.next_usd or 0.0, 6),
                    throttle_seconds=next_effects.throttle_seconds, downgrade_to=next_effects.downgrade_to,
                )  # fmt: skip
        return BudgetState(
            scope=scope, dimension=dimension, key=key, state=effects.state, action=action,
            reason=_reason(dimension, key, deciding, remaining), period=deciding.period,
            spent_usd=round(deciding.spent, 6), limit_usd=deciding.limit, remaining_usd=round(remaining, 6),
            period_end=bounds(deciding.period, now)[1], downgrade_to=downgrade_to, throttle_seconds=throttle,
            threshold_pct=None if legacy or deciding.top is None else deciding.top.at, next=step, updated_at=now,
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
            budget = self.budgets.of(*self._keys[scope]) if scope in self._keys else None
            if budget is None:
                continue
            standings = self._standings(scope, budget, now)  # each total summed once
            state = self.state(scope, now, standings)
            mark = (state.state, round(state.spent_usd, 4), round(state.remaining_usd or 0.0, 4))
            if self._published.get(scope) != mark:
                self._published[scope] = mark
                states.append(state)
            alerts.extend(self._crossings(scope, budget, standings, now))
        return states, alerts

    def expire(self, now: datetime | None = None) -> None:
        """Settle again every scope not allowed: one whose period is over starts the next one allowed, and
        spend leaves a rolling period as it ages. Every ``SWEEP_SECONDS``, forget the keys that have no
        spend left in their periods."""
        for scope, (state, *_) in self._published.items():
            if state != "allow":
                self._dirty.add(scope)
        if time.monotonic() - self._swept >= SWEEP_SECONDS:
            self.sweep(now or datetime.now(UTC))

    def sweep(self, now: datetime) -> None:
        """Drop buckets out of their periods, and forget the keys left without any (a session long over)."""
        self._swept = time.monotonic()
        for (scope, period), buckets in list(self._totals.items()):
            first = window(period, now)[0]
            for bucket in [b for b in buckets if b < first]:
                del buckets[bucket]
            if not buckets:
                del self._totals[(scope, period)]
        live = {scope for scope, _ in self._totals} | self._dirty
        for scope in [s for s in self._keys if s not in live]:
            del self._keys[scope]
            self._published.pop(scope, None)
        self._crossed = {c for c in self._crossed if c[0] in live}
        self._raised = {r: b for r, b in self._raised.items() if r[0] in live}

    def scopes(self) -> list[str]:
        return list(self._keys)

    def _crossings(
        self, scope: str, budget: BudgetConfig, standings: list[_Standing], now: datetime
    ) -> Iterator[Alert]:
        key = self._keys[scope][1]
        for standing in standings:
            period = standing.period
            first, last = window(period, now)
            for level in budget.levels:
                if not reached(standing.spent, standing.limit, level):
                    break
                if is_rolling(period):
                    raised = self._raised.get((scope, period, level.at))
                    if raised is not None and last - raised < ROLLING_BUCKETS[period]:
                        continue
                    self._raised[(scope, period, level.at)] = last
                else:
                    if (scope, period, first, level.at) in self._crossed:
                        continue
                    self._crossed.add((scope, period, first, level.at))
                yield _threshold_alert(budget, key, standing, level, now)


def _reason(dimension: str, key: str, standing: _Standing, remaining: float) -> str:
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


def _threshold_alert(
    budget: BudgetConfig, key: str, standing: _Standing, level: BudgetThreshold, now: datetime
) -> Alert:
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
