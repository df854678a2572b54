"""The alerter: delivers the alerts stored as ``pending`` to the channels their routes name.

The ``alerts`` table is the outbox. Every state change is a new row version, so an alert that
Slack did not take (an outage, a rate limit, a channel the bot is not in) stays ``pending`` and is
tried again in a later round, also by an alerter started after a restart: nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from clickhouse_connect.driver.client import Client

from alerting.routes import channel_for
from alerting.slack import SlackDeliveryError, SlackPoster
from schemas.alert import Alert
from schemas.config import Route
from sinks.batch import ALERT_COLUMNS

logger = logging.getLogger(__name__)

_STATE_COLUMNS = (*ALERT_COLUMNS, "delivery_state", "channel", "delivery_error", "attempts")
ROUND_LIMIT = 200


@dataclass(frozen=True, slots=True)
class DeliveryRound:
    delivered: int
    unrouted: int
    failed: int
    retry_after: float
    """Seconds to wait before the next round (Slack's Retry-After, or 0)."""


class Alerter:
    def __init__(
        self, client_factory: Callable[[], Client], database: str, routes: Sequence[Route], poster: SlackPoster | None
    ) -> None:
        self._client_factory = client_factory
        self._database = database
        self._routes = list(routes)
        self._poster = poster
        self._client: Client | None = None

    def deliver_pending(self) -> DeliveryRound:
        """Try every pending alert once, oldest first; stop early when Slack asks to slow down."""
        client = self._connected()
        # after a few failed attempts (a channel the bot is not in), an alert is tried less often
        rows = client.query(
            f"SELECT {', '.join(_STATE_COLUMNS)} FROM `{self._database}`.alerts FINAL "
            "WHERE delivery_state = 'pending' AND (attempts <= 2 OR "
            "updated_at <= now64(3) - toIntervalSecond(least(600, 5 * attempts))) "
            f"ORDER BY ts, alert_id LIMIT {ROUND_LIMIT}"
        ).named_results()
        delivered = unrouted = failed = 0
        retry_after = 0.0
        updates: list[tuple[Any, ...]] = []
        for row in rows:
            fields = {c: row[c] for c in ALERT_COLUMNS}
            if fields["ts"].tzinfo is None:  # DateTime64('UTC') may come back naive
                fields["ts"] = fields["ts"].replace(tzinfo=UTC)
            alert = Alert.model_validate(fields)
            channel = channel_for(alert, self._routes)
            if channel is None:
                updates.append(_state(alert, "unrouted", "", "no route matches", row["attempts"]))
                unrouted += 1
                continue
            if self._poster is None:
                error = "no Slack bot token: set SPENDSTREAM_SLACK_BOT_TOKEN"
                updates.append(_state(alert, "pending", channel, error, row["attempts"] + 1))
                failed += 1
                continue
            try:
                self._poster.post(channel, alert)
            except SlackDeliveryError as exc:
                logger.warning("alert %s to %s not delivered yet: %s", alert.alert_id, channel, exc.reason)
                updates.append(_state(alert, "pending", channel, exc.reason, row["attempts"] + 1))
                failed += 1
                if exc.transient:  # Slack is down or busy: the rest waits for the next round
                    retry_after = max(exc.retry_after, 1.0)
                    break
                continue
            updates.append(_state(alert, "delivered", channel, "", row["attempts"] + 1))
            delivered += 1
        if updates:
            client.insert(f"`{self._database}`.alerts", updates, column_names=list(_STATE_COLUMNS))
        return DeliveryRound(delivered, unrouted, failed, retry_after)

    def run(self, stop: threading.Event, interval: float = 2.0) -> None:
        """Deliver in rounds until ``stop`` is set; failures of ClickHouse itself are logged and retried."""
        while not stop.is_set():
            wait = interval
            try:
                result = self.deliver_pending()
                wait = max(interval, result.retry_after)
            except Exception as exc:
                self._client = None
                logger.error("alerter: cannot read or update the alerts table (%s); retrying in %.0fs", exc, 10)
                wait = 10.0
            stop.wait(wait)

    def _connected(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client


def _state(alert: Alert, state: str, channel: str, error: str, attempts: int) -> tuple[Any, ...]:
    return (*(getattr(alert, c) for c in ALERT_COLUMNS), state, channel, error, attempts)
