"""The budget agent: one owner per budget key, totals that survive restarts and rebalances.

Spends arrive on ``spendstream.budget-spend`` in the partition of their scope (``partition_of``),
so each budget key's total lives in exactly one worker, and no two workers can each think there
is room left. When a worker is given partitions (at start, or when the group rebalances), and every
few minutes, it reads the totals of the budgets' current periods from ClickHouse up to a cut
(``ingested_at`` 5 s before the read), adds back the spends it counted lately whose calls were
stored after the cut, and from then on counts only the spends of calls stored after it: a spend
whose call was already in the read totals is recognised by asking ClickHouse, batch by batch,
until the spends arriving were all sent after the cut. Each (call, dimension) is counted once.

States go to the compacted ``spendstream.budgets`` (what the SDK's guard reads) whenever a key's
state or remaining amount changes; thresholds crossed raise ``budget_threshold`` alerts through
the same path as the detectors' alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.types import TP, EventT, StreamT

from schemas.alert import Alert
from schemas.budget import BudgetState
from sinks.sink import ClickHouseSink
from streams.backoff import read_until
from streams.budget_periods import ROLLING_BUCKET_SECONDS, WINDOW_LABEL, bounds, bucket_of, is_rolling, window
from streams.budget_thresholds import sql_of
from streams.budgets import BudgetBook, Spend

logger = logging.getLogger(__name__)

_WAIT = "budget states wait"

CUT_LAG_SECONDS = 5
"""The warm-up reads calls stored at least this long ago: any insert still in flight is counted live."""
CLOCK_SKEW_SECONDS = 60
"""Spends sent this long after the cut (worker clock) cannot be in the warm-up's totals."""
RECENT_SECONDS = 120
"""Counted spends kept this long: a re-read from ClickHouse adds back those stored after its cut."""
RESYNC_SECONDS = 300
"""The totals are read again this often, so a spend lost on its way (a worker that died between
storing calls and sending their spends) is counted within minutes."""


def partition_of(scope: str, partitions: int) -> int:
    """The partition of ``spendstream.budget-spend`` that owns ``scope``."""
    return zlib.crc32(scope.encode()) % partitions


def warm_up_budgets(book: BudgetBook, client: Client, database: str, now: datetime) -> float:
    """Load every budgeted key's totals of its current periods; returns the cut (epoch seconds).

    Calendar periods are read as today's and this month's sums; rolling ones per minute (24 h) or per
    hour (30 d) over their window, so that spend leaves them as it ages.
    """
    cut_ms = int(client.query(f"SELECT toUnixTimestamp64Milli(now64(3)) - {CUT_LAG_SECONDS * 1000}").result_rows[0][0])
    stored = f"ingested_at <= fromUnixTimestamp64Milli(toInt64({cut_ms}), 'UTC')"
    book.reset()
    for dimension in book.budgets.dimensions:
        periods = book.budgets.periods(dimension)
        if periods & {"daily", "monthly"}:
            _warm_up_calendar(book, client, database, dimension, now, stored)
        for period in sorted(p for p in periods if is_rolling(p)):
            size = ROLLING_BUCKET_SECONDS[period]
            first = window(period, now)[0]
            rows = client.query(
                f"SELECT {sql_of(dimension)} AS budget_key, intDiv(toUnixTimestamp(ts), {size}) AS bucket, "
                f"ifNull(sum(cost_usd), 0) FROM `{database}`.llm_calls WHERE data_mode = 'real' AND budget_key != '' "
                f"AND ts >= fromUnixTimestamp64Milli(toInt64({first * size * 1000}), 'UTC') AND {stored} "
                "GROUP BY budget_key, bucket"
            ).result_rows
            for key, bucket, usd in rows:
                if book.budgets.of(dimension, key) is not None:
                    book.load(dimension, key, period, int(bucket), float(usd))
    if any(is_rolling(p) for d in book.budgets.dimensions for p in book.budgets.periods(d)):
        _warm_up_raised(book, client, database, now)
    return cut_ms / 1000


