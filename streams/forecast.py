"""The month-end burn forecast of a key (or of the whole organisation) from its daily spend.

A month's spend is what was spent so far plus what is left of it, day by day, at the key's recent rate
for days of that kind:

- a day's expected spend is the mean of the latest days of its kind before today: up to five weekdays,
  or four weekend days (Saturday and Sunday, UTC), within the last :data:`WINDOW_DAYS` days, each moved
  forward by the key's weekly trend. A key that has not lived through a day of that kind yet is
  projected from its latest days of any kind (up to seven);
- the trend is the key's growth per week: its spend of the last two weeks against the two weeks
  before (each holds two weekends), as a rate per week, bounded to 25% a week either way. With two
  to four weeks of history it is the spend baselines' (:func:`streams.detectors.baseline.weekly_trend`:
  the median of the last seven days' spend against the same weekday a week before); 1 without two
  weeks. One week against the one before is too noisy for a month: days swing 10% on their own
  (``bench.forecast``);
- the rest of today is what today still needs to reach its expected spend, and at least the expected
  spend of the hours left (a day that already spent more than its normal goes on at its normal rate);
- the days before the key's first spend are not history: a key with no complete day of history has no
  rate, and its projection is what it spent so far.

Nothing here reads ClickHouse or the clock: :func:`forecast_month` takes the daily spend and ``now``.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from streams.detectors.baseline import MAX_WEEKLY_CHANGE, weekly_trend

WINDOW_DAYS = 14
"""The days before today the rates are taken from."""
HISTORY_DAYS = 35
"""The days before today to read: four weeks for the trend, and one more to tell a key of four weeks from a
younger one when its first days read were quiet (a key that spends nothing at weekends)."""
WEEKDAY_SAMPLES = 5
WEEKEND_SAMPLES = 4
ANY_DAY_SAMPLES = 7


def is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def month_bounds(day: date) -> tuple[date, date]:
    """The first and the last day of ``day``'s month."""
    return day.replace(day=1), day.replace(day=calendar.monthrange(day.year, day.month)[1])


def history_start(now: datetime) -> date:
    """The first day a forecast at ``now`` needs the daily spend of (the month's first day, or earlier)."""
    today = now.astimezone(UTC).date()
    return min(month_bounds(today)[0], today - timedelta(days=HISTORY_DAYS))


@dataclass(frozen=True, slots=True)
class Forecast:
    month: date
    """The first day of the month."""
    last_day: date
    spent_usd: float
    """Spent so far this month, today included."""
    projected_usd: float
    """Expected by the end of the month's last day (UTC)."""
    history_days: int
    """Complete days of the key's history the rates were taken from (0: no rate, the projection is the spend)."""
    weekday_usd: float
    """What a weekday is expected to spend now (the trend applied)."""
    weekend_usd: float
    """What a weekend day is expected to spend now."""
    trend: float
    """Growth per week (1: flat)."""
    limit_usd: float | None = None
    """The monthly budget, if the key has one."""
    crosses_on: date | None = None
    """The day the spend passed the limit, or is projected to (None: not this month)."""

    @property
    def share(self) -> float | None:
        """The projection as a share of the limit."""
        return self.projected_usd / self.limit_usd if self.limit_usd else None

    @property
    def passed(self) -> bool:
        """The limit is already spent."""
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd

    @property
    def over(self) -> bool:
        """The month is projected to end above the limit."""
        return self.limit_usd is not None and self.projected_usd > self.limit_usd


