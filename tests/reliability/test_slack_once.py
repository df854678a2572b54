"""Slack gets each alert once: a response lost after Slack posted is checked in the channel, not posted again,
and an incident's resolution waits for the incident's message and goes in its thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from clickhouse_connect.driver.client import Client

from alerting.alerter import Alerter, DeliveryRound
from alerting.slack import Posters, SlackPoster
from schemas.alert import Alert, alert_id_for
from schemas.config import Route
from sinks.batch import CallRows, alert_row
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from tests.slack_standin import SlackStandIn

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

ROUTES = [Route(channel="#llm-costs")]


def incident_alert(n: int, key: str, status: str = "firing") -> Alert:
    dedup_key = f"hourly_burn:real:feature:{key}"
    return Alert(
        alert_id=alert_id_for(f"{dedup_key}#{n}"), ts=datetime.now(UTC), kind="hourly_burn",
        severity="critical" if n > 1 else "warning", dimension="feature", key=key, value=float(n), window="1h",
        message=f"{key} burns, step {n}", query="SELECT 1", dedup_key=dedup_key, status=status,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def store_and_deliver(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> tuple[Callable[..., None], Callable[[], DeliveryRound]]:
    """``raise_(*alerts)`` stores alerts as the worker does; ``deliver()`` is a round of a newly started alerter."""
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)

    def raise_(*alerts: Alert) -> None:
        sink.add(CallRows(), [], alerts=[alert_row(a) for a in alerts])
        sink.flush()

    def deliver() -> DeliveryRound:
        poster = SlackPoster("xoxb-test", slack.url, timeout=1)
        alerter = Alerter(lambda: connect(chdb_dsn), database, ROUTES, Posters(poster), 0, 0, recheck_after=0)
        return alerter.deliver_pending()

    return raise_, deliver


def delivery(ch: Client, database: str) -> dict[str, tuple[str, str]]:
    rows = ch.query(f"SELECT alert_id, delivery_state, thread_ts FROM {database}.alerts FINAL").result_rows
    return {alert_id: (state, thread_ts) for alert_id, state, thread_ts in rows}


def test_a_lost_response_leads_to_exactly_one_message(
    store_and_deliver: tuple[Callable[..., None], Callable[[], DeliveryRound]],
    ch: Client,
    database: str,
    slack: SlackStandIn,
) -> None:
    raise_, deliver = store_and_deliver
    first = incident_alert(1, "sales.a")
    raise_(first)
    slack.lose_answers = 2  # Slack posts, then its answer is lost: to the post, and to a retry if one is made

    lost = deliver()
    assert (lost.delivered, lost.failed, len(slack.posted)) == (0, 1, 1)

    recovered = deliver()  # another alerter (a restart) finds the message in the channel by its attempt id
    assert (recovered.delivered, len(slack.posted)) == (1, 1)
    [message] = slack.posted
    assert delivery(ch, database)[first.alert_id] == ("delivered", message.ts)
    assert message.metadata is not None and message.metadata["event_type"] == "spendstream_alert"

    # a reply whose answer is lost: found in the thread, not posted again
    worse = incident_alert(2, "sales.a")
    raise_(worse)
    slack.lose_answers = 2
    assert deliver().delivered == 0
    assert deliver().delivered == 1
    [reply] = slack.replies_to(message)
    assert len(slack.posted) == 2 and "step 2" in reply.text
    assert delivery(ch, database)[worse.alert_id] == ("delivered", message.ts)
    print(f"\nSlack, 2 lost responses: {len(slack.posted)} messages posted for 2 alerts; calls {slack.calls}")


def test_a_resolution_waits_for_its_incidents_message_and_goes_in_its_thread(
    store_and_deliver: tuple[Callable[..., None], Callable[[], DeliveryRound]],
    ch: Client,
    database: str,
    slack: SlackStandIn,
) -> None:
    raise_, deliver = store_and_deliver
    firing = incident_alert(1, "sales.b")
    raise_(firing)
    slack.known_channels.discard(
        "#llm-costs"
    )  # the bot was removed from the channel: 3 refusals, then tried less often
    for _ in range(3):
        assert deliver().failed == 1
    slack.known_channels.add("#llm-costs")
    resolved = incident_alert(2, "sales.b", status="resolved")
    raise_(resolved)

    waiting = deliver()  # the incident's message is not delivered yet: its resolution waits for it
    assert (waiting.delivered, waiting.held, slack.posted) == (0, 1, [])

    deadline = time.monotonic() + 30
    while not slack.posted and time.monotonic() < deadline:  # the incident's alert is due again after 15 s
        time.sleep(1)
        deliver()

    [message] = slack.messages()
    assert "step 1" in message.text
    [reply] = slack.replies_to(message)
    assert reply.text.startswith("[resolved]")
    assert delivery(ch, database) == {
        firing.alert_id: ("delivered", message.ts),
        resolved.alert_id: ("delivered", message.ts),
    }
