"""Month-end burn forecasts read from the daily rollup: each key with a monthly budget, and the whole organisation.

The arithmetic is :mod:`streams.forecast`'s; this module reads the daily spend it needs (the month so far
and the five weeks before today) and matches keys to budgets as the worker does (a key's own budget wins
over its dimension's ``*``). Budgets count ``real`` calls only, so their forecasts do too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from clickhouse_connect.driver.client import Client

from schemas.budget import budget_scope
from schemas.config import BudgetConfig
from streams.budget_thresholds import Effects
from streams.budgets import Budgets
from streams.forecast import Forecast, forecast_month, history_start


def monthly_limit(budget: BudgetConfig) -> float | None:
    """A budget's monthly limit in USD (None: it has none): the one place the forecasts read it.

    ``monthly_usd``, or ``limit_usd`` with ``period: month``; a rolling 30 days is not a month.
    """
    return next((usd for period, usd in budget.limits if period == "monthly"), None)


def action_past_limit(budget: BudgetConfig) -> str:
    """What the guard does past the monthly limit (``alert``, ``throttle``, ``downgrade``, ``deny``): the
    strictest action of the thresholds up to 100% (a budget without thresholds: its ``action``)."""
    state = Effects.of(level for level in budget.levels if level.at <= 100).state
    return "alert" if state == "allow" else state


@dataclass(frozen=True, slots=True)
class KeyForecast:
    dimension: str
    key: str
    forecast: Forecast
    action: str
    """What the guard does past the limit."""

    @property
    def scope(self) -> str:
        return budget_scope(self.dimension, self.key)


def budget_forecasts(
    client: Client, budgets: Sequence[BudgetConfig], now: datetime, database: str | None = None
) -> list[KeyForecast]:
    """The forecast of every key with a monthly budget that spent in the last five weeks or names its own
    budget, the highest share of its limit first."""
    monthly = [b for b in budgets if monthly_limit(b) is not None]
    if not monthly:
        return []
    matcher = Budgets(budgets)
    found: list[KeyForecast] = []
    for dimension in dict.fromkeys(b.dimension for b in monthly):
        own = [b.key for b in monthly if b.dimension == dimension and b.key != "*"]
        each = any(b.dimension == dimension and b.key == "*" for b in monthly)
        spend = daily_spend(client, "real", dimension, None if each else own, now, database)
        for key in sorted(set(spend) | set(own)):
            budget = matcher.of(dimension, key)
            limit = monthly_limit(budget) if budget is not None else None
            if budget is not None and limit is not None:
                forecast = forecast_month(spend.get(key, {}), now, limit)
                found.append(KeyForecast(dimension, key, forecast, action_past_limit(budget)))
    return sorted(found, key=lambda f: (-(f.forecast.share or 0.0), f.scope))


def org_forecast(client: Client, data_mode: str, now: datetime, database: str | None = None) -> Forecast:
    """The forecast of the whole organisation's spend (every call of ``data_mode``)."""
    return forecast_month(daily_spend(client, data_mode, "all", ["all"], now, database).get("all", {}), now)


def daily_spend(
    client: Client, data_mode: str, dimension: str, keys: Sequence[str] | None, now: datetime, database: str | None
) -> dict[str, dict[date, float]]:
    """Per key of ``dimension`` (all of them, or ``keys``): its spend per UTC day from the forecast's history
    start to ``now``."""
    if keys is not None and not keys:
        return {}
    table = f"`{database}`.rollup_day" if database else "rollup_day"
    today = now.astimezone(UTC).date()
    rows = client.query(
        f"SELECT key, toDate(bucket) AS day, sum(cost_usd) FROM {table} "
        "WHERE data_mode = %(mode)s AND dimension = %(dimension)s "
        + ("AND key IN %(keys)s " if keys is not None else "")
        + "AND bucket >= toDateTime(%(since)s, 'UTC') AND bucket < toDateTime(%(until)s, 'UTC') "
        "GROUP BY key, day",
        parameters={
            "mode": data_mode,
            "dimension": dimension,
            "keys": list(keys or []),
            "since": history_start(now).isoformat(),
            "until": (today + timedelta(days=1)).isoformat(),
        },
    ).result_rows
    spend: dict[str, dict[date, float]] = defaultdict(dict)
    for key, day, usd in rows:
        spend[key][day] = float(usd)
    return dict(spend)