def forecast_month(days: Mapping[date, float], now: datetime, limit_usd: float | None = None) -> Forecast:
    """The forecast of the month of ``now`` from a key's daily spend (UTC days, today's so far included).

    ``days`` should hold every day from :func:`history_start` to today; a missing day spent nothing.
    """
    now = now.astimezone(UTC)
    today = now.date()
    month, last_day = month_bounds(today)
    spent = math.fsum(usd for day, usd in days.items() if month <= day <= today)
    first = min((day for day, usd in days.items() if usd > 0 and day < today), default=None)
    history = (today - first).days if first is not None else 0
    if not history:
        crosses = _passed_on(days, month, today, limit_usd)
        return Forecast(month, last_day, spent, spent, 0, 0.0, 0.0, 1.0, limit_usd, crosses)
    assert first is not None
    trend = _trend(days, today, first)
    # what a day of each kind spends now: its samples, each moved forward to today by the trend
    level = {
        weekend: math.fsum(days.get(d, 0.0) * math.pow(trend, (today - d).days / 7) for d in found) / len(found)
        for weekend, found in ((w, _samples(today, first, w)) for w in (False, True))
    }

    def expected(day: date) -> float:
        return level[is_weekend(day)] * math.pow(trend, (day - today).days / 7)

    spent_today = days.get(today, 0.0)
    left_of_today = 1 - (now - datetime.combine(today, time(), UTC)).total_seconds() / 86_400
    rest = max(expected(today) - spent_today, expected(today) * left_of_today, 0.0)
    ahead = [(today, rest)] + [
        (today + timedelta(days=n), expected(today + timedelta(days=n))) for n in range(1, (last_day - today).days + 1)
    ]
    projected = spent + math.fsum(usd for _, usd in ahead)
    crosses = _passed_on(days, month, today, limit_usd)
    if crosses is None and limit_usd is not None:
        running = spent
        for day, usd in ahead:
            running += usd
            if running >= limit_usd:
                crosses = day
                break
        else:
            crosses = last_day if projected > limit_usd else None  # a sum in another order, a cent's rounding
    return Forecast(month, last_day, spent, projected, history, level[False], level[True], trend, limit_usd, crosses)


def describe(forecast: Forecast) -> str:
    """``$X spent so far, $Y projected by Dec 31 ($a a weekday, $b a weekend day, +n% a week)``."""
    text = f"${forecast.spent_usd:,.2f} spent so far, ${forecast.projected_usd:,.2f} projected by "
    return text + f"{forecast.last_day:%b %d} ({rates(forecast)})"


def crossing(forecast: Forecast) -> str:
    """``passes it on Fri Nov 27``, ``passed it on Mon Nov 23``, or nothing (not this month)."""
    if forecast.crosses_on is None:
        return ""
    return f"{'passed' if forecast.passed else 'passes'} it on {forecast.crosses_on:%a %b %d}"


def rates(forecast: Forecast) -> str:
    """``$a a weekday, $b a weekend day, +n% a week``: what the days left were projected at."""
    if not forecast.history_days:
        return "no complete day of history yet: what was spent so far"
    trend = f", {100 * (forecast.trend - 1):+.0f}% a week" if round(forecast.trend, 2) != 1 else ""
    return f"${forecast.weekday_usd:,.2f} a weekday, ${forecast.weekend_usd:,.2f} a weekend day{trend}"


def _trend(days: Mapping[date, float], today: date, first: date) -> float:
    """Growth per week: the last two weeks' spend against the two weeks before (each holds two weekends), as a
    rate per week, bounded; with less than four weeks of history, the baselines' one week against the one before."""
    if (today - first).days >= 2 * WINDOW_DAYS:
        recent = math.fsum(days.get(today - timedelta(days=n), 0.0) for n in range(1, WINDOW_DAYS + 1))
        before = math.fsum(
            days.get(today - timedelta(days=n), 0.0) for n in range(WINDOW_DAYS + 1, 2 * WINDOW_DAYS + 1)
        )
        if recent > 0 and before > 0:
            return min(MAX_WEEKLY_CHANGE, max(1 / MAX_WEEKLY_CHANGE, math.sqrt(recent / before)))
    return weekly_trend({d.toordinal(): usd for d, usd in days.items()}, today.toordinal(), first.toordinal())


def _samples(today: date, first: date, weekend: bool) -> list[date]:
    """The latest days of the kind before today, within the window and the key's history; else of any kind."""
    window = [today - timedelta(days=n) for n in range(1, WINDOW_DAYS + 1) if today - timedelta(days=n) >= first]
    wanted = WEEKEND_SAMPLES if weekend else WEEKDAY_SAMPLES
    found = [day for day in window if is_weekend(day) == weekend][:wanted]
    return found or window[:ANY_DAY_SAMPLES]


def _passed_on(days: Mapping[date, float], month: date, today: date, limit_usd: float | None) -> date | None:
    """The day this month's spend reached ``limit_usd``, if it has."""
    if limit_usd is None:
        return None
    running = 0.0
    for n in range((today - month).days + 1):
        day = month + timedelta(days=n)
        running += days.get(day, 0.0)
        if running >= limit_usd:
            return day
    return None
