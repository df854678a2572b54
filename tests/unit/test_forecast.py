"""The month-end forecast: per-kind rates, the trend, the rest of today, the crossing day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from streams.forecast import Forecast, crossing, describe, forecast_month, history_start, is_weekend, month_bounds


def history(now: datetime, spend: Callable[[date], float], first: date | None = None) -> dict[date, float]:
    """Daily spend from the forecast's history start (or ``first``) to the day before ``now``."""
    today = now.date()
    start = max(history_start(now), first) if first else history_start(now)
    return {start + timedelta(days=n): spend(start + timedelta(days=n)) for n in range((today - start).days)}


def weekly(weekday: float, weekend: float) -> Callable[[date], float]:
    return lambda day: weekend if is_weekend(day) else weekday


def rest_of_month(today: date, weekday: float, weekend: float) -> float:
    """The spend of the days after today to the month's end at those rates."""
    last = month_bounds(today)[1]
    return sum(
        weekend if is_weekend(d) else weekday for d in (today + timedelta(days=n) for n in range(1, 32)) if d <= last
    )


def test_at_the_start_of_a_month_the_whole_month_is_projected_from_the_weeks_before() -> None:
    now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)  # a Tuesday: the history is all November's
    days = history(now, weekly(10, 2))

    forecast = forecast_month(days, now, limit_usd=250)

    assert forecast.month == date(2026, 12, 1) and forecast.last_day == date(2026, 12, 31)
    assert forecast.spent_usd == 0 and forecast.trend == 1.0
    assert (forecast.weekday_usd, forecast.weekend_usd) == (10, 2)
    # 23 weekdays and 8 weekend days in December 2026; today's rest is a whole weekday
    assert forecast.projected_usd == pytest.approx(23 * 10 + 8 * 2)
    assert not forecast.over and not forecast.passed and forecast.crosses_on is None  # $246 of $250
    # $200: $192 by Thursday the 24th (the weekends at $2), $202 on Christmas day
    lower = forecast_month(days, now, limit_usd=200)
    assert lower.over and lower.crosses_on == date(2026, 12, 25) and lower.share == pytest.approx(1.23)


def test_on_the_last_day_only_the_rest_of_today_is_left() -> None:
    now = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # a Monday, 18:00
    days = history(now, weekly(10, 2)) | {now.date(): 8.0}
    spent = sum(usd for day, usd in days.items() if day.month == 11)

    forecast = forecast_month(days, now)

    # $2 would reach a normal Monday, but a quarter of the day at $10 a day is $2.50
    assert forecast.projected_usd == pytest.approx(spent + 2.5)
    assert forecast.limit_usd is None and forecast.crosses_on is None and forecast.share is None
    quiet = forecast_month(days | {now.date(): 1.0}, now)  # a slow day so far: it still reaches a normal one
    assert quiet.projected_usd == pytest.approx(spent - 8 + 10)


def test_a_month_with_no_history_is_what_was_spent_so_far() -> None:
    now = datetime(2026, 11, 18, 12, tzinfo=UTC)
    first_day = {now.date(): 5.0}

    forecast = forecast_month(first_day, now, limit_usd=100)
    nothing = forecast_month({}, now, limit_usd=100)

    assert (forecast.spent_usd, forecast.projected_usd, forecast.history_days) == (5, 5, 0)
    assert not forecast.over and forecast.crosses_on is None
    assert (nothing.spent_usd, nothing.projected_usd) == (0, 0)
    assert forecast_month(first_day, now, limit_usd=4).crosses_on == now.date()  # passed today already


def test_a_weekend_heavy_key_is_projected_from_its_weekends_and_a_weekday_heavy_one_from_its_weekdays() -> None:
    now = datetime(2026, 11, 13, 0, 0, tzinfo=UTC)  # a Friday
    month_so_far = now.date() - date(2026, 11, 1)

    weekend_heavy = forecast_month(history(now, weekly(2, 30)), now)
    weekday_heavy = forecast_month(history(now, weekly(30, 2)), now)

    for forecast, weekday, weekend in ((weekend_heavy, 2, 30), (weekday_heavy, 30, 2)):
        spent = sum(weekend if is_weekend(date(2026, 11, 1) + timedelta(days=n)) else weekday
                    for n in range(month_so_far.days))  # fmt: skip
        assert forecast.spent_usd == pytest.approx(spent)
        assert forecast.projected_usd == pytest.approx(spent + weekday + rest_of_month(now.date(), weekday, weekend))
        assert (forecast.weekday_usd, forecast.weekend_usd) == (weekday, weekend)
    # 12 weekdays and 6 weekend days left: a flat average of its weeks ($10 a day) would say $180
    assert weekend_heavy.projected_usd - weekend_heavy.spent_usd == pytest.approx(12 * 2 + 6 * 30)


