"""Scheduled checks against ClickHouse, run by the alerter with apscheduler.

A stream window sees the calls of its worker's partitions as they pass; ClickHouse's daily rollup
sees every worker's calls at once. Three things are checked from there:

- ``daily_spend``: yesterday's (UTC) spend of each key against its daily average over the week before, raised as a
  ``spend_spike`` with a one-day window, unless the stream already raised a spend_spike for that
  key since that day began (one page per problem);
- ``budget_forecast``: each key with a monthly budget whose month is projected to end above it
  (:mod:`streams.forecast`), with the day it will pass it; raised once per key and month, and again (in
  the incident's thread) only when it gets worse: critical after a warning, or a projection 25% above
  the one last raised. A key already past its limit is ``budget_threshold``'s;
- morning digests: yesterday's spend, against the week before, with its top keys, the month-end
  forecasts, to each channel whose config asks for one. A digest is recorded in the ``digests`` table
  once Slack took it, so a failed one is tried again at the next check and none is posted twice,
  across restarts too. Its message carries an attempt id made from its day and channel: before a
  post the channel is read for it, so a digest whose answer was lost (Slack posted it) is recorded,
  not posted again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from clickhouse_connect.driver.client import Client

from alerting.mrkdwn import code
from alerting.slack import CLOCK_SKEW, Poster, Posters, SlackDeliveryError
from schemas.alert import DAY_WINDOW, Alert, Severity, alert_id_for
from schemas.config import DigestConfig, SpendstreamConfig
from schemas.exceptions import SpendstreamError
from sinks.batch import CallRows, alert_row
from sinks.burn import KeyForecast, budget_forecasts, org_forecast
from sinks.clickhouse import sql_string
from sinks.report import RUNS
from sinks.sink import ClickHouseSink
from streams.detectors.spend import hourly_query
from streams.forecast import crossing, describe, history_start, rates

logger = logging.getLogger(__name__)

BASELINE_DAYS = 7
WORSE = 1.25
"""A budget forecast already raised this month is raised again when its projection grows by this factor."""


@dataclass(frozen=True, slots=True)
class CheckRound:
    raised: int
    """New daily_spend and budget_forecast alerts (published and stored)."""
    digests: int
    """Digests posted."""
    failed_digests: int
    """Digests Slack did not take (tried again at the next check)."""


class ScheduledChecks:
    def __init__(
        self,
        client_factory: Callable[[], Client],
        database: str,
        config: SpendstreamConfig,
        posters: Posters,
        publish: Callable[[list[Alert]], None],
    ) -> None:
        self._client_factory = client_factory
        self._database = database
        self._daily = config.detectors.daily_spend
        self._forecast = config.detectors.budget_forecast
        self._budgets = config.budgets
        self._digests = config.alerts.digests
        self._interval = config.alerts.check_minutes
        self._posters = posters
        self._publish = publish
        self._sink = ClickHouseSink(client_factory, database)

    def run_once(self, now: datetime | None = None) -> CheckRound:
        """Check yesterday's spend and the monthly budgets' forecasts, and post the digests that are due.

        Raises:
            AlertPublishError: the alerts topic did not take the new alerts (nothing is stored; next check).
        """
        now = now or datetime.now(UTC)
        client = self._client_factory()
        raised = self.daily_spend(client, now) if self._daily.enabled else []
        if self._forecast.enabled:
            raised += self.budget_forecast(client, now)
        if raised:
            self._publish(raised)
            self._sink.add(CallRows(), [], alerts=[alert_row(a) for a in raised])
            self._sink.flush()
        posted = failed = 0
        for digest in self._digests:
            result = self._post_digest(client, digest, now)
            posted += result is True
            failed += result is False
        return CheckRound(len(raised), posted, failed)

    def daily_spend(self, client: Client, now: datetime) -> list[Alert]:
        """Keys whose spend yesterday passed the factor of their daily average the week before, not yet alerted."""
        day = now.date() - timedelta(days=1)
        start = _sql_day(day)
        config = self._daily
        # the daily average is over the days each data mode has calls (a week, or less on a young install)
        history = f"""
            SELECT data_mode, toUInt32(uniqExactIf(bucket, cost_usd > 0)) AS days
            FROM `{self._database}`.rollup_day
            WHERE dimension = 'all' AND bucket >= {start} - INTERVAL {BASELINE_DAYS} DAY AND bucket < {start}
            GROUP BY data_mode HAVING days >= {config.min_baseline_days}"""
        rows = client.query(
            f"SELECT r.data_mode, dimension, key, sumIf(cost_usd, bucket = {start}) AS spent, "
            f"sumIf(cost_usd, bucket < {start}) / any(h.days) AS normal "
            f"FROM `{self._database}`.rollup_day AS r INNER JOIN ({history}) AS h ON r.data_mode = h.data_mode "
            f"WHERE dimension IN %(dimensions)s AND bucket >= {start} - INTERVAL {BASELINE_DAYS} DAY "
            f"AND bucket <= {start} GROUP BY r.data_mode, dimension, key "
            f"HAVING spent > {config.factor} * normal AND spent - normal >= {config.min_excess_usd} "
            f"AND (r.data_mode, dimension, key) NOT IN (SELECT data_mode, dimension, key "
            f"FROM `{self._database}`.alerts WHERE kind = 'spend_spike' AND ts >= {start}) "
            "ORDER BY r.data_mode, dimension, key",
            parameters={"dimensions": list(config.dimensions)},
        ).result_rows
        at = datetime.combine(day + timedelta(days=1), time(), UTC)
        raised = []
        for data_mode, dimension, key, spent, normal in rows:
            ratio = spent / normal if normal else float("inf")
            critical = spent > config.critical_factor * normal
            dedup_key = f"spend_spike:daily:{data_mode}:{dimension}:{key}:{day.isoformat()}"
            alert = Alert(
                    alert_id=alert_id_for(dedup_key),
                    ts=at,
                    kind="spend_spike",
                    severity="critical" if critical else "warning",
                    dimension=dimension,
                    key=key,
                    value=round(spent, 4),
                    baseline=round(normal, 4),
                    threshold=round(config.factor * normal, 4),
                    window=DAY_WINDOW,
                    data_mode=data_mode,
                    dedup_key=dedup_key,
                    message=(
                        f"{dimension} {key or '(none)'} spent ${spent:,.2f} on {day.isoformat()} (UTC), "
                        + (f"{ratio:.1f}x" if normal else "with no spend")
                        + f" its daily average of ${normal:,.2f} over the week before. Seen in the daily rollup "
                        "(every worker's calls); the query shows it and the day before hour by hour."
                    ),
                    query=hourly_query(dimension, key, data_mode, at.timestamp() - 1, 2),
            )  # fmt: skip
            raised.append(alert)
        return raised

    def budget_forecast(self, client: Client, now: datetime) -> list[Alert]:
        """Keys whose month is projected to end above their monthly budget: new ones, and those that got worse."""
        config = self._forecast
        month = now.astimezone(UTC).date().replace(day=1)
        over = {
            f"budget_forecast:{f.scope}:{month.isoformat()}": f
            for f in budget_forecasts(client, self._budgets, now, self._database)
            if f.forecast.over and not f.forecast.passed and f.forecast.history_days >= config.min_history_days
        }
        if not over:
            return []
        before = {
            dedup_key: (bool(critical), float(projected))
            for dedup_key, critical, projected in client.query(
                f"SELECT dedup_key, max(severity = 'critical'), max(value) FROM `{self._database}`.alerts FINAL "
                "WHERE kind = 'budget_forecast' AND dedup_key IN %(keys)s GROUP BY dedup_key",
                parameters={"keys": sorted(over)},
            ).result_rows
        }
        raised = []
        for dedup_key, found in sorted(over.items()):
            forecast = found.forecast
            critical = (forecast.share or 0.0) >= config.critical_share
            if dedup_key in before:
                was_critical, projected = before[dedup_key]
                if not (critical and not was_critical) and forecast.projected_usd < WORSE * projected:
                    continue
            raised.append(_forecast_alert(found, dedup_key, "critical" if critical else "warning", now))
        return raised

    def _post_digest(self, client: Client, digest: DigestConfig, now: datetime) -> bool | None:
        """True: posted; False: Slack did not take it; None: not due, or posted before."""
        day = now.date() - timedelta(days=1)
        if now.hour < digest.hour_utc:
            return None
        done = client.query(
            f"SELECT count() FROM `{self._database}`.digests FINAL "
            "WHERE day = %(day)s AND channel = %(channel)s AND data_mode = %(mode)s",
            parameters={"day": day, "channel": digest.channel, "mode": digest.data_mode},
        ).result_rows[0][0]
        if done:
            return None
        due = datetime.combine(now.date(), time(digest.hour_utc), UTC)
        attempt_id = _digest_attempt_id(day, digest, due)
        try:
            poster = self._posters.for_channel(digest.channel)
            if self._already_posted(poster, digest.channel, attempt_id, due):
                logger.info("digest for %s to %s was posted: its answer had been lost", day, digest.channel)
            else:
                text, blocks = self.digest_message(client, digest, day, now)
                poster.post_blocks(digest.channel, text, blocks, attempt_id=attempt_id)
        except SlackDeliveryError as exc:
            logger.warning("digest for %s to %s not posted yet: %s", day, digest.channel, exc.reason)
            return False
        client.insert(
            f"`{self._database}`.digests",
            [(day, digest.channel, digest.data_mode)],
            column_names=["day", "channel", "data_mode"],
        )
        return True

    def _already_posted(self, poster: Poster, channel: str, attempt_id: str, due: datetime) -> bool:
        """Whether the channel holds the digest posted with ``attempt_id`` (an earlier post whose answer was lost).

        Raises:
            SlackDeliveryError: Slack did not answer (transient): the digest waits for the next check.
        """
        if not poster.can_check:
            return False
        try:
            return poster.find(channel, attempt_id, None, due.timestamp() - CLOCK_SKEW) is not None
        except SlackDeliveryError as exc:
            if exc.transient:
                raise
            logger.warning("cannot read %s for an earlier digest (%s): a lost answer may show it twice", channel, exc)
            return False

    def digest_message(
        self, client: Client, digest: DigestConfig, day: date, now: datetime | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        """The day's total against the week before, its cost per 1,000 calls and runs, the top keys per
        dimension, the month-end forecasts (as of ``now``, by default the end of ``day``) and the incidents."""
        now = now or datetime.combine(day + timedelta(days=1), time(), UTC)
        start = _sql_day(day)
        days = (
            f"(SELECT greatest(1, uniqExactIf(bucket, cost_usd > 0)) FROM `{self._database}`.rollup_day "
            f"WHERE dimension = 'all' AND data_mode = %(mode)s AND bucket >= {start} - INTERVAL {BASELINE_DAYS} DAY "
            f"AND bucket < {start})"
        )
        rows = client.query(
            f"SELECT dimension, key, sumIf(cost_usd, bucket = {start}) AS spent, sumIf(calls, bucket = {start}), "
            f"sumIf(cost_usd, bucket < {start}) / {days} FROM `{self._database}`.rollup_day "
            f"WHERE data_mode = %(mode)s AND dimension IN %(dimensions)s "
            f"AND bucket >= {start} - INTERVAL {BASELINE_DAYS} DAY AND bucket <= {start} "
            "GROUP BY dimension, key HAVING spent > 0 ORDER BY dimension, spent DESC, key LIMIT %(top)s BY dimension",
            parameters={"mode": digest.data_mode, "dimensions": ["all", *digest.dimensions], "top": digest.top},
        ).result_rows
        alerts = client.query(
            f"SELECT kind, uniqExact(dedup_key) FROM `{self._database}`.alerts FINAL "
            f"WHERE data_mode = %(mode)s AND status = 'firing' AND ts >= {start} AND ts < {start} + INTERVAL 1 DAY "
            "GROUP BY kind ORDER BY kind",
            parameters={"mode": digest.data_mode},
        ).result_rows
        runs = client.query(
            f"SELECT {RUNS} FROM `{self._database}`.llm_calls WHERE data_mode = %(mode)s "
            f"AND ts >= {start} AND ts < {start} + INTERVAL 1 DAY",
            parameters={"mode": digest.data_mode},
        ).result_rows[0][0]
        by_dimension: dict[str, list[tuple[str, float, int, float]]] = defaultdict(list)
        for dimension, key, spent, calls, normal in rows:
            by_dimension[dimension].append((key, spent, calls, normal))
        title = f"Spend digest for {day.isoformat()} (UTC, {digest.data_mode} calls)"
        if not by_dimension.get("all"):
            text = f"{title}: no spend was stored that day."
            return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        _, total, calls, normal = by_dimension["all"][0]
        headline = f"*${total:,.2f}* over {calls:,} calls in {runs:,} runs ({_change(total, normal)} vs the daily"
        headline += f" average of ${normal:,.2f} over the week before); ${1000 * total / max(calls, 1):,.2f} per"
        headline += f" 1,000 calls, ${1000 * total / max(runs, 1):,.2f} per 1,000 runs"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        ]
        for dimension in digest.dimensions:
            top = by_dimension.get(dimension, [])
            if not top:
                continue
            lines = [
                f"• {code(key or '(none)')} ${spent:,.2f} ({100 * spent / total:.0f}%,"
                f" {_change(spent, normal)} vs normal)"
                for key, spent, _, normal in top
            ]
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*Top {dimension}*\n" + "\n".join(lines)}}
            )
        blocks.append(self._forecast_block(client, digest, now))
        raised = ", ".join(f"{count} {kind}" for kind, count in alerts) or "none"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Incidents that day: {raised}"}]})
        return f"{title}: ${total:,.2f} ({_change(total, normal)} vs the week before)", blocks

    def _forecast_block(self, client: Client, digest: DigestConfig, now: datetime) -> dict[str, Any]:
        """The organisation's month-end forecast and, for real calls, the monthly budgets' (highest share first)."""
        org = org_forecast(client, digest.data_mode, now, self._database)
        lines = [f"*Month-end forecast*: {describe(org)}"]
        budgets = budget_forecasts(client, self._budgets, now, self._database) if digest.data_mode == "real" else []
        for found in budgets[: digest.top]:
            forecast = found.forecast
            lines.append(
                f"• {found.dimension} {code(found.key)}: ${forecast.spent_usd:,.2f} of ${forecast.limit_usd or 0:,.2f}"
                f" so far, projected ${forecast.projected_usd:,.2f} ({100 * (forecast.share or 0):.0f}%)"
                + (f", {crossing(forecast)}" if forecast.crosses_on else "")
            )
        return {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}

    def start(self) -> BackgroundScheduler:
        """Run the checks now and then every ``alerts.check_minutes``, in a background thread."""
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self._tick, IntervalTrigger(minutes=self._interval, timezone=UTC), next_run_time=datetime.now(UTC),
            max_instances=1, coalesce=True, id="scheduled-checks",
        )  # fmt: skip
        scheduler.start()
        return scheduler

    def _tick(self) -> None:
        try:
            result = self.run_once()
        except SpendstreamError as exc:
            logger.error("scheduled checks: %s", exc)
        except Exception as exc:
            logger.error("scheduled checks: cannot read ClickHouse (%s); trying again at the next check", exc)
        else:
            if result.raised or result.digests or result.failed_digests:
                logger.info("scheduled checks: %s", result)


def _digest_attempt_id(day: date, digest: DigestConfig, due: datetime) -> str:
    """The attempt id of a digest: the same at every try, in the alerter's form (when it was due, a hash)."""
    of = hashlib.blake2b(f"{day}|{digest.channel}|{digest.data_mode}".encode(), digest_size=8).hexdigest()
    return f"{due.timestamp() * 1000:.0f}-{of}"


