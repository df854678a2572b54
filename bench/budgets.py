"""The budget book and the guard under load: what a threshold budget costs per spend, per settle, per check.

    .venv/bin/python -m bench.budgets [--keys 2000] [--minutes 1440]

Fills a book with ``--keys`` session budgets over a rolling 24-hour window, one spend per key in
each of ``--minutes`` minutes (the worst case of a rolling window: every bucket holds spend; by
default 2.9 million spends, past the million a book remembers to count a redelivery once), timing
the adds, then settling every key (state and threshold crossings), and the
guard's in-memory ``check`` of a call against a state with thresholds (the SDK's hot path).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from producers import BudgetGuard
from schemas.config import BudgetConfig, BudgetThreshold
from streams.budgets import SEEN_LIMIT, BudgetBook, Budgets, Spend

THRESHOLDS = [
    BudgetThreshold(at=75),
    BudgetThreshold(at=90, action="throttle", throttle_seconds=1),
    BudgetThreshold(at=100, action="downgrade", downgrade_to="small"),
    BudgetThreshold(at=120, action="deny"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=1440)
    args = parser.parse_args()
    now = datetime.now(UTC)
    budget = BudgetConfig(dimension="session_id", key="*", limit_usd=100, period="rolling_24h", thresholds=THRESHOLDS)
    book = BudgetBook(Budgets([budget]))

    started = time.perf_counter()
    n = 0
    for minute in range(args.minutes):
        at = (now - timedelta(minutes=minute)).timestamp()
        for key in range(args.keys):
            book.add(Spend(f"e{n}", at, "session_id", f"s-{key}", 0.07, at))
            n += 1
    added = time.perf_counter() - started
    print(f"add: {n:,} spends in {added:.1f} s, {1e6 * added / n:.2f} us each")
    past = n - SEEN_LIMIT
    if past > 0:
        print(f"     ({past:,} of them past the {SEEN_LIMIT:,} remembered spends: the oldest forgotten at each)")

    started = time.perf_counter()
    states, alerts = book.settle(now)
    settled = time.perf_counter() - started
    print(
        f"settle: {len(states):,} keys of {args.minutes} minute buckets each in {settled:.2f} s, "
        f"{1e3 * settled / len(states):.3f} ms a key ({len(alerts):,} alerts)"
    )

    guard = BudgetGuard("127.0.0.1:1", fail="open")
    try:
        for state in states[:1000]:
            guard._apply(state.scope.encode(), state.model_dump_json(exclude_none=True).encode())
        calls = 100_000
        started = time.perf_counter()
        for i in range(calls):
            guard.check(model="large", estimated_usd=0.5, session_id=f"s-{i % 1000}", tenant_id="t", feature="f")
        checked = time.perf_counter() - started
        print(f"guard.check: {1e6 * checked / calls:.2f} us a call ({calls:,} calls, {guard.stats().scopes} states)")
    finally:
        guard.close()


if __name__ == "__main__":
    main()
