"""What owning detector state per key costs: partials on the wire, a warm-up, and a changelog's alternative.

    .venv/bin/python -m bench.detector_owners [--days 6.5] [--partitions 4]

On the demo's traffic: the bytes and CPU per event of counting a stored batch into partials, splitting
them among owners and encoding them; the time to build every owner's detectors from ClickHouse
(chDB, the demo's days stored); and what Faust tables with changelogs would write instead: per
minute of traffic, the state of the keys that minute changed (a spend key's state is four weeks of
hours), and the whole state a restore would read.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time

from producers.demo_incidents import DemoIncidents
from schemas.config import DetectorsConfig
from sinks.batch import CallRows
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from streams.detectors import partials as p
from streams.detectors.engine import Detectors
from streams.detectors.routing import PartialsRouter
from streams.detectors.warmup import warm_up_owned
from tests.demo_calls import NOW, demo_calls, priced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=6.5)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    config = DetectorsConfig()
    router = PartialsRouter(Detectors(config), args.partitions)
    whole = Detectors(config)
    batches = [priced(batch).calls for batch in demo_calls(DemoIncidents.before(NOW), days=args.days, size=10_000)]
    events = sum(len(b) for b in batches)
    wire = routing = 0.0
    changed_bytes = 0
    minutes = 0
    for calls in batches:
        assert calls.columns is not None
        started = time.process_time()
        messages = [m.encode() for _, m in router.messages(calls.columns, calls.columns, range(args.partitions), ())]
        routing += time.process_time() - started
        wire += sum(len(m) for m in messages)
        partials = whole.prepare(calls.columns)
        whole.apply(partials)
        for kinds in partials.minutes.values():  # what a changelog would write for this minute
            minutes += 1
            for mode, dimension, key, _ in kinds.get(p.SPEND, []):
                series = whole.spend._modes[mode].series.get(dimension, {}).get(key)
                changed_bytes += len(pickle.dumps(series)) if series is not None else 0
    # the state a restore reads: every spend key's series, and the windows of latency and errors
    state = len(pickle.dumps(whole.spend._modes)) + len(pickle.dumps(whole.latency._windows._cells))
    state += len(pickle.dumps(whole.errors._windows._cells))
    print(f"demo traffic: {events:,} calls over {args.days:g} days, {args.partitions} owners")
    print(f"partials on the wire:   {wire / events:,.0f} bytes per call ({wire / 1e6:,.1f} MB)")
    print(f"counting, splitting and encoding: {routing / events * 1e6:,.1f} us of CPU per call")
    print(f"a changelog instead:    {changed_bytes / minutes / 1e3:,.0f} KB per minute of traffic for spend keys "
          f"alone ({changed_bytes / events:,.0f} bytes per call); the whole state {state / 1e6:,.1f} MB")  # fmt: skip
    with tempfile.TemporaryDirectory() as home:
        dsn = f"chdb://{home}"
        migrate(connect(dsn), "spendstream")
        sink = ClickHouseSink(lambda: connect(dsn), "spendstream")
        for calls in batches:
            sink.add(CallRows(calls.rows), [])
            sink.flush()
        for owned in ([0], list(range(args.partitions))):
            detectors = {n: Detectors(config) for n in owned}
            started = time.perf_counter()
            sink.read(lambda client, db: warm_up_owned(detectors, args.partitions, client, db))  # noqa: B023
            print(f"warm-up of {len(owned)} owner(s) from chDB: {time.perf_counter() - started:,.2f} s")


if __name__ == "__main__":
    main()