def _sql_day(day: date) -> str:
    return f"toDateTime('{day.isoformat()} 00:00:00', 'UTC')"


def _forecast_alert(found: KeyForecast, dedup_key: str, severity: Severity, now: datetime) -> Alert:
    forecast = found.forecast
    limit = forecast.limit_usd or 0.0
    crosses = forecast.crosses_on
    days = (crosses - now.astimezone(UTC).date()).days if crosses is not None else 0
    when = "today" if days == 0 else f"in {days} day{'s' if days > 1 else ''}"
    since = history_start(now).isoformat()
    return Alert(
        alert_id=alert_id_for(f"{dedup_key}:{severity}:{forecast.projected_usd:.2f}"), ts=now,
        kind="budget_forecast", severity=severity, dimension=found.dimension, key=found.key,
        value=round(forecast.projected_usd, 4), threshold=limit,
        window="1mo", dedup_key=dedup_key,
        message=(
            f"{found.dimension} {found.key} is projected to spend ${forecast.projected_usd:,.2f} by "
            f"{forecast.last_day:%b %d}, {100 * (forecast.share or 0):.0f}% of its monthly budget of ${limit:,.2f}, "
            f"and to pass it on {crosses:%a %b %d} ({when}): ${forecast.spent_usd:,.2f} spent so far, the days left "
            f"at its recent rates ({rates(forecast)}). Past the budget, its action applies ({found.action}). "
            "The query shows its spend per day."
        ),
        query=(
            "SELECT toDate(bucket) AS day, round(sum(cost_usd), 4) AS usd, sum(calls) AS n_calls FROM rollup_day "
            f"WHERE dimension = {sql_string(found.dimension)} AND key = {sql_string(found.key)} "
            f"AND data_mode = 'real' AND bucket >= toDateTime('{since}', 'UTC') GROUP BY day ORDER BY day"
        ),
    )  # fmt: skip


def _change(value: float, normal: float) -> str:
    if normal <= 0:
        return "new"
    change = 100 * (value - normal) / normal
    return f"{change:+.0f}%"
