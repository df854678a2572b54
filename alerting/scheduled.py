"""Scheduled checks against ClickHouse, run by the alerter with apscheduler.

A stream window sees the calls of its worker's partitions as they pass; ClickHouse's daily rollup
sees every worker's calls at once. Two things are checked from there:

- ``daily_spend``: yesterday's (UTC) spend of each key against its daily average over the week before, raised as a
  ``spend_spike`` with a one-day window, unless the stream already raised a spend_spike for that
  key since that day began (one page per problem);
- morning digests: yesterday's spend, against the week before, with its top keys, to each channel
  whose config asks for one. A digest is recorded in the ``digests`` table once Slack took it, so
  a failed one is tried again at the next check and none is posted twice, across restarts too.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from clickhouse_connect.driver.client import Client

from alerting.slack import Posters, SlackDeliveryError
from schemas.alert import DAY_WINDOW, Alert, alert_id_for
from schemas.config import DigestConfig, SpendstreamConfig
from schemas.exceptions import SpendstreamError
from sinks.batch import CallRows, alert_row
from sinks.sink import ClickHouseSink
from streams.detectors.spend import hourly_query

logger = logging.getLogger(__name__)

BASELINE_DAYS = 7


@dataclass(frozen=True, slots=True)
class CheckRound:
    raised: int
    """New daily_spend alerts (published and stored)."""
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
        self._digests = config.alerts.digests
        self._interval = config.alerts.check_minutes
        self._posters = posters
        self._publish = publish
        self._sink = ClickHouseSink(client_factory, database)

    def run_once(self, now: datetime | None = None) -> CheckRound:
        """Check yesterday's spend and post the digests that are due.

        Raises:
            AlertPublishError: the alerts topic did not take the new alerts (nothing is stored; next check).
        """
        now = now or datetime.now(UTC)
        client = self._client_factory()
        raised = self.daily_spend(client, now) if self._daily.enabled else []
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
        text, blocks = self.digest_message(client, digest, day)
        try:
            self._posters.for_channel(digest.channel).post_blocks(digest.channel, text, blocks)
        except SlackDeliveryError as exc:
            logger.warning("digest for %s to %s not posted yet: %s", day, digest.channel, exc.reason)
            return False
        client.insert(
            f"`{self._database}`.digests",
            [(day, digest.channel, digest.data_mode)],
            column_names=["day", "channel", "data_mode"],
        )
        return True

    def digest_message(self, client: Client, digest: DigestConfig, day: date) -> tuple[str, list[dict[str, Any]]]:
        """The day's total against the week before, the top keys per dimension, and the incidents raised."""
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
        by_dimension: dict[str, list[tuple[str, float, int, float]]] = defaultdict(list)
        for dimension, key, spent, calls, normal in rows:
            by_dimension[dimension].append((key, spent, calls, normal))
        title = f"Spend digest for {day.isoformat()} (UTC, {digest.data_mode} calls)"
        if not by_dimension.get("all"):
            text = f"{title}: no spend was stored that day."
            return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        _, total, calls, normal = by_dimension["all"][0]
        headline = f"*${total:,.2f}* over {calls:,} calls ({_change(total, normal)} vs the daily average"
        headline += f" of ${normal:,.2f} over the week before); ${1000 * total / max(calls, 1):,.2f} per 1,000 calls"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        ]
        for dimension in digest.dimensions:
            top = by_dimension.get(dimension, [])
            if not top:
                continue
            lines = [
                f"• `{key or '(none)'}` ${spent:,.2f} ({100 * spent / total:.0f}%, {_change(spent, normal)} vs normal)"
                for key, spent, _, normal in top
            ]
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*Top {dimension}*\n" + "\n".join(lines)}}
            )
        raised = ", ".join(f"{count} {kind}" for kind, count in alerts) or "none"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Incidents that day: {raised}"}]})
        return f"{title}: ${total:,.2f} ({_change(total, normal)} vs the week before)", blocks

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


def _sql_day(day: date) -> str:
    return f"toDateTime('{day.isoformat()} 00:00:00', 'UTC')"


def _change(value: float, normal: float) -> str:
    if normal <= 0:
        return "new"
    change = 100 * (value - normal) / normal
    return f"{change:+.0f}%"
