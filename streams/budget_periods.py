"""Budget periods: the bucket a spend counts in, and the buckets a period's total covers at a time.

A calendar period (a UTC day or month) is one bucket. A rolling period slides: ``rolling_24h`` counts
per-minute buckets (the current minute and the 1,439 before), ``rolling_30d`` per-hour buckets (the
current hour and the 719 before), so spend leaves the window as it ages, a minute or an hour at a time.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

from schemas.config import LimitPeriod

ROLLING_BUCKET_SECONDS: dict[str, int] = {"rolling_24h": 60, "rolling_30d": 3600}
ROLLING_BUCKETS: dict[str, int] = {"rolling_24h": 24 * 60, "rolling_30d": 30 * 24}
WINDOW_LABEL: dict[LimitPeriod, str] = {"daily": "1d", "monthly": "1mo", "rolling_24h": "24h", "rolling_30d": "30d"}
"""The ``window`` of a period's ``budget_threshold`` alerts."""
NAME: dict[str, str] = {"daily": "daily", "monthly": "monthly", "rolling_24h": "rolling 24-hour",
                        "rolling_30d": "rolling 30-day"}  # fmt: skip
"""How messages name a period's budget."""


def is_rolling(period: LimitPeriod) -> bool:
    return period in ROLLING_BUCKETS


def bucket_of(period: LimitPeriod, ts: float) -> int:
    """The bucket of event time ``ts`` (epoch seconds): a day's ordinal, a month's number, a minute, an hour."""
    if period in ROLLING_BUCKET_SECONDS:
        return int(ts // ROLLING_BUCKET_SECONDS[period])
    day = datetime.fromtimestamp(ts, UTC).date()
    if period == "daily":
        return day.toordinal()
    return day.year * 12 + day.month - 1


def window(period: LimitPeriod, at: datetime) -> tuple[int, int]:
    """The first and last bucket (both counted) of the period's total at ``at``."""
    last = bucket_of(period, at.timestamp())
    return last - ROLLING_BUCKETS.get(period, 1) + 1, last


def bounds(period: LimitPeriod, at: datetime) -> tuple[datetime, datetime | None]:
    """When the period's window at ``at`` starts, and when it ends (None: a rolling window never does)."""
    if period in ROLLING_BUCKET_SECONDS:
        size = ROLLING_BUCKET_SECONDS[period]
        return datetime.fromtimestamp(window(period, at)[0] * size, UTC), None
    day = at.astimezone(UTC).date()
    if period == "daily":
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    return start, start + timedelta(days=calendar.monthrange(day.year, day.month)[1])
