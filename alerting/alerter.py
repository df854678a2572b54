"""The alerter: delivers the alerts stored as ``pending`` to the channels their routes name.

The ``alerts`` table is the outbox. Every state change is a new row version, so an alert that
Slack did not take (an outage, a rate limit, a channel the bot is not in) stays ``pending`` and is
tried again in a later round, also by an alerter started after a restart: nothing is dropped.

Grouping, in the manner of Alertmanager:

- new incidents of one kind that go to one channel are posted at once when that channel had no
  message of their kind in the last ``group_wait``; otherwise they wait until ``group_wait`` has
  passed since that message, and go together as one message. Incidents raised together (a runaway
  feature that lights up its team, model and tenant in one check) are one message either way;
- a new incident that an open one explains (the same cause seen through another key: see
  ``alerting.inhibition``) is a reply in that incident's thread, as its updates are;
- later alerts of an incident (an escalation, a reminder, its resolution) are replies in the
  thread of that message, at most one per ``group_interval``, a resolution at once; alerts held
  back meanwhile are folded into the next reply, which shows the latest of them. While an earlier
  alert of the incident is not delivered yet, its later ones wait for it: they never open a
  message of their own.

Each alert is posted once, even when Slack's answer is lost. Before a post the alerter writes the
alerts as ``posting`` with a new attempt id, which the message carries in its metadata. When no
answer comes (a timeout, a dropped connection), the alerts stay ``posting``; ``recheck_after``
seconds later the alerter, or another one after a restart, looks for the attempt id in the channel
(``conversations.history``, or ``conversations.replies`` for a reply): found, they are delivered
as that message; not found, they are posted again. Incoming webhooks cannot be read back, so there
a lost answer means the message is posted again (at least once).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from alerting.inhibition import Answers, Causes
from alerting.routes import channel_for
from alerting.scheduled import ScheduledChecks
from alerting.slack import CLOCK_SKEW, Poster, Posters, SlackDeliveryError
from schemas.alert import Alert
from schemas.config import Route
from sinks.batch import ALERT_COLUMNS
from sinks.clickhouse import utc

logger = logging.getLogger(__name__)

_STATE_COLUMNS = (
    *ALERT_COLUMNS, "raised_at", "delivery_state", "channel", "delivery_error", "attempts", "thread_ts", "attempt_id",
    "updated_at",
)  # fmt: skip
ROUND_LIMIT = 500


@dataclass(frozen=True, slots=True)
class DeliveryRound:
    delivered: int
    """Alerts delivered (several may share one message)."""
    messages: int
    unrouted: int
    failed: int
    """Alerts Slack did not take, or whose answer was lost (then checked in the channel before posting again)."""
    held: int
    """Alerts waiting for their group wait or group interval, or for an earlier alert of their incident."""
    retry_after: float
    """Seconds to wait before the next round (Slack's Retry-After, or 0)."""


@dataclass(slots=True)
class _Pending:
    alert: Alert
    raised_at: float
    attempts: int
    channel: str | None
    """Where its route sends it now (None: no route)."""
    due: bool
    """Not held back after failed attempts."""
    attempt_id: str = ""
    """``posting``: the post whose answer was lost, made to ``posted_to`` (in the thread ``posted_in``)."""
    posted_to: str = ""
    posted_in: str = ""


@dataclass(frozen=True, slots=True)
class _Thread:
    ts: str
    last_posted: float


class Alerter:
    def __init__(
        self,
        client_factory: Callable[[], Client],
        database: str,
        routes: Sequence[Route],
        posters: Posters,
        group_wait: float = 10.0,
        group_interval: float = 300.0,
        checks: ScheduledChecks | None = None,
        recheck_after: float = 30.0,
        inhibit: bool = True,
    ) -> None:
        self._client_factory = client_factory
        self._database = database
        self._routes = list(routes)
        self._posters = posters
        self._group_wait = group_wait
        self._group_interval = group_interval
        self._client: Client | None = None
        self._checks = checks
        self._recheck_after = recheck_after
        self._inhibit = inhibit
        self._answers: Answers = OrderedDict()
        self._last_write = 0.0

    def describe(self) -> str:
        """Where alerts go, for the start-up banner."""
        return self._posters.describe()

    def deliver_pending(self) -> DeliveryRound:
        """Deliver what is due, oldest first; stop early when Slack asks to slow down."""
        client = self._connected()
        now = time.time()
        undelivered = self._undelivered(client)
        settled, again, retry_after = self._settle_lost_answers(client, [p for p in undelivered if p.attempt_id])
        done = {id(p) for p in settled + again}
        # an incident whose alert waits (after failed attempts, or for a lost answer to be checked)
        # holds its later alerts back: they go after it, in its thread
        waiting = {
            (p.alert.dedup_key, p.posted_to or p.channel)
            for p in undelivered
            if (not p.due or p.attempt_id) and id(p) not in done
        }
        pending = [p for p in undelivered if p.due and not p.attempt_id] + again
        threads = self._open_threads(client, {p.alert.dedup_key for p in pending})
        updates: list[tuple[Any, ...]] = []
        counts = {"delivered": len(settled), "messages": 0, "unrouted": 0, "failed": 0, "held": 0}
        replies: dict[tuple[str, str], list[_Pending]] = defaultdict(list)
        causes = Causes(client, self._database, self._answers) if self._inhibit else None
        groups: dict[tuple[str, str, str], list[_Pending]] = defaultdict(list)
        for item in pending:
            if item.channel is None:
                updates.append(self._row(item, "unrouted", "", "no route matches", item.attempts, ""))
                counts["unrouted"] += 1
            elif (item.alert.dedup_key, item.channel) in waiting:
                counts["held"] += 1
            elif (item.alert.dedup_key, item.channel) in threads:
                replies[(item.alert.dedup_key, item.channel)].append(item)
            elif causes is not None and (cause := causes.of(item.alert, item.channel)) is not None:
                # the same cause seen through another key: a reply in the cause's thread
                threads.setdefault((cause.dedup_key, cause.channel), _Thread(cause.thread_ts, cause.last_posted))
                replies[(cause.dedup_key, cause.channel)].append(item)
            else:
                groups[(item.channel, item.alert.kind, item.alert.data_mode)].append(item)

        # (channel, items, thread_ts or None)
        due: list[tuple[str, list[_Pending], str | None]] = []
        for (dedup_key, channel), items in replies.items():
            thread = threads[(dedup_key, channel)]
            resolved = any(i.alert.status == "resolved" for i in items)
            if resolved or now - thread.last_posted >= self._group_interval:
                due.append((channel, items, thread.ts))
            else:
                counts["held"] += len(items)
        active = self._active_groups(client, now, set(groups))
        for group, items in groups.items():
            if group not in active:
                due.append((group[0], items, None))
            else:
                counts["held"] += len(items)

        for channel, items, thread_ts in sorted(due, key=lambda d: min(i.alert.ts for i in d[1])):
            if retry_after:
                break
            if thread_ts is None and any(i.alert.status == "firing" for i in items):
                # a new message shows what fired; resolutions that came with it follow in its thread
                posts = [
                    [i for i in items if i.alert.status == "firing"],
                    [i for i in items if i.alert.status != "firing"],
                ]
            else:
                posts = [items]
            for part in filter(None, posts):
                attempt_id = _new_attempt_id()
                poster: Poster | None = None
                try:
                    poster = self._posters.for_channel(channel)
                    # recorded before the post: a lost answer or a crash leaves it to be checked, not reposted
                    self._write(
                        client,
                        [
                            self._row(i, "posting", channel, "", i.attempts + 1, thread_ts or "", attempt_id)
                            for i in part
                        ],
                    )
                    ts = poster.post(channel, _latest_per_incident(part), thread_ts, attempt_id)
                except SlackDeliveryError as exc:
                    if exc.maybe_posted and poster is not None and poster.can_check:
                        logger.warning(
                            "no answer from Slack for %d alert(s) to %s (%s): the channel is read for the "
                            "message before it is posted again",
                            len(part), channel, exc.reason,
                        )  # fmt: skip
                        updates.extend(
                            self._row(i, "posting", channel, exc.reason, i.attempts + 1, thread_ts or "", attempt_id)
                            for i in part
                        )
                    else:
                        logger.warning("%d alert(s) to %s not delivered yet: %s", len(part), channel, exc.reason)
                        updates.extend(self._row(i, "pending", channel, exc.reason, i.attempts + 1, "") for i in part)
                    counts["failed"] += len(part)
                    if exc.transient:  # Slack is down or busy: the rest waits for the next round
                        retry_after = max(exc.retry_after, 1.0)
                    break
                thread_ts = thread_ts or ts
                updates.extend(
                    self._row(i, "delivered", channel, "", i.attempts + 1, thread_ts, attempt_id) for i in part
                )
                counts["delivered"] += len(part)
                counts["messages"] += 1
        self._write(client, updates)
        return DeliveryRound(retry_after=retry_after, **counts)

    def _settle_lost_answers(
        self, client: Client, posting: list[_Pending]
    ) -> tuple[list[_Pending], list[_Pending], float]:
        """Posts whose answer was lost, ``recheck_after`` seconds on: delivered when the channel shows
        the message (they are written so), to be posted again when it does not.

        Returns the delivered, those to post again, and the seconds to wait when Slack could not be asked.
        """
        attempts: dict[str, list[_Pending]] = defaultdict(list)
        for item in posting:
            attempts[item.attempt_id].append(item)
        delivered: list[_Pending] = []
        again: list[_Pending] = []
        updates: list[tuple[Any, ...]] = []
        for attempt_id, items in attempts.items():
            began = _attempt_began(attempt_id)
            channel, thread_ts = items[0].posted_to, items[0].posted_in or None
            if time.time() - began < self._recheck_after:
                continue
            try:
                poster = self._posters.for_channel(channel)
                ts = poster.find(channel, attempt_id, thread_ts, began - CLOCK_SKEW) if poster.can_check else None
            except SlackDeliveryError as exc:
                if exc.transient:
                    logger.warning("cannot read %s for a message whose answer was lost yet: %s", channel, exc.reason)
                    self._write(client, updates)
                    return delivered, again, max(exc.retry_after, 1.0)
                logger.error(
                    "cannot read %s for a message whose answer was lost (%s): it is posted again, and may show twice",
                    channel, exc.reason,
                )  # fmt: skip
                ts = None
            if ts is None:
                again.extend(items)
                continue
            delivered.extend(items)
            updates.extend(
                self._row(i, "delivered", channel, "", i.attempts, thread_ts or ts, attempt_id) for i in items
            )
        self._write(client, updates)
        if delivered:
            logger.info("%d alert(s) whose answer was lost were delivered: found in the channel", len(delivered))
        return delivered, again, 0.0

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Deliver in rounds (and run the scheduled checks) until ``stop`` is set.

        Failures of ClickHouse itself are logged and retried.
        """
        scheduler = self._checks.start() if self._checks is not None else None
        try:
            self._deliver_until(stop, interval)
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)

    def _deliver_until(self, stop: threading.Event, interval: float) -> None:
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

    def _undelivered(self, client: Client) -> list[_Pending]:
        """Alerts not delivered yet, oldest first: ``pending``, and ``posting`` (an answer was lost)."""
        # after a few failed attempts (a channel the bot is not in), an alert is tried less often
        rows = client.query(
            f"SELECT {', '.join(_STATE_COLUMNS)}, "
            "attempts <= 2 OR updated_at <= now64(3) - toIntervalSecond(least(600, 5 * attempts)) AS due "
            f"FROM `{self._database}`.alerts FINAL WHERE delivery_state IN ('pending', 'posting') "
            f"ORDER BY ts, alert_id LIMIT {ROUND_LIMIT}"
        ).named_results()
        undelivered = []
        for row in rows:
            fields = {c: row[c] for c in ALERT_COLUMNS}
            fields["ts"] = utc(fields["ts"])
            alert = Alert.model_validate(fields)
            raised_at = utc(row["raised_at"]).timestamp()
            item = _Pending(alert, raised_at, row["attempts"], channel_for(alert, self._routes), bool(row["due"]))
            if row["delivery_state"] == "posting":
                item.attempt_id, item.posted_to, item.posted_in = row["attempt_id"], row["channel"], row["thread_ts"]
            undelivered.append(item)
        return undelivered

    def _open_threads(self, client: Client, dedup_keys: set[str]) -> dict[tuple[str, str], _Thread]:
        """Per (dedup key, channel): the thread of the incident's message, while the incident is open."""
        if not dedup_keys:
            return {}
        rows = client.query(
            "SELECT dedup_key, channel, argMax(thread_ts, updated_at), max(updated_at), "
            f"argMax(status, (ts, updated_at)) FROM `{self._database}`.alerts FINAL "
            "WHERE delivery_state = 'delivered' AND thread_ts != '' AND dedup_key IN %(keys)s "
            "GROUP BY dedup_key, channel",
            parameters={"keys": sorted(dedup_keys)},
        ).result_rows
        return {
            (key, channel): _Thread(ts, utc(last).timestamp())
            for key, channel, ts, last, status in rows
            if status == "firing"
        }

    def _active_groups(
        self, client: Client, now: float, groups: set[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        """The groups (channel, kind, data mode) that had a message delivered in the last ``group_wait``.

        A new incident of a quiet group is posted at once; those of an active one wait until
        ``group_wait`` has passed since its latest message, and then go as one message.
        """
        if not groups or self._group_wait <= 0:
            return set()
        rows = client.query(
            f"SELECT DISTINCT channel, kind, data_mode FROM `{self._database}`.alerts "
            "WHERE delivery_state = 'delivered' AND updated_at >= fromUnixTimestamp64Milli(%(since)s, 'UTC')",
            parameters={"since": int((now - self._group_wait) * 1000)},
        ).result_rows
        return {(channel, kind, data_mode) for channel, kind, data_mode in rows} & groups

    def _connected(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _write(self, client: Client, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            client.insert(f"`{self._database}`.alerts", rows, column_names=list(_STATE_COLUMNS))

    def _row(
        self, item: _Pending, state: str, channel: str, error: str, attempts: int, thread_ts: str, attempt_id: str = ""
    ) -> tuple[Any, ...]:
        """A new version of the alert's row; versions written by this alerter are a millisecond apart at least."""
        self._last_write = max(time.time(), self._last_write + 0.001)
        alert = item.alert
        raised_at = datetime.fromtimestamp(item.raised_at, UTC)
        return (
            *(getattr(alert, c) for c in ALERT_COLUMNS), raised_at, state, channel, error, attempts, thread_ts,
            attempt_id, datetime.fromtimestamp(self._last_write, UTC),
        )  # fmt: skip


def _latest_per_incident(items: list[_Pending]) -> list[Alert]:
    """One alert per incident, the latest; incidents in the order they were raised."""
    latest: dict[str, Alert] = {}
    for item in sorted(items, key=lambda i: i.alert.ts):
        latest[item.alert.dedup_key] = item.alert
    return list(latest.values())


def _new_attempt_id() -> str:
    """When the attempt began (epoch milliseconds), and a random part."""
    return f"{time.time() * 1000:.0f}-{uuid.uuid4().hex[:16]}"


def _attempt_began(attempt_id: str) -> float:
    return int(attempt_id.split("-", 1)[0]) / 1000