def _warm_up_raised(book: BudgetBook, client: Client, database: str, now: datetime) -> None:
    """The rolling periods' threshold alerts of the last 30 days, so a restart does not raise them again."""
    windows = {label: period for period, label in WINDOW_LABEL.items() if is_rolling(period)}
    rows = client.query(
        f"SELECT dimension, key, window, toUInt32(round(threshold / baseline * 100)), max(ts) "
        f"FROM `{database}`.alerts WHERE kind = 'budget_threshold' AND window IN %(windows)s AND baseline > 0 "
        f"AND ts >= fromUnixTimestamp64Milli(toInt64({int((now.timestamp() - 31 * 86_400) * 1000)}), 'UTC') "
        "GROUP BY dimension, key, window, threshold, baseline",
        parameters={"windows": sorted(windows)},
    ).result_rows
    for dimension, key, label, pct, at in rows:
        book.raised_before(dimension, key, windows[label], int(pct), at)


def _warm_up_calendar(
    book: BudgetBook, client: Client, database: str, dimension: str, now: datetime, stored: str
) -> None:
    month_start, month_end = bounds("monthly", now)
    assert month_end is not None
    day = now.astimezone(UTC).date()
    rows = client.query(
        f"SELECT {sql_of(dimension)} AS budget_key, "
        f"ifNull(sumIf(cost_usd, toDate(ts) = toDate('{day.isoformat()}')), 0), "
        f"ifNull(sum(cost_usd), 0) FROM `{database}`.llm_calls "
        f"WHERE data_mode = 'real' AND budget_key != '' "
        f"AND ts >= toDateTime('{month_start:%Y-%m-%d %H:%M:%S}', 'UTC') "
        f"AND ts < toDateTime('{month_end:%Y-%m-%d %H:%M:%S}', 'UTC') AND {stored} GROUP BY budget_key"
    ).result_rows
    today, month = bucket_of("daily", now.timestamp()), bucket_of("monthly", now.timestamp())
    for key, day_usd, month_usd in rows:
        if book.budgets.of(dimension, key) is not None:
            book.load(dimension, key, "daily", today, float(day_usd))
            book.load(dimension, key, "monthly", month, float(month_usd))


def counted_before(client: Client, database: str, spends: Sequence[Spend], cut: float) -> set[str]:
    """Which calls of ``spends`` were stored before the warm-up's cut (so its totals have them)."""
    if not spends:
        return set()
    # the calls' time bounds the lookup, so the primary key (day, event_id) finds them
    earliest = int(min(s.ts for s in spends) * 1000) - 1000
    latest = int(max(s.ts for s in spends) * 1000) + 1000
    rows = client.query(
        f"SELECT DISTINCT event_id FROM `{database}`.llm_calls WHERE event_id IN %(ids)s "
        f"AND ts BETWEEN fromUnixTimestamp64Milli(toInt64({earliest}), 'UTC') "
        f"AND fromUnixTimestamp64Milli(toInt64({latest}), 'UTC') "
        f"AND ingested_at <= fromUnixTimestamp64Milli(toInt64({int(cut * 1000)}), 'UTC')",
        parameters={"ids": sorted({s.event_id for s in spends})},
    ).result_rows
    return {row[0] for row in rows}


