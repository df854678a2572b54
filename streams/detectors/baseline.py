"""What a key normally spends in a given hour or day: the seasonal baselines of ``spend_spike`` and ``hourly_burn``.

LLM spend has a weekly shape: office hours and quiet nights, quiet weekends, a batch job at the
same hour every night. A flat average calls a Monday morning after a weekend a spike and never sees
a burn at night; so a key's normal for an hour (a *slot*, epoch hours) is taken from the hours
like it, in the manner of Datadog's agile/robust anomaly monitors and Elementary's seasonality:

- hour of day with weekdays and weekends apart: the same hour on the latest days of the same kind
  (up to five weekdays, or four weekend days, within two weeks); a key that has not lived through
  a day of that kind yet is compared with the days it has. Where the weekend starts depends on
  the time zone: in the weekend hours of UTC that are a weekday somewhere people work
  (:func:`kind_of`), the same hour on each of the last seven days;
- once the key has :data:`WEEKLY_AFTER_DAYS` days of history, also hour of week: the same hour of
  the same weekday in each of the last :data:`WEEKS` weeks. The week knows a Sunday job, a busy
  Monday and every time zone's weekend; the latest days know a shift of the daily shape (a new
  tenant in another time zone) within days instead of weeks.

Each comparable hour is moved forward by the key's trend: its growth per week, the median over the
last seven days of each day's spend against the same weekday a week before, bounded to
:data:`MAX_WEEKLY_CHANGE` either way. An hour's normal is the upper quartile of its comparable
hours (the second highest of four or five, the third of eight): one past incident among them is
not taken for normal, and a key whose ordinary hours swing widely (a few sessions an hour, a team
busy at twice its rate now and then) has a normal that says so. A day's normal (the 24 hours up to
any hour) is the upper quartile of the comparable days' sums: the first comparable hour of each of
its hours summed, the second, and so on (a sum of each hour's normal would misjudge a key that
spends in a few hours a day).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DAY_HOURS = 24
WEEK_HOURS = 7 * DAY_HOURS
WEEKLY_AFTER_DAYS = 21
"""Days of a key's history before the same hour of the week joins its comparable hours (Datadog's three weeks)."""
WEEKS = 4
"""Weeks of the same hour compared, at most."""
KEEP_HOURS = WEEKS * WEEK_HOURS + DAY_HOURS + 1
"""Hours of spend a key keeps: enough for the comparable hours of every hour of the last 24."""
TIME_ZONES = (-8, 10)
"""The hours from UTC of the first and the last working day on Earth that a key's traffic may follow
(California to Sydney)."""
MAX_WEEKLY_CHANGE = 1.25
"""The trend is bounded to 25% a week either way: a week with an incident in it says little about growth."""
_WEEKDAYS = 5
_WEEKEND_DAYS = 4


def is_weekend(slot: int) -> bool:
    """Whether an hour (epoch hours) falls on a Saturday or a Sunday in UTC (1970-01-01 was a Thursday)."""
    return (slot // DAY_HOURS + 3) % 7 >= 5


def kind_of(slot: int) -> str:
    """``weekdays``, ``weekend days``, or ``days`` for the weekend hours in UTC that are a weekday in a time
    zone where people work (:data:`TIME_ZONES`): a Friday afternoon in California is a Saturday in UTC, a
    Monday morning in Sydney still a Sunday. (A weekday in UTC that is the weekend elsewhere is compared
    with weekdays: against a busier normal it costs sensitivity, never a false alarm.)"""
    if not is_weekend(slot):
        return "weekdays"
    if any(not is_weekend(slot + offset) for offset in TIME_ZONES):
        return "days"
    return "weekend days"


def comparable(slot: int, first_hour: int) -> tuple[list[int], str]:
    """The hours like ``slot`` in a key's history that starts at ``first_hour``, latest first, and how they
    were chosen (``weekdays``, ``weekend days`` or ``days``, and ``+week`` with the same hour of the week)."""
    how = kind_of(slot)
    found: list[int] = []
    if how != "days":
        weekend = how == "weekend days"
        wanted = _WEEKEND_DAYS if weekend else _WEEKDAYS
        for back in range(1, 15):
            past = slot - back * DAY_HOURS
            if past < first_hour or len(found) == wanted:
                break
            if is_weekend(past) == weekend:
                found.append(past)
    if not found:
        found, how = [slot - d * DAY_HOURS for d in range(1, 8) if slot - d * DAY_HOURS >= first_hour], "days"
    if slot - first_hour >= WEEKLY_AFTER_DAYS * DAY_HOURS:
        weeks = [slot - k * WEEK_HOURS for k in range(1, WEEKS + 1) if slot - k * WEEK_HOURS >= first_hour]
        found = sorted(set(found) | set(weeks), reverse=True)
        how += "+week"
    return found, how


def weekly_trend(days: Mapping[int, float], today: int, first_day: int) -> float:
    """A key's growth per week: the median of the last seven days' spend against the same weekday a week
    before (days that spent something both times), bounded; 1 without two weeks of history."""
    if today - first_day < 14:
        return 1.0
    ratios = sorted(
        days[day] / days[day - 7]
        for day in range(today - 7, today)
        if days.get(day, 0.0) > 0 and days.get(day - 7, 0.0) > 0
    )
    if len(ratios) < 4:
        return 1.0
    return min(MAX_WEEKLY_CHANGE, max(1 / MAX_WEEKLY_CHANGE, _median(ratios)))


def normal_hour(hours: Mapping[int, float], slot: int, first_hour: int, trend: float) -> tuple[float, float]:
    """The upper quartile and the highest of the spend of the hours comparable with ``slot``, each moved forward
    by ``trend``: the key's normal for that hour, and the most it spent in an hour like it."""
    found = sorted(_scaled(hours, slot, comparable(slot, first_hour)[0], trend))
    return _upper_quartile(found), found[-1] if found else 0.0


def normal_day(hours: Mapping[int, float], slots: Sequence[int], first_hour: int, trend: float) -> float:
    """The upper quartile of the sums of the ``i``-th comparable hour of each of ``slots`` (the hours of a day)."""
    columns = [_scaled(hours, slot, comparable(slot, first_hour)[0], trend) for slot in slots]
    depth = min((len(column) for column in columns), default=0)
    return _upper_quartile(sorted(math.fsum(column[i] for column in columns) for i in range(depth)))


def _scaled(hours: Mapping[int, float], slot: int, pasts: list[int], trend: float) -> list[float]:
    return [hours.get(past, 0.0) * math.pow(trend, (slot - past) / WEEK_HOURS) for past in pasts]


def _upper_quartile(ordered: list[float]) -> float:
    """The value a quarter from the top (the second highest of four or five; the higher of two): 0 of nothing."""
    if len(ordered) <= 2:
        return ordered[-1] if ordered else 0.0
    return ordered[(3 * (len(ordered) - 1)) // 4]


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
