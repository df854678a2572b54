"""Scheduled checks against ClickHouse: yesterday's spend per key, and the morning digest to Slack."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, TopicPartition

from alerting.scheduled import ScheduledChecks
from alerting.slack import Posters, SlackPoster
from alerting.topic import AlertTopic
from producers.demo_incidents import SPIKE_FEATURE, DemoIncidents
from schemas import topics
from schemas.alert import Alert, alert_id_for
from schemas.config import SpendstreamConfig
from sinks.batch import CallRows, alert_row
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from spendstream.kafka_admin import ensure_topics
from tests.demo_calls import NOW, demo_calls, priced
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration

INCIDENTS = DemoIncidents.before(NOW)
SPIKE_DAY = INCIDENTS.anchor.date()
MORNING_AFTER = datetime.combine(SPIKE_DAY + timedelta(days=1), time(9), UTC)


@pytest.fixture(scope="module")
def stored_week(chdb_dsn: str) -> Iterator[str]:
    """Eight days of the demo, incidents included, stored once for this module's tests."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    migrate(connect(chdb_dsn), database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    for batch in demo_calls(INCIDENTS, days=8, size=20_000):
        sink.add(priced(batch).calls, [])
        sink.flush()
    yield database


def published(bootstrap: str, topic: str) -> list[Alert]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    alerts = []
    while messages := consumer.consume(500, 3.0):
        alerts.extend(Alert.model_validate(json.loads(m.value())) for m in messages if m.error() is None)
    consumer.close()
    return alerts


