"""Alert delivery: routes pick the channel, Slack outages and rate limits lose nothing, restarts repost nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from alerting.alerter import Alerter, DeliveryRound
from alerting.slack import Posters, SlackPoster
from schemas.alert import Alert, alert_id_for
from schemas.config import AlertsConfig, Route, RouteMatch
from schemas.exceptions import ConfigError
from sinks.batch import CallRows, alert_row
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from spendstream.cli import main
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.integration

ROUTES = [
    Route(match=RouteMatch(kind="loop_detected"), channel="#agent-loops"),
    Route(match=RouteMatch(severity="critical"), channel="#llm-oncall"),
    Route(match=RouteMatch(dimension="tenant_id", key="tenant_*"), channel="#llm-costs"),
    Route(match=RouteMatch(kind="unpriced_model"), channel="#llm-costs"),
]


def alert(kind: str, severity: str, dimension: str, key: str) -> Alert:
    dedup_key = f"{kind}:{dimension}:{key}"
    return Alert(
        alert_id=alert_id_for(dedup_key), ts=datetime.now(UTC), kind=kind, severity=severity,  # type: ignore[arg-type]
        dimension=dimension, key=key, value=3.5, baseline=1.0, threshold=2.0, window="1h",
        message=f"{kind} on {key}", query="SELECT 1", dedup_key=dedup_key,
    )  # fmt: skip


def states(ch: Client, database: str) -> dict[str, tuple[str, str]]:
    rows = ch.query(f"SELECT key, delivery_state, channel FROM {database}.alerts FINAL").result_rows
    return {key: (state, channel) for key, state, channel in rows}


def test_alerts_reach_their_routes_through_an_outage_and_a_rate_limit(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    raised = [
        alert("loop_detected", "warning", "session_id", "s-1"),
        alert("spend_spike", "critical", "feature", "sales.email_draft"),
        alert("spend_spike", "warning", "tenant_id", "tenant_acme"),
        alert("hourly_burn", "info", "team", "platform"),  # no route takes it
    ]
    sink.add(CallRows(), [], alerts=[alert_row(a) for a in raised])
    sink.flush()
    slack.failures = [
        (503, {}, {"ok": False, "error": "service_unavailable"}),
        (429, {"Retry-After": "3"}, {"ok": False, "error": "ratelimited"}),
    ]

    def alerter() -> Alerter:  # a fresh alerter each round: as if restarted in between
        return Alerter(
            lambda: connect(chdb_dsn), database, ROUTES, Posters(SlackPoster("xoxb-test", slack.url)), group_wait=0
        )

    outage = alerter().deliver_pending()
    assert (outage.delivered, outage.failed, outage.unrouted, slack.posted) == (0, 1, 1, [])
    limited = alerter().deliver_pending()
    assert (limited.delivered, limited.retry_after) == (0, 3.0)
    assert all(state == "pending" for key, (state, _) in states(ch, database).items() if key != "platform")

    done = alerter().deliver_pending()

    assert (done.delivered, done.messages) == (3, 3)
    assert sorted(slack.channels()) == ["#agent-loops", "#llm-costs", "#llm-oncall"]
    assert states(ch, database) == {
        "s-1": ("delivered", "#agent-loops"),
        "sales.email_draft": ("delivered", "#llm-oncall"),
        "tenant_acme": ("delivered", "#llm-costs"),
        "platform": ("unrouted", ""),
    }
    sink.add(CallRows(), [], alerts=[alert_row(raised[0])])  # raised again by a restarted worker
    sink.flush()
    assert alerter().deliver_pending().delivered == 0  # nothing is posted twice
    assert len(slack.posted) == 3
    posted = next(p for p in slack.posted if p.channel == "#llm-oncall")
    assert posted.blocks is not None and "spend_spike" in str(posted.blocks) and "SELECT 1" in str(posted.blocks)


def test_a_channel_the_bot_cannot_post_to_keeps_the_alert_with_the_reason(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    sink.add(CallRows(), [], alerts=[alert_row(alert("unpriced_model", "warning", "model", "selfhost/x"))])
    sink.flush()
    routes = [Route(channel="#nowhere")]

    result = Alerter(
        lambda: connect(chdb_dsn), database, routes, Posters(SlackPoster("xoxb-test", slack.url)), group_wait=0
    ).deliver_pending()

    assert (result.delivered, result.failed) == (0, 1)
    state, error = ch.query(f"SELECT delivery_state, delivery_error FROM {database}.alerts FINAL").result_rows[0]
    assert state == "pending"
    assert "channel_not_found" in error and "invite the bot" in error


def incident_alert(n: int, kind: str, key: str, severity: str, status: str = "firing") -> Alert:
    dedup_key = f"{kind}:real:feature:{key}"
    return Alert(
        alert_id=alert_id_for(f"{dedup_key}#{n}"), ts=datetime.now(UTC), kind=kind, severity=severity,  # type: ignore[arg-type]
        dimension="feature", key=key, value=float(n), window="1h", message=f"{key} burns, step {n}",
        query="SELECT 1", dedup_key=dedup_key, status=status,  # type: ignore[arg-type]
    )  # fmt: skip


def test_an_incident_is_one_message_and_its_updates_and_resolution_go_in_its_thread(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    routes = [Route(channel="#llm-costs")]

    def raise_(*alerts: Alert) -> None:
        sink.add(CallRows(), [], alerts=[alert_row(a) for a in alerts])
        sink.flush()

    def deliver(group_wait: float = 0, group_interval: float = 0) -> int:
        alerter = Alerter(
            lambda: connect(chdb_dsn), database, routes, Posters(SlackPoster("xoxb-test", slack.url)),
            group_wait=group_wait, group_interval=group_interval,
        )  # fmt: skip
        return alerter.deliver_pending().held

    # a runaway feature lights up two keys at once: one message, posted at once to a quiet channel
    raise_(
        incident_alert(1, "hourly_burn", "sales.a", "warning"), incident_alert(1, "hourly_burn", "sales.b", "warning")
    )
    assert deliver(group_wait=60) == 0
    [message] = slack.messages()
    assert "sales.a" in str(message.blocks) and "sales.b" in str(message.blocks)

    # it gets worse: a reply in the thread, held back while the group interval has not passed
    raise_(incident_alert(2, "hourly_burn", "sales.a", "critical"))
    assert deliver(group_interval=600) == 1
    raise_(incident_alert(3, "hourly_burn", "sales.a", "critical"))
    assert deliver() == 0
    [update] = slack.replies_to(message)
    assert "step 3" in update.text and "step 2" not in update.text  # held-back alerts fold into the latest

    # resolved: said at once, in the thread, even within the group interval
    raise_(incident_alert(4, "hourly_burn", "sales.b", "warning", status="resolved"))
    assert deliver(group_interval=600) == 0
    assert [r.text.startswith("[resolved]") for r in slack.replies_to(message)] == [False, True]
    assert len(slack.messages()) == 1

    # the same condition firing again after its resolution is a new incident: a new message
    raise_(incident_alert(5, "hourly_burn", "sales.b", "warning"))
    deliver()
    assert len(slack.messages()) == 2


def test_a_new_incident_is_posted_at_once_and_those_right_after_it_wait_for_the_group_wait_together(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    alerter = Alerter(
        lambda: connect(chdb_dsn), database, [Route(channel="#llm-costs")],
        Posters(SlackPoster("xoxb-test", slack.url)), group_wait=3600,
    )  # fmt: skip

    def raise_(*alerts: Alert) -> DeliveryRound:
        sink.add(CallRows(), [], alerts=[alert_row(a) for a in alerts])
        sink.flush()
        return alerter.deliver_pending()

    assert raise_(incident_alert(1, "hourly_burn", "sales.a", "warning")).messages == 1  # a quiet channel: at once
    # more of the same kind right after it: held together for the group wait, however many rounds pass
    assert raise_(incident_alert(1, "hourly_burn", "sales.b", "warning")).held == 1
    assert raise_(incident_alert(1, "hourly_burn", "sales.c", "warning")).held == 2
    # an incident of another kind is not held by them
    assert raise_(incident_alert(1, "latency_p95", "sales.a", "warning")).messages == 1
    assert [m.text.split(":")[0] for m in slack.messages()] == [
        "[warning] hourly_burn feature=sales.a",
        "[warning] latency_p95 feature=sales.a",
    ]
    # once the group wait has passed since the group's last message, the held ones go as one message
    later = Alerter(
        lambda: connect(chdb_dsn), database, [Route(channel="#llm-costs")],
        Posters(SlackPoster("xoxb-test", slack.url)), group_wait=0.5,
    )  # fmt: skip
    time.sleep(0.6)
    assert later.deliver_pending().messages == 1
    newest = slack.messages()[-1]
    assert "sales.b" in str(newest.blocks) and "sales.c" in str(newest.blocks)


def spend_alert(kind: str, dimension: str, key: str, value: float, threshold: float, status: str = "firing") -> Alert:
    dedup_key = f"{kind}:real:{dimension}:{key}"
    return Alert(
        alert_id=alert_id_for(f"{dedup_key}#{status}"), ts=datetime.now(UTC), kind=kind,  # type: ignore[arg-type]
        severity="warning", dimension=dimension, key=key, value=value, baseline=threshold / 3, threshold=threshold,
        window="1h", message=f"{dimension} {key} spent ${value:.2f} in the last hour", query="SELECT 1",
        dedup_key=dedup_key, status=status,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_new_incident_an_open_one_explains_is_a_reply_in_its_thread(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    # the last hour: a tenant taking over (its users u1, u2 and part of feature code.assist), and an unrelated feature
    calls = [("tenant_wonka", "u1", "code.assist", 2.4), ("tenant_wonka", "u2", "code.assist", 2.2),
             ("tenant_acme", "u3", "code.assist", 1.0), ("tenant_acme", "u4", "docs.answer", 4.0)]  # fmt: skip
    ch.command(
        f"INSERT INTO {database}.llm_calls (event_id, ts, provider, model, kind, feature, tenant_id, user_id, "
        "data_mode, cost_usd, priced, status) VALUES "
        + ", ".join(
            f"('c{n}', now64(3) - INTERVAL {n + 1} MINUTE, 'anthropic', 'claude-sonnet-4-5', 'llm', '{feature}', "
            f"'{tenant}', '{user}', 'real', {usd}, 1, 'success')"
            for n, (tenant, user, feature, usd) in enumerate(calls)
        )
    )
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    alerter = Alerter(
        lambda: connect(chdb_dsn), database, [Route(channel="#llm-costs")],
        Posters(SlackPoster("xoxb-test", slack.url)), group_wait=0, group_interval=0,
    )  # fmt: skip

    def raise_(*alerts: Alert) -> DeliveryRound:
        sink.add(CallRows(), [], alerts=[alert_row(a) for a in alerts])
        sink.flush()
        return alerter.deliver_pending()

    assert raise_(spend_alert("hourly_burn", "tenant_id", "tenant_wonka", 4.6, 1.0)).messages == 1
    [cause] = slack.messages()
    # a user of the tenant, and the feature it burns (without the tenant's calls, $1.00 against $3): its thread
    raise_(spend_alert("hourly_burn", "user_id", "u1", 2.4, 0.3))
    raise_(spend_alert("hourly_burn", "feature", "code.assist", 5.6, 3.0))
    # the same tenant's burn over the day: another kind of the same key's trouble
    raise_(spend_alert("spend_spike", "tenant_id", "tenant_wonka", 4.6, 2.0))
    assert [m.text.split(":")[0] for m in slack.replies_to(cause)] == [
        # a dotted name reads like a web address to Slack: it is set in code, never linked
        "[warning] hourly_burn user_id=u1", "[warning] hourly_burn `feature=code.assist`",
        "[warning] spend_spike tenant_id=tenant_wonka",
    ]  # fmt: skip
    # a feature the tenant does not explain ($4 without it, threshold $3): a message of its own
    raise_(spend_alert("hourly_burn", "feature", "docs.answer", 4.0, 3.0))
    # the user's own update follows it into that thread
    raise_(spend_alert("hourly_burn", "user_id", "u1", 2.4, 0.3, status="resolved"))
    assert len(slack.replies_to(cause)) == 4
    # once the incidents that explain it are resolved, the same trouble seen through another user is news again
    raise_(
        spend_alert("hourly_burn", "tenant_id", "tenant_wonka", 0.5, 1.0, status="resolved"),
        spend_alert("spend_spike", "tenant_id", "tenant_wonka", 0.5, 1.0, status="resolved"),
    )
    raise_(spend_alert("hourly_burn", "user_id", "u2", 2.2, 0.3))  # its feature's incident is still open
    assert len(slack.messages()) == 2
    raise_(spend_alert("hourly_burn", "feature", "code.assist", 1.0, 3.0, status="resolved"))
    raise_(spend_alert("hourly_burn", "user_id", "u3", 1.0, 0.3))
    assert [m.text.split(":")[0] for m in slack.messages()] == [
        "[warning] hourly_burn tenant_id=tenant_wonka", "[warning] hourly_burn `feature=docs.answer`",
        "[warning] hourly_burn user_id=u3",
    ]  # fmt: skip

    # an incident none of whose calls are in sight (its clock behind them) is not taken as explained
    raise_(spend_alert("hourly_burn", "user_id", "ghost", 2.0, 0.3))
    assert slack.messages()[-1].text.startswith("[warning] hourly_burn user_id=ghost")

    # switched off, every new incident is its own message
    plain = Alerter(
        lambda: connect(chdb_dsn), database, [Route(channel="#llm-costs")],
        Posters(SlackPoster("xoxb-test", slack.url)), group_wait=0, group_interval=0, inhibit=False,
    )  # fmt: skip
    sink.add(CallRows(), [], alerts=[alert_row(spend_alert("hourly_burn", "tenant_id", "tenant_acme", 5, 1))])
    sink.flush()
    plain.deliver_pending()
    sink.add(CallRows(), [], alerts=[alert_row(spend_alert("hourly_burn", "user_id", "u4", 4.0, 0.3))])
    sink.flush()
    plain.deliver_pending()
    assert len(slack.messages()) == 6


def test_a_route_with_an_incoming_webhook_posts_through_it_and_survives_its_outage(
    chdb_dsn: str, ch: Client, database: str, slack: SlackStandIn
) -> None:
    migrate(ch, database)
    sink = ClickHouseSink(lambda: connect(chdb_dsn), database)
    config = AlertsConfig(
        routes=[
            Route(match=RouteMatch(kind="loop_detected"), channel="#agent-loops", webhook_env="LOOPS_WEBHOOK"),
            Route(channel="#llm-costs"),
        ]
    )
    environ = {"LOOPS_WEBHOOK": slack.webhook_url("#agent-loops")}

    def deliver() -> DeliveryRound:  # a fresh alerter each round: as if restarted in between
        posters = Posters.configured(config, "xoxb-test", slack.url, "spendstream.yaml", environ)
        return Alerter(lambda: connect(chdb_dsn), database, config.routes, posters, 0, 0).deliver_pending()

    def raise_(*alerts: Alert) -> None:
        sink.add(CallRows(), [], alerts=[alert_row(a) for a in alerts])
        sink.flush()

    raise_(alert("loop_detected", "warning", "session_id", "s-9"), alert("spend_spike", "warning", "team", "sales"))
    slack.failures = [(503, {}, {"error": "service_unavailable"})]
    assert deliver().failed == 1  # the webhook's outage: kept, and the round stops
    assert slack.posted == []
    assert deliver().delivered == 2
    assert sorted(slack.channels()) == ["#agent-loops", "#llm-costs"]
    webhook_message = next(p for p in slack.posted if p.channel == "#agent-loops")
    assert "s-9" in webhook_message.text and webhook_message.blocks is not None

    # an update cannot be a thread reply through a webhook: it is a new message that says it is an update
    worse = alert("loop_detected", "critical", "session_id", "s-9")
    raise_(worse.model_copy(update={"alert_id": alert_id_for(f"{worse.dedup_key}#2")}))
    assert deliver().delivered == 1
    assert slack.posted[-1].channel == "#agent-loops" and slack.posted[-1].text.startswith("Update: [critical]")

    # a revoked webhook: the alert stays pending with what to do
    slack.known_channels.discard("#agent-loops")
    raise_(alert("loop_detected", "warning", "session_id", "s-10"))
    assert deliver().failed == 1
    error = ch.query(f"SELECT delivery_error FROM {database}.alerts FINAL WHERE key = 's-10'").result_rows[0][0]
    assert "no_service" in error and "create a new one" in error


def test_a_webhook_variable_that_is_not_set_is_refused_with_the_field() -> None:
    config = AlertsConfig(routes=[Route(channel="#agent-loops", webhook_env="LOOPS_WEBHOOK")])

    with pytest.raises(ConfigError) as refused:
        Posters.configured(config, None, "https://slack.com/api/", "spendstream.yaml", {})

    assert refused.value.field == "alerts.routes.0.webhook_env"
    assert "LOOPS_WEBHOOK is not set" in refused.value.reason


def test_test_slack_posts_to_each_routed_channel_and_says_which_failed(tmp_path: Path, slack: SlackStandIn) -> None:
    config = tmp_path / "spendstream.yaml"
    config.write_text(
        "alerts:\n  routes:\n"
        "    - {match: {kind: loop_detected}, channel: '#agent-loops', webhook_env: LOOPS_WEBHOOK}\n"
        "    - {match: {severity: critical}, channel: '#nowhere'}\n"
        "    - {channel: '#llm-costs'}\n"
    )
    env = {"SPENDSTREAM_CONFIG": str(config), "SPENDSTREAM_SLACK_BOT_TOKEN": "xoxb-test",
           "SPENDSTREAM_SLACK_API_URL": slack.url, "LOOPS_WEBHOOK": slack.webhook_url("#agent-loops")}  # fmt: skip

    result = CliRunner().invoke(main, ["alerts", "test-slack"], env=env)

    assert result.exit_code == 1
    assert "#agent-loops: ok" in result.output and "#llm-costs: ok" in result.output
    assert "#nowhere: FAILED" in result.output and "channel_not_found" in result.output
    assert "1 of 3 channel(s) failed" in result.output
    assert sorted(slack.channels()) == ["#agent-loops", "#llm-costs"]