class BudgetOwner:
    """The budget agent's state: the book, the partitions this worker owns, and the warm-up cut."""

    def __init__(self, book: BudgetBook, sink: ClickHouseSink, partitions: int) -> None:
        self.book = book
        self._sink = sink
        self._partitions = partitions
        self.owned: set[int] = set()
        self._cut: float | None = None
        self._stale = True
        self._warmed_at = 0.0
        self._recent: deque[tuple[float, Spend]] = deque()
        """Spends counted in the last ``RECENT_SECONDS`` (monotonic time): a re-read keeps those it cannot see."""
        self.lock = asyncio.Lock()
        """Held while the book is warmed up or changed."""

    def assign(self, partitions: set[int]) -> None:
        if partitions != self.owned:
            self.owned = partitions
            self._stale = True

    def owns(self, scope: str) -> bool:
        return partition_of(scope, self._partitions) in self.owned

    async def ensure_warm(self) -> None:
        """Read the totals from ClickHouse when partitions changed, or every ``RESYNC_SECONDS``."""
        if not self._stale and time.monotonic() - self._warmed_at < RESYNC_SECONDS:
            return
        self._cut = await read_until(self._sink, self._warm_up, "read the budget totals", _WAIT)
        self._stale = False
        self._warmed_at = time.monotonic()
        logger.info("budgets warmed up from ClickHouse: %d keys", len(self.book.scopes()))

    def _warm_up(self, client: Client, database: str) -> float:
        """Totals up to the cut, plus the spends counted lately whose calls were stored after it."""
        cut = warm_up_budgets(self.book, client, database, datetime.now(UTC))
        recent = [spend for _, spend in self._recent]
        known = counted_before(client, database, recent, cut)
        for spend in recent:
            if spend.event_id not in known:
                self.book.add(spend)
        return cut

    async def count(self, spends: list[Spend]) -> None:
        """Add ``spends``, leaving out those the warm-up's totals already have."""
        cut = self._cut
        if cut is not None and spends:
            if min(s.sent for s in spends) > cut + CLOCK_SKEW_SECONDS:
                self._cut = None  # every spend from here on was sent after the cut
            else:
                known = await read_until(
                    self._sink, lambda client, db: counted_before(client, db, spends, cut), "check spends", _WAIT
                )
                spends = [s for s in spends if s.event_id not in known]
        now = time.monotonic()
        for spend in spends:
            if self.book.add(spend):
                self._recent.append((now, spend))
        while self._recent and self._recent[0][0] < now - RECENT_SECONDS:
            self._recent.popleft()

    def settle(self) -> tuple[list[BudgetState], list[Alert], list[str]]:
        """States to publish, alerts to raise, and the scopes whose states are to be removed."""
        states, alerts = self.book.settle(datetime.now(UTC), self.owns)
        return states, alerts, self.book.take_forgotten(self.owns)


def register_budgets(
    app: faust.App,
    spend: faust.TopicT,
    budgets: faust.TopicT,
    owner: BudgetOwner,
    raise_alerts: Callable[[list[Alert]], Awaitable[None]],
    send: Callable[[faust.TopicT, list[Any]], Awaitable[None]],
) -> Any:
    """Register the budget agent on ``spend`` and its period timer."""
    spend_topic = spend.get_topic_name()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[TP], *, signal: Any, **kwargs: Any) -> None:
        owner.assign({tp.partition for tp in assigned if tp.topic == spend_topic})

    async def publish() -> None:
        async with owner.lock:
            await owner.ensure_warm()
            states, alerts, forgotten = owner.settle()
        if forgotten:  # tombstones: compaction drops them, and a guard forgets them (no state: allowed)
            await send(budgets, [(scope.encode(), None, None, None) for scope in forgotten])
            logger.info("budgets: %d keys with no spend left in their periods forgotten", len(forgotten))
        if states:
            await send(
                budgets, [(s.scope.encode(), s.model_dump_json(exclude_none=True).encode(), None, None) for s in states]
            )
            for state in states:
                if state.state != "allow":
                    logger.warning("budget %s: %s (%s)", state.scope, state.state, state.reason)
        await raise_alerts(alerts)

    @app.agent(spend, name="budgets")
    async def track_budgets(stream: StreamT[bytes]) -> None:
        async for events in stream.noack_take(5000, within=0.3):  # type: ignore[attr-defined]
            batch: list[EventT[bytes]] = list(events)
            spends = []
            for event in batch:
                try:
                    spends.append(Spend.decode(event.value))
                except (ValueError, TypeError) as exc:  # not one of ours: skip it, say so
                    logger.error("budget-spend: skipped a message that is not a spend (%s)", exc)
            async with owner.lock:
                await owner.ensure_warm()
                await owner.count(spends)
            await publish()
            for event in batch:
                event.ack()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def new_periods() -> None:
        async with owner.lock:
            owner.book.expire()
        await publish()

    return track_budgets
