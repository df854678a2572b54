"""The month-end forecast against real chDB: a budget_forecast alert to the Slack stand-in, raised once and again
when worse; the digest and the report with the forecasts and the cost per 1,000 runs.

A month of history is staged by storing calls with past timestamps and stated costs, so every amount is exact.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from alerting.alerter import Alerter
from alerting.scheduled import ScheduledChecks
from alerting.slack import Posters, SlackPoster
from alerting.topic import AlertTopic
from schemas import topics
from schemas.call_event import CallEvent
from schemas.config import SpendstreamConfig
from sinks.batch import CallRows, alert_row
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.report import build_report
from sinks.sink import ClickHouseSink
from spendstream.kafka_admin import ensure_topics
from spendstream.report_html import render_html
from streams.forecast import history_start, is_weekend
from tests.demo_calls import priced
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # a Friday
CONFIG: dict[str, Any] = {
    "budgets": [
        {"dimension": "tenant_id", "key": "tenant_acme", "monthly_usd": 850, "action": "deny"},
        {"dimension": "tenant_id", "key": "*", "monthly_usd": 1000},
    ],
    "detectors": {"daily_spend": {"enabled": False}},
    "alerts": {
        "routes": [{"channel": "#llm-costs"}],
        "digests": [{"channel": "#llm-costs", "hour_utc": 8, "top": 3, "data_mode": "real"}],
    },
}


def call(ts: datetime, tenant: str, usd: float, trace: str | None = None) -> CallEvent:
    return CallEvent.model_validate(
        {
            "event_id": uuid.uuid4().hex,
            "ts": ts.isoformat(),
            "provider": "openai",
            "model": "gpt-4o",
            "cost_usd": usd,
            "tenant_id": tenant,
            "feature": "support.triage",
            "trace_id": trace,
        }
    )


def staged_month() -> list[CallEvent]:
    """From the forecast's history start to the day before NOW: tenant_acme $40 a weekday in two runs of two $10
    calls, $10 a weekend day; tenant_globex $10 a weekday in two calls without a trace, $2 a weekend day."""
    calls = []
    day = history_start(NOW)
    while day < NOW.date():
        at = datetime.combine(day, time(14), UTC)
        if is_weekend(day):
            calls += [call(at, "tenant_acme", 10.0), call(at, "tenant_globex", 2.0)]
        else:
            for run in ("a", "b"):
                calls += [call(at, "tenant_acme", 10.0, f"{day}-{run}") for _ in range(2)]
            calls += [call(at, "tenant_globex", 5.0) for _ in range(2)]
        day += timedelta(days=1)
    return [*calls, call(NOW - timedelta(hours=2), "tenant_acme", 15.0, "today")]


@pytest.fixture
def stored(chdb_dsn: str, database: str) -> Iterator[str]:
    migrate(connect(chdb_dsn), database)
    store([*staged_month()], chdb_dsn, database)
    yield database


def store(calls: list[CallEvent], chdb_dsn: str, database: str) -> None:
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    sink.add(priced(calls).calls, [])
    sink.flush()


def scheduled(
    chdb_dsn: str, database: str, slack: SlackStandIn, broker: str, acme_monthly_usd: float = 850
) -> ScheduledChecks:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    ensure_topics(broker, 1, {}, prefix)
    budgets = [{**CONFIG["budgets"][0], "monthly_usd": acme_monthly_usd}, *CONFIG["budgets"][1:]]
    config = SpendstreamConfig.model_validate({**CONFIG, "budgets": budgets})
    posters = Posters(SlackPoster("xoxb-test", slack.url))
    topic = AlertTopic(broker, prefix + topics.ALERTS)
    return ScheduledChecks(lambda: connect(chdb_dsn), database, config, posters, topic.publish)


def deliver(chdb_dsn: str, database: str, slack: SlackStandIn) -> int:
    config = SpendstreamConfig.model_validate(CONFIG)
    posters = Posters(SlackPoster("xoxb-test", slack.url))
    alerter = Alerter(lambda: connect(chdb_dsn), database, config.alerts.routes, posters, 0, 0)
    return alerter.deliver_pending().delivered


def test_a_budget_whose_trend_passes_it_is_alerted_once_with_the_day_and_again_when_worse(
    chdb_dsn: str, ch: Client, stored: str, slack: SlackStandIn, broker: str
) -> None:
    checks = scheduled(chdb_dsn, stored, slack, broker)
    # yesterday's digest counts as posted: the digest has its own test
    yesterday = NOW.date() - timedelta(days=1)
    ch.command(f"INSERT INTO {stored}.digests (day, channel, data_mode) VALUES ('{yesterday}', '#llm-costs', 'real')")

    first = checks.budget_forecast(connect(chdb_dsn), NOW)
    assert checks.run_once(NOW).raised == 1
    assert checks.run_once(NOW + timedelta(minutes=10)).raised == 0  # raised once

    # $610 by Thursday and $15 today; the rest of today $25 (to a $40 weekday), $280 for the days left: $930,
    # passing $850 on Friday the 27th ($870); the $1,000 of each other tenant is far off
    [alert] = first
    assert (alert.kind, alert.severity, alert.key) == ("budget_forecast", "warning", "tenant_acme")
    assert (alert.value, alert.baseline, alert.threshold, alert.window) == (930.0, None, 850.0, "1mo")
    assert "pass it on Fri Nov 27 (in 7 days): $625.00 spent so far" in alert.message
    assert "($40.00 a weekday, $10.00 a weekend day)" in alert.message and "(deny)" in alert.message
    days = connect(chdb_dsn, database=stored).query(alert.query).result_rows
    assert sum(usd for day, usd, _ in days if day >= date(2026, 11, 1)) == pytest.approx(625.0)

    assert deliver(chdb_dsn, stored, slack) == 1
    [message] = slack.posted
    assert message.channel == "#llm-costs" and "budget_forecast" in message.text and "Nov 27" in message.text

    # a $150 burst this morning: $1,075 projected (126%, critical), passing the budget on Monday
    store([call(NOW + timedelta(minutes=30), "tenant_acme", 150.0, "burst")], chdb_dsn, stored)
    later = NOW + timedelta(hours=2)
    assert checks.run_once(later).raised == 1
    assert checks.run_once(later + timedelta(minutes=10)).raised == 0
    worse = ch.query(
        f"SELECT severity, value, message FROM {stored}.alerts FINAL WHERE kind = 'budget_forecast' ORDER BY ts"
    ).result_rows
    assert [(s, v) for s, v, _ in worse] == [("warning", 930.0), ("critical", 1075.0)]
    assert "pass it on Mon Nov 23 (in 3 days)" in worse[1][2]
    assert deliver(chdb_dsn, stored, slack) == 1
    assert slack.posted[1].thread_ts == message.ts  # the update is a reply in the incident's thread


def test_the_digest_and_the_report_show_the_forecasts_and_the_cost_per_1000_runs(
    chdb_dsn: str, stored: str, slack: SlackStandIn, broker: str
) -> None:
    checks = scheduled(chdb_dsn, stored, slack, broker)
    checks.run_once(NOW)

    digest = next(m for m in slack.posted if m.text.startswith("Spend digest"))
    body = json.dumps(digest.blocks)
    # Thursday: $50 over 6 calls in 4 runs (two traces of tenant_acme, two calls of tenant_globex without one)
    assert "*$50.00* over 6 calls in 4 runs" in body
    assert "$8,333.33 per 1,000 calls, $12,500.00 per 1,000 runs" in body
    assert "Month-end forecast" in body and "tenant_id `tenant_acme`: $625.00 of $850.00" in body
    assert "projected $930.00 (109%), passes it on Fri Nov 27" in body

    report = build_report(
        connect(chdb_dsn, database=stored), "real", now=NOW, budgets=SpendstreamConfig.model_validate(CONFIG).budgets
    )
    # this month: 14 weekdays of 6 calls in 4 runs, 5 weekend days of 2, and today's call of a run of its own
    assert (report.total.month_calls, report.total.month_runs) == (14 * 6 + 5 * 2 + 1, 14 * 4 + 5 * 2 + 1)
    assert report.total.per_1k_runs == pytest.approx(1000 * report.total.month_usd / 67)
    acme = next(r for r in report.top["tenant_id"] if r.key == "tenant_acme")
    assert acme.month_runs == 14 * 2 + 5 + 1 and acme.month_calls == 14 * 4 + 5 + 1
    assert [(k.scope, k.forecast.crosses_on) for k in report.budgets] == [
        ("tenant_id=tenant_acme", date(2026, 11, 27)),
        ("tenant_id=tenant_globex", None),
    ]
    # tenant_globex: $150 so far, $10 today, $68 for the days left; with tenant_acme's $930
    assert report.forecast is not None and report.forecast.projected_usd == pytest.approx(930 + 228)
    html = render_html(report)
    assert "Per 1,000 runs" in html and "per 1,000 runs" in html and "Monthly budgets: month-end forecast" in html


def test_a_critical_forecast_is_raised_again_only_when_its_projection_grows_by_a_quarter(
    chdb_dsn: str, stored: str, slack: SlackStandIn, broker: str
) -> None:
    """Early in the month, with tenant_acme's budget at $700: critical from the start; bursts that keep it
    under the limit so far raise it again only once the projection is 25% above the one raised."""
    checks = scheduled(chdb_dsn, stored, slack, broker, acme_monthly_usd=700)
    early = datetime(2026, 11, 5, 10, 0, tzinfo=UTC)  # a Thursday; the day's staged $40 is stored already

    def raised(burst: float) -> list[float]:
        if burst:
            store([call(early + timedelta(minutes=5), "tenant_acme", burst, f"burst-{burst}")], chdb_dsn, stored)
        found = checks.budget_forecast(connect(chdb_dsn), early)
        store_alerts = ClickHouseSink(lambda: connect(chdb_dsn), stored)
        store_alerts.add(CallRows(), [], alerts=[alert_row(a) for a in found])
        store_alerts.flush()
        return [a.value for a in found if a.severity == "critical"]

    [first] = raised(0)
    assert raised(100) == []  # $100 more: 10% worse
    [again] = raised(200)  # $300 in all: 31% worse, $470 of $700 spent
    assert first == pytest.approx(130 + 40 + 40 * 14 / 24 + 17 * 40 + 8 * 10)
    assert again == pytest.approx(first + 300)
