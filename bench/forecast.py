"""The month-end forecast on realistic traffic: how far each day's projection is from the month's real total.

    .venv/bin/python -m bench.forecast [--seed 1] [--scale 0.25] [--hour 12]

Generates four weeks of history and the month of October after them (``bench.traffic``: tenants in
three time zones, office hours, quiet weekends, a consumer feature busier at weekends, 1.2% growth a
day, day-to-day swings, a tenant onboarded and a feature launched mid-month), prices it through the
worker's Ingestor and Pricer, and sums the spend per hour of each tenant, each feature and all of
them. At ``--hour`` UTC of each day of the month it projects each key's month three ways, from what
was stored by then, and compares the projection with the month's real total:

- ``forecast``: spendstream's (``streams.forecast``: the latest days of each kind, the weekly trend);
- ``no day kinds``: the same with every day at the mean of the last seven (its trend applied), weekdays
  and weekend days alike;
- ``linear``: the month so far, scaled to the whole month by the share of it elapsed;
- ``flat 14d``: the month so far, and the time left at the mean day of the last 14.

Printed: the median and the 90th percentile of the absolute error, in % of the real total, per week
of the month, over the keys that spent in the 14 days before (a key first seen that day has no rate
in any of the three).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pyarrow.compute as pc

from bench.detectors import price
from bench.traffic import Traffic
from streams.forecast import forecast_month

HISTORY_DAYS = 28
MONTH = date(2026, 10, 1)
MONTH_DAYS = 31


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=0.25, help="multiplies the traffic's rates (default 0.25)")
    parser.add_argument("--hour", type=int, default=12, help="UTC hour of each day the month is projected at")
    args = parser.parse_args()
    start = datetime.combine(MONTH - timedelta(days=HISTORY_DAYS), datetime.min.time(), UTC)

    began = time.perf_counter()
    traffic = Traffic(seed=args.seed, start=start, days=HISTORY_DAYS + MONTH_DAYS, scale=args.scale)
    calls = price(traffic.calls(), traffic)
    print(
        f"Month-end forecast on realistic traffic, seed {args.seed}: {HISTORY_DAYS} days of history from "
        f"{start:%a %Y-%m-%d}, then {MONTH:%B %Y}; {calls.num_rows:,} calls, "
        f"${pc.sum(calls.column('cost_usd')).as_py():,.0f}; generated and priced in {time.perf_counter() - began:.0f} s"
    )

    hours: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    columns = [calls.column(c).to_pylist() for c in ("ts", "cost_usd", "tenant_id", "feature")]
    for ts, cost, tenant, feature in zip(*columns, strict=True):
        hour = ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        for key in ("all", f"tenant {tenant}", f"feature {feature}"):
            hours[key][hour] += cost or 0.0

    methods = ("forecast", "no day kinds", "linear", "flat 14d")
    errors: dict[str, dict[int, list[float]]] = {m: defaultdict(list) for m in methods}
    for n in range(MONTH_DAYS):
        now = datetime.combine(MONTH + timedelta(days=n), datetime.min.time(), UTC) + timedelta(hours=args.hour)
        for spend in hours.values():
            actual = sum(usd for hour, usd in spend.items() if hour.date() >= MONTH)
            days: dict[date, float] = defaultdict(float)
            for hour, usd in spend.items():
                if hour < now:
                    days[hour.date()] += usd
            recent = [days.get(now.date() - timedelta(days=d), 0.0) for d in range(1, 15)]
            if not any(recent) or not actual:
                continue
            so_far = sum(usd for day, usd in days.items() if day >= MONTH)
            elapsed = (now - datetime.combine(MONTH, datetime.min.time(), UTC)) / timedelta(days=MONTH_DAYS)
            left = MONTH_DAYS * (1 - elapsed)
            forecast = forecast_month(days, now)
            projections = {
                "forecast": forecast.projected_usd,
                "no day kinds": without_kinds(days, now, forecast.trend),
                "linear": so_far / elapsed,
                "flat 14d": so_far + left * statistics.fmean(recent),
            }
            for method, projected in projections.items():
                errors[method][n // 7].append(100 * abs(projected - actual) / actual)

    weeks = ["days 1-7", "days 8-14", "days 15-21", "days 22-31"]
    print(f"\nAbsolute error of the projection made at {args.hour:02d}:00 UTC, % of the month's total (median / p90)")
    print(f"  {'':<12}" + "".join(f"{w:>18}" for w in weeks))
    for method, by_week in errors.items():
        cells = []
        for week in range(4):
            found = sorted(by_week[week] + (by_week[4] if week == 3 else []))
            p90 = found[min(len(found) - 1, int(0.9 * len(found)))]
            cells.append(f"{statistics.median(found):>8.1f} / {p90:>6.1f}")
        print(f"  {method:<12}" + "".join(f"{c:>18}" for c in cells))
    print(f"  ({sum(len(v) for v in errors['forecast'].values()):,} projections of {len(hours)} keys)")


def without_kinds(days: dict[date, float], now: datetime, trend: float) -> float:
    """The forecast's projection with one rate for every day: the mean of the last seven, moved by the trend."""
    today = now.date()
    level = statistics.fmean(days.get(today - timedelta(days=d), 0.0) * trend ** (d / 7) for d in range(1, 8))
    last = date(today.year, today.month, MONTH_DAYS)
    left_of_today = 1 - (now - datetime.combine(today, datetime.min.time(), UTC)) / timedelta(days=1)
    so_far = sum(usd for day, usd in days.items() if day >= today.replace(day=1))
    rest = max(level - days.get(today, 0.0), level * left_of_today)
    return so_far + rest + sum(level * trend ** (n / 7) for n in range(1, (last - today).days + 1))


if __name__ == "__main__":
    main()
