"""The spend report: today and this month, the top keys, cost per 1,000 calls, runs and outcomes, the trend, and
the month-end forecasts.

Read from the daily rollup (and, for outcomes and agents, the documented queries of ``sql/queries``),
so it costs a few small queries whatever the volume; the runs of the month are counted in ``llm_calls``
(the trace ids of the month's calls of the top keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.config import BudgetConfig
from sinks.burn import KeyForecast, budget_forecasts, org_forecast
from sinks.migrations import SQL_DIR
from sinks.traces import agents_by_workflow
from streams.forecast import Forecast

EXAMPLES = SQL_DIR / "queries" / "examples.sql"
DIMENSIONS = ("feature", "model", "agent_id", "tenant_id", "prompt_version")
RUNS = "uniqExactIf(trace_id, trace_id != '') + countIf(trace_id = '')"
"""Runs among calls of ``llm_calls``: a run is a request, one trace (however many calls and agents it took); a
call without a ``trace_id`` is a run of its own."""
_RUN_KEYS = {  # the rollups' key of each dimension, from a call's columns
    "all": "'all'", "feature": "toString(feature)", "model": "toString(model)", "agent_id": "agent_id",
    "tenant_id": "tenant_id", "prompt_version": "concat(toString(feature), '@', toString(prompt_version))",
}  # fmt: skip


def example_query(question: str, data_mode: str = "real") -> str:
    """The query of ``examples.sql`` that follows ``-- Q: <question>``, for calls of ``data_mode``."""
    text = EXAMPLES.read_text()
    if f"-- Q: {question}" not in text:
        raise KeyError(f"no example query starts with {question!r} in {EXAMPLES}")
    block = text.split(f"-- Q: {question}", 1)[1].split(";", 1)[0]
    query = "\n".join(line for line in block.splitlines()[1:] if not line.startswith("--"))
    return query.replace("data_mode = 'real'", f"data_mode = '{data_mode}'") if data_mode != "real" else query


@dataclass(frozen=True, slots=True)
class TopRow:
    key: str
    today_usd: float
    month_usd: float
    month_calls: int
    last7_usd: float
    prev7_usd: float
    month_runs: int = 0
    """Runs (requests) this month that the key took part in: a run of several keys counts for each."""

    @property
    def per_1k_calls(self) -> float:
        return 1000 * self.month_usd / self.month_calls if self.month_calls else 0.0

    @property
    def per_1k_runs(self) -> float:
        return 1000 * self.month_usd / self.month_runs if self.month_runs else 0.0

    @property
    def trend(self) -> float | None:
        """Last 7 days against the 7 before, as a ratio (None without spend before)."""
        return self.last7_usd / self.prev7_usd if self.prev7_usd else None


@dataclass(frozen=True, slots=True)
class Report:
    day: date
    data_mode: str
    total: TopRow
    daily: list[tuple[date, float, int]]
    """The last 30 days: day, USD, calls."""
    top: dict[str, list[TopRow]]
    outcomes: list[tuple[str, int, float, float]]
    """outcome, count, USD of the requests that reached it, USD per outcome (last 7 days)."""
    agents: list[tuple[Any, ...]]
    """workflow, agent, calls, traces, USD, USD per trace, share (last 7 days)."""
    generated_at: datetime
    forecast: Forecast | None = None
    """The month-end forecast of all the calls of ``data_mode``."""
    budgets: list[KeyForecast] = field(default_factory=list)
    """The month-end forecasts of the keys with a monthly budget (real calls only), highest share first."""


def build_report(
    client: Client,
    data_mode: str = "real",
    top: int = 5,
    now: datetime | None = None,
    budgets: Sequence[BudgetConfig] = (),
) -> Report:
    now = now or datetime.now(UTC)
    day = now.date()
    month = day.replace(day=1)
    since = min(month, day - timedelta(days=29))
    rows = client.query(
        "SELECT dimension, key, "
        "sumIf(cost_usd, bucket = toDateTime(%(day)s, 'UTC')) AS today_usd, "
        "sumIf(cost_usd, bucket >= toDateTime(%(month)s, 'UTC')) AS month_usd, "
        "sumIf(calls, bucket >= toDateTime(%(month)s, 'UTC')) AS month_calls, "
        "sumIf(cost_usd, bucket > toDateTime(%(day)s, 'UTC') - INTERVAL 7 DAY) AS last7, "
        "sumIf(cost_usd, bucket <= toDateTime(%(day)s, 'UTC') - INTERVAL 7 DAY "
        "AND bucket > toDateTime(%(day)s, 'UTC') - INTERVAL 14 DAY) AS prev7 "
        "FROM rollup_day WHERE data_mode = %(mode)s AND dimension IN %(dimensions)s "
        "AND bucket >= toDateTime(%(since)s, 'UTC') - INTERVAL 14 DAY "
        "GROUP BY dimension, key HAVING month_usd > 0 OR last7 > 0 "
        "ORDER BY dimension, month_usd DESC, key LIMIT %(top)s BY dimension",
        parameters={
            "day": day.isoformat(),
            "month": month.isoformat(),
            "since": since.isoformat(),
            "mode": data_mode,
            "dimensions": ["all", *DIMENSIONS],
            "top": top,
        },
    ).result_rows
    runs = month_runs(client, data_mode, month, [(d, k) for d, k, *_ in rows])
    by_dimension: dict[str, list[TopRow]] = {d: [] for d in DIMENSIONS}
    total = TopRow("all", 0.0, 0.0, 0, 0.0, 0.0)
    for dimension, key, today_usd, month_usd, month_calls, last7, prev7 in rows:
        row = TopRow(key, float(today_usd), float(month_usd), int(month_calls), float(last7), float(prev7),
                     runs.get((dimension, key), 0))  # fmt: skip
        if dimension == "all":
            total = row
        else:
            by_dimension[dimension].append(row)
    daily = [
        (bucket.date() if isinstance(bucket, datetime) else bucket, float(usd), int(calls))
        for bucket, usd, calls in client.query(
            "SELECT bucket, sum(cost_usd), sum(calls) FROM rollup_day WHERE data_mode = %(mode)s "
            "AND dimension = 'all' AND bucket > toDateTime(%(day)s, 'UTC') - INTERVAL 30 DAY "
            "GROUP BY bucket ORDER BY bucket",
            parameters={"mode": data_mode, "day": day.isoformat()},
        ).result_rows
    ]
    outcomes = [
        (str(outcome), int(n), float(usd or 0), float(per or 0))
        for outcome, n, usd, per in client.query(
            example_query("cost per outcome from the requests", data_mode)
        ).result_rows
    ]
    agents = [tuple(row) for row in agents_by_workflow(client, data_mode, 7)]
    forecast = org_forecast(client, data_mode, now)
    keys = budget_forecasts(client, budgets, now) if data_mode == "real" else []
    return Report(day, data_mode, total, daily, by_dimension, outcomes, agents, now, forecast, keys)


def month_runs(
    client: Client, data_mode: str, month: date, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The runs since ``month`` began of each (dimension, key) of ``keys``."""
    found: dict[tuple[str, str], int] = {}
    for dimension in dict.fromkeys(d for d, _ in keys):
        wanted = [k for d, k in keys if d == dimension]
        column = _RUN_KEYS[dimension]
        found.update(
            ((dimension, key), int(runs))
            for key, runs in client.query(
                f"SELECT {column} AS key, {RUNS} AS runs FROM llm_calls WHERE data_mode = %(mode)s "
                "AND ts >= toDateTime(%(month)s, 'UTC') AND key IN %(keys)s GROUP BY key",
                parameters={"mode": data_mode, "month": month.isoformat(), "keys": wanted},
            ).result_rows
        )
    return found