def checks(chdb_dsn: str, database: str, slack: SlackStandIn, bootstrap: str) -> tuple[ScheduledChecks, str]:
    """Scheduled checks posting to the stand-in and publishing to an alerts topic of their own (its prefix)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, 1, {}, prefix)
    config = SpendstreamConfig.model_validate(
        {"alerts": {"digests": [{"channel": "#llm-costs", "hour_utc": 8, "top": 3, "data_mode": "demo"}]}}
    )
    topic = AlertTopic(bootstrap, prefix + topics.ALERTS)
    posters = Posters(SlackPoster("xoxb-test", slack.url))
    return ScheduledChecks(lambda: connect(chdb_dsn), database, config, posters, topic.publish), prefix


def test_yesterdays_spike_is_raised_once_from_the_daily_rollup_and_a_quiet_day_raises_nothing(
    chdb_dsn: str, ch: Client, stored_week: str, slack: SlackStandIn, broker: str
) -> None:
    checks_, prefix = checks(chdb_dsn, stored_week, slack, broker)
    spike_user = ch.query(
        f"SELECT user_id FROM {stored_week}.llm_calls WHERE feature = '{SPIKE_FEATURE}' "
        f"AND toDate(ts) = '{SPIKE_DAY.isoformat()}' GROUP BY user_id ORDER BY sum(cost_usd) DESC LIMIT 1"
    ).result_rows[0][0]
    # the stream already paged about the spike's user that day: the daily check does not page again
    stream_alert = Alert(
        alert_id=alert_id_for("stream"), ts=INCIDENTS.spike_window[0], kind="spend_spike", severity="warning",
        dimension="user_id", key=spike_user, value=30.0, window="24h", message="m", query="SELECT 1",
        dedup_key="spend_spike:demo:user_id", data_mode="demo",
    )  # fmt: skip
    sink = ClickHouseSink(lambda: connect(chdb_dsn), stored_week)
    sink.add(CallRows(), [], alerts=[alert_row(stream_alert)])
    sink.flush()

    first = checks_.run_once(MORNING_AFTER)
    again = checks_.run_once(MORNING_AFTER + timedelta(hours=1))
    quiet = checks_.run_once(datetime.combine(SPIKE_DAY - timedelta(days=1), time(9), UTC))

    raised = ch.query(
        f"SELECT dimension, key, severity, value, baseline FROM {stored_week}.alerts FINAL WHERE window = '1d'"
    ).result_rows
    assert (first.raised, again.raised, quiet.raised) == (len(raised), 0, 0)
    assert ("feature", SPIKE_FEATURE) in {(d, k) for d, k, *_ in raised}
    assert ("user_id", spike_user) not in {(d, k) for d, k, *_ in raised}
    # the controls stay quiet: every key raised is one the spike's calls carry
    spike_keys = {SPIKE_FEATURE, "tenant_initech", "gpt-4o", "sales-eng", "sales_copilot"}
    assert {k for _, k, *_ in raised} <= spike_keys
    spent = ch.query(
        f"SELECT sum(cost_usd) FROM {stored_week}.llm_calls WHERE feature = '{SPIKE_FEATURE}' "
        f"AND toDate(ts) = '{SPIKE_DAY.isoformat()}'"
    ).result_rows[0][0]
    spike = next(r for r in raised if r[1] == SPIKE_FEATURE)
    assert spike[3] == pytest.approx(spent, abs=0.01) and spike[3] > 2 * spike[4]
    drill_down = ch.query(
        f"SELECT query FROM {stored_week}.alerts FINAL WHERE window = '1d' AND key = '{SPIKE_FEATURE}'"
    ).result_rows[0][0]
    hours = connect(chdb_dsn, database=stored_week).query(drill_down).result_rows
    assert sum(usd for bucket, usd, _ in hours if bucket.date() == SPIKE_DAY) == pytest.approx(spent, abs=0.01)
    assert sorted((a.dimension, a.key) for a in published(broker, prefix + topics.ALERTS)) == sorted(
        (d, k) for d, k, *_ in raised
    )


def test_the_morning_digest_is_posted_once_after_its_hour_and_survives_a_slack_outage(
    chdb_dsn: str, ch: Client, stored_week: str, slack: SlackStandIn, broker: str
) -> None:
    checks_, _ = checks(chdb_dsn, stored_week, slack, broker)
    ch.command(f"TRUNCATE TABLE {stored_week}.digests")

    early = checks_.run_once(MORNING_AFTER.replace(hour=7))
    slack.failures = [(503, {}, {"ok": False, "error": "service_unavailable"})]
    outage = checks_.run_once(MORNING_AFTER)
    posted = checks_.run_once(MORNING_AFTER + timedelta(minutes=10))
    again = checks_.run_once(MORNING_AFTER + timedelta(hours=3))

    assert (early.digests, outage.failed_digests, posted.digests, again.digests) == (0, 1, 1, 0)
    [message] = slack.posted
    total = ch.query(
        f"SELECT sum(cost_usd) FROM {stored_week}.llm_calls WHERE toDate(ts) = '{SPIKE_DAY.isoformat()}'"
    ).result_rows[0][0]
    assert message.channel == "#llm-costs"
    assert message.text.startswith(f"Spend digest for {SPIKE_DAY.isoformat()} (UTC, demo calls): ${total:,.2f}")
    body = json.dumps(message.blocks)
    assert "Top feature" in body and SPIKE_FEATURE in body and "per 1,000 calls" in body


def test_a_digest_whose_answer_was_lost_is_posted_once(
    chdb_dsn: str, ch: Client, stored_week: str, slack: SlackStandIn, broker: str
) -> None:
    checks_, _ = checks(chdb_dsn, stored_week, slack, broker)
    ch.command(f"TRUNCATE TABLE {stored_week}.digests")
    slack.lose_answers = 1  # Slack posts it, and the connection drops before its answer

    lost = checks_.run_once(MORNING_AFTER)
    found = checks_.run_once(MORNING_AFTER + timedelta(minutes=10))
    again = checks_.run_once(MORNING_AFTER + timedelta(minutes=20))

    assert (lost.failed_digests, found.digests, again.digests) == (1, 1, 0)
    [message] = slack.posted
    assert message.text.startswith(f"Spend digest for {SPIKE_DAY.isoformat()}")