def test_a_key_first_seen_this_week_is_projected_from_its_own_days_and_its_weekends_from_them_too() -> None:
    now = datetime(2026, 11, 13, 0, 0, tzinfo=UTC)  # a Friday; the key started on Tuesday
    days = history(now, weekly(30, 0), first=date(2026, 11, 10))

    forecast = forecast_month(days, now)

    assert forecast.history_days == 3
    # the days before Tuesday are not history (not zeros); no weekend lived through: weekends as its days
    assert (forecast.weekday_usd, forecast.weekend_usd) == (30, 30)
    assert forecast.projected_usd == pytest.approx(3 * 30 + 30 + rest_of_month(now.date(), 30, 30))


def test_growth_moves_the_rates_forward_and_is_bounded() -> None:
    now = datetime(2026, 11, 10, 0, 0, tzinfo=UTC)
    start = history_start(now)

    def growing(per_week: float) -> dict[date, float]:
        return history(now, lambda day: 10 * per_week ** ((day - start).days / 7))

    flat = forecast_month(history(now, lambda _: 10.0), now)
    grows = forecast_month(growing(1.1), now)
    runaway = forecast_month(growing(2.0), now)

    assert grows.trend == pytest.approx(1.1) and runaway.trend == pytest.approx(1.25)
    # each day of the rest of the month as the growth would have it
    truth = sum(10 * 1.1 ** ((date(2026, 11, 1) + timedelta(days=n) - start).days / 7) for n in range(30))
    assert grows.projected_usd == pytest.approx(truth, rel=1e-9)
    assert grows.weekday_usd == pytest.approx(10 * 1.1 ** ((now.date() - start).days / 7))
    assert flat.projected_usd == pytest.approx(30 * 10)
    assert runaway.projected_usd < sum(10 * 2.0 ** ((date(2026, 11, 1) + timedelta(days=n) - start).days / 7)
                                       for n in range(30))  # fmt: skip


def test_a_key_quiet_at_weekends_is_seen_to_have_four_weeks_of_history_when_they_began_on_a_weekend() -> None:
    now = datetime(2026, 11, 14, 12, 0, tzinfo=UTC)  # a Saturday: four weeks ago was a Saturday too
    start = history_start(now)
    days = history(now, lambda day: 0.0 if is_weekend(day) else 10 * 1.1 ** ((day - start).days / 7))

    forecast = forecast_month(days, now)

    assert forecast.trend == pytest.approx(1.1) and forecast.weekend_usd == 0
    assert forecast.history_days > 28


def test_a_key_past_its_budget_says_the_day_it_passed_and_still_projects_the_rest() -> None:
    now = datetime(2026, 11, 12, 9, 0, tzinfo=UTC)
    days = history(now, lambda _: 15.0)

    forecast = forecast_month(days, now, limit_usd=100)

    assert forecast.passed and forecast.over
    assert forecast.crosses_on == date(2026, 11, 7)  # 7 days of $15: $105
    assert forecast.spent_usd == pytest.approx(11 * 15)
    assert forecast.projected_usd == pytest.approx(30 * 15)
    assert forecast.share == pytest.approx(4.5)
    assert crossing(forecast) == "passed it on Sat Nov 07"
    assert (
        describe(forecast)
        == "$165.00 spent so far, $450.00 projected by Nov 30 ($15.00 a weekday, $15.00 a weekend day)"
    )


def test_the_crossing_day_is_the_first_day_the_running_total_reaches_the_limit() -> None:
    now = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    days = history(now, lambda _: 10.0)

    def crosses(limit: float) -> date | None:
        return forecast_month(days, now, limit_usd=limit).crosses_on

    assert crosses(200) == date(2026, 11, 20)
    assert crosses(200.01) == date(2026, 11, 21)
    assert crosses(300) == date(2026, 11, 30)
    assert crosses(300.01) is None
    assert crossing(forecast_month(days, now, limit_usd=200)) == "passes it on Fri Nov 20"
    assert crossing(forecast_month(days, now, limit_usd=400)) == ""
    assert isinstance(forecast_month(days, now, 1.0), Forecast)
