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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from schemas.alert import Alert
from schemas.budget import SEVERITY_ORDER, WORKFLOW_TAG, BudgetState, GuardState, NextStep, budget_scope
from schemas.config import BudgetAction, BudgetConfig, LimitPeriod
from streams.budget_periods import ROLLING_BUCKETS, bounds, bucket_of, is_rolling, window
from streams.budget_thresholds import Effects, Standing, next_step, reached, reason_of, threshold_alert
from streams.detectors import calls as c

SEEN_LIMIT = 1_000_000
"""How many recent (event_id, dimension) pairs a book remembers to count a redelivered spend once."""
_COLUMN = {dimension: c.column(dimension) for dimension in ("user_id", "tenant_id", "feature", "agent_id", "team",
                                                             "environment", "session_id")}  # fmt: skip
_FEATURE, _PARENT_ID, _TAGS = c.column("feature"), c.column("parent_id"), c.column("tags")


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


class BudgetBook:
    """Running totals per budget key and period, and the states and alerts that follow from them."""

    def __init__(self, budgets: Budgets, sweep_seconds: float = 600.0) -> None:
        self.budgets = budgets
        self._sweep_seconds = sweep_seconds
        """How often (wall clock) :meth:`expire` forgets the keys with no spend left in their periods."""
        self._forgotten: list[str] = []
        """Scopes forgotten whose state was published: their states are to be removed (tombstones)."""
        self._totals: dict[tuple[str, LimitPeriod], dict[int, float]] = {}
        """(scope, period) -> bucket -> USD (``streams.budget_periods``)."""
        self._keys: dict[str, tuple[str, str]] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        """Counted (event_id, dimension) pairs, oldest first. An OrderedDict: a plain dict's first key, after
        many deletions at its front, is found by scanning past them (each spend past the limit took ~100 us)."""
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
            self._seen.popitem(last=False)
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

    def _standings(self, scope: str, budget: BudgetConfig, now: datetime) -> list[Standing]:
        levels = budget.levels
        standings = []
        for period, limit in budget.limits:
            spent = self.spent(scope, period, now)
            done = [level for level in levels if reached(spent, limit, level)]
            standings.append(Standing(period, limit, spent, done[-1] if done else None, Effects.of(done)))
        return standings

    def state(self, scope: str, now: datetime, standings: list[Standing] | None = None) -> BudgetState:
        """The guard's state for ``scope`` at ``now``: the strictest of its limits' (then the fullest)."""
        dimension, key = self._keys[scope]
        budget = self.budgets.of(dimension, key)
        assert budget is not None
        standings = standings or self._standings(scope, budget, now)
        deciding = max(standings, key=lambda s: (SEVERITY_ORDER[s.effects.state], s.spent / s.limit))
        effects = deciding.effects
        remaining = min(max(0.0, s.limit - s.spent) for s in standings)
        step = next_step(budget.levels, standings, effects)
        legacy = budget.thresholds is None
        if legacy:  # as before thresholds: the action, what it downgrades to and its delay, in force or not
            action: BudgetAction = budget.action or "alert"
            downgrade_to = effects.downgrade_to or (step.effects.downgrade_to if step else None)
            throttle = effects.throttle_seconds or (step.effects.throttle_seconds if step else None)
            next_ = None
        else:
            action = step.level.action if step else "deny" if effects.state == "deny" else "alert"
            downgrade_to, throttle = effects.downgrade_to, effects.throttle_seconds
            next_ = None if step is None else NextStep(
                at_pct=step.level.at, state=step.effects.state, usd=round(step.usd, 6),
                throttle_seconds=step.effects.throttle_seconds, downgrade_to=step.effects.downgrade_to,
            )  # fmt: skip
        return BudgetState(
            scope=scope, dimension=dimension, key=key, state=effects.state, action=action,
            reason=reason_of(dimension, key, deciding, remaining), period=deciding.period,
            spent_usd=round(deciding.spent, 6), limit_usd=deciding.limit, remaining_usd=round(remaining, 6),
            period_end=bounds(deciding.period, now)[1], downgrade_to=downgrade_to, throttle_seconds=throttle,
            threshold_pct=None if legacy or deciding.top is None else deciding.top.at, next=next_, updated_at=now,
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
        spend leaves a rolling period as it ages. Every ``sweep_seconds``, forget the keys that have no
        spend left in their periods."""
        for scope, (state, *_) in self._published.items():
            if state != "allow":
                self._dirty.add(scope)
        if time.monotonic() - self._swept >= self._sweep_seconds:
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
        # a key whose published state is not allow yet is kept until its allow is published
        live = {scope for scope, _ in self._totals} | {
            s for s, (state, *_) in self._published.items() if state != "allow"
        }
        for scope in [s for s in self._keys if s not in live]:
            del self._keys[scope]
            self._dirty.discard(scope)
            if self._published.pop(scope, None) is not None:
                self._forgotten.append(scope)
        self._crossed = {c for c in self._crossed if c[0] in live and c[2] >= window(c[1], now)[0]}  # past periods
        self._raised = {r: b for r, b in self._raised.items() if r[0] in live}

    def take_forgotten(self, owns: Callable[[str], bool] | None = None) -> list[str]:
        """The forgotten scopes whose published states are to be removed: those ``owns`` (when given) says
        this worker owns now (another worker's state of a scope it no longer owns is not its to remove)."""
        forgotten = [s for s in self._forgotten if (owns is None or owns(s)) and s not in self._keys]
        self._forgotten.clear()
        return forgotten

    def scopes(self) -> list[str]:
        return list(self._keys)

    def _crossings(self, scope: str, budget: BudgetConfig, standings: list[Standing], now: datetime) -> Iterator[Alert]:
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
                yield threshold_alert(budget, key, standing, level, now)
