"""The stream detectors on realistic traffic: false alarms on quiet days, recall and time-to-detect of incidents.

    .venv/bin/python -m bench.detectors [--days 14] [--history-days 14] [--seed 1] [--batch 5000] [--list]

Generates ``--history-days`` plus ``--days`` of traffic (``bench.traffic``: tenants in three time
zones, business hours, quiet weekends, growth, a nightly job, agents, RAG, errors, a prompt
rollout, a feature launched and a tenant onboarded mid-run), prices it through the worker's
Ingestor and Pricer, and feeds it to the detectors in batches of ``--batch`` calls in time order,
as the worker stores them (its ``unpriced_model`` check included). Two runs:

- the quiet run: the traffic as generated. Every incident it opens is a false alarm; they are
  counted per kind, for the history and for the evaluated days (the target: none).
- the incident run: the same traffic with the labelled incidents of ``bench.incidents`` injected
  into the evaluated days, one of each type. An incident is caught when an alert of its kind,
  dimension and key fires between its first call and two hours after it ends; time-to-detect is
  event time from its first call to that alert (the detectors' own delay: the pipeline's and
  Slack's come on top, see ``bench.alert_latency``). ``unpriced_model`` is raised per stored
  batch: its time is that of the first unpriced call, as a live worker's batches are seconds long.

``--list`` prints every alert that opened an incident in the quiet run, and the incident run's
alerts on other keys.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from alerting.inhibition import FAMILIES, OpenIncident, explains, measurable
from bench.incidents import Incident, Quiet, inject
from bench.traffic import DAY_MS, HOUR_MS, START, Call, Traffic
from schemas.alert import Alert
from schemas.config import DetectorsConfig
from sinks.clickhouse import connect
from sinks.migrations import migrate
from streams.detectors.engine import Detectors
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from streams.unpriced import UnpricedModelDetector

PARTITIONS = 4
GRACE_MS = 2 * HOUR_MS
"""An incident's alert counts until this long after its last call."""
CLOCK_LAG_MS = 15 * 60_000
"""An alert's time is the detectors' clock: the latest call of the slowest partition. On a quiet night a
partition's latest call can be minutes old, so an alert raised by an incident's first minutes may be
stamped a little before them (its time-to-detect then reads 0)."""


@dataclass(frozen=True)
class Raised:
    alert: Alert
    at_ms: int
    """When the detectors raised it (event time)."""


def price(calls: list[Call], traffic: Traffic, chunk: int = 5000) -> pa.Table:
    """The calls as the worker stores them: validated and priced by the Ingestor, as Arrow columns."""
    ingestor = Ingestor(Pricer([]), "llm.calls")
    tables = []
    for start in range(0, len(calls), chunk):
        part = calls[start : start + chunk]
        result = ingestor.process(
            RawEvent(orjson.dumps(call), traffic.partition_of(call, PARTITIONS), start + n)
            for n, call in enumerate(part)
        )
        if result.rejected:
            raise SystemExit(f"the generator made an event the pipeline refuses: {result.rejected[0].reason}")
        tables.append(result.calls.columns)
    return pa.concat_tables(tables)


def injected(quiet: pa.Table, incidents: list[Incident], traffic: Traffic) -> pa.Table:
    """The quiet calls (priced) with the incidents' calls added and the calls they alter replaced."""
    altered = pa.array([event_id for i in incidents for event_id in i.altered], pa.string())
    added = [call for i in incidents for call in (*i.calls, *i.altered.values())]
    kept = quiet.filter(pc.invert(pc.is_in(quiet.column("event_id"), value_set=altered)))
    return pa.concat_tables([kept, price(added, traffic)])


def feed(calls: pa.Table, batch: int, config: DetectorsConfig) -> tuple[list[Raised], float]:
    """Every alert the detectors raise on ``calls`` fed in time order, ``batch`` calls at a time; and seconds spent."""
    calls = calls.take(pc.sort_indices(calls, [("ts", "ascending")]))
    detectors = Detectors(config)
    unpriced = UnpricedModelDetector()
    raised: list[Raised] = []
    spent = 0.0
    for start in range(0, calls.num_rows, batch):
        part = calls.slice(start, batch)
        began = time.perf_counter()
        for alert in _unpriced(unpriced, part):
            raised.append(alert)
        raised.extend(Raised(a, int(a.ts.timestamp() * 1000)) for a in detectors.observe(part))
        spent += time.perf_counter() - began
    return raised, spent


def _unpriced(detector: UnpricedModelDetector, part: pa.Table) -> list[Raised]:
    """What the ingest agent raises for a batch's unpriced calls (from the Ingestor's count of them)."""
    unpriced = part.filter(pc.equal(part.column("priced"), 0))
    if unpriced.num_rows == 0:
        return []
    counts: dict[tuple[str, str, date, str], int] = Counter()
    first: dict[str, int] = {}
    for provider, model, ts, mode in zip(
        *(unpriced.column(c).to_pylist() for c in ("provider", "model", "ts", "data_mode")), strict=True
    ):
        counts[(provider, model, ts.date(), mode)] += 1
        at = int(ts.timestamp() * 1000)
        first[f"{provider}/{model}"] = min(first.get(f"{provider}/{model}", at), at)
    return [Raised(a, first[a.key]) for a in detector.check(dict(counts))]


def opened(raised: Iterable[Raised]) -> list[Raised]:
    """The alerts that opened an incident (a firing alert of a key with none open)."""
    open_keys: set[str] = set()
    found = []
    for r in raised:
        key = r.alert.dedup_key
        if r.alert.status == "resolved":
            open_keys.discard(key)
        elif key not in open_keys:
            open_keys.add(key)
            found.append(r)
    return found


def matches(incident: Incident, r: Raised) -> bool:
    a = r.alert
    return (
        a.status == "firing"
        and (a.kind, a.dimension, a.key) == (incident.kind, incident.dimension, incident.key)
        and incident.start_ms - CLOCK_LAG_MS <= r.at_ms <= incident.end_ms + GRACE_MS
    )


def threads(calls: pa.Table, raised: list[Raised]) -> tuple[int, dict[int, str]]:
    """Of the incidents ``raised`` opened, how many start a Slack message, and how many the alerter's inhibition
    (``alerting.inhibition``) puts in an open incident's thread instead: the calls are stored in a chDB of their
    own and every new incident is asked, as the alerter asks, whether an incident open before it explains it.
    All routes are taken to lead to one channel, and every message to be delivered before the next incident.
    Returns the number of messages, and per reply (the ``id`` of its Raised) the incident that explains it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(f"chdb://{tmp}")
        migrate(client, "bench")
        columns = set(client.query("SELECT name FROM system.columns WHERE database = 'bench' AND table = 'llm_calls'")
                      .result_columns[0])  # fmt: skip
        client.insert_arrow("bench.llm_calls", calls.select([c for c in calls.column_names if c in columns]))
        open_: dict[str, OpenIncident] = {}
        messages = 0
        replies: dict[int, str] = {}
        for r in raised:
            alert = r.alert
            if alert.status == "resolved":
                open_.pop(alert.dedup_key, None)
                continue
            if alert.dedup_key in open_:
                continue
            cause = None
            if measurable(alert):
                cause = next(
                    (c for c in open_.values()
                     if FAMILIES.get(c.kind) == FAMILIES[alert.kind] and explains(client, "bench", c, alert)),
                    None,
                )  # fmt: skip
            if cause is None:
                messages += 1
            else:
                replies[id(r)] = f"{cause.kind} {cause.dimension}={cause.key}"
            at = alert.ts.timestamp()
            open_[alert.dedup_key] = OpenIncident(
                alert.dedup_key, alert.kind, alert.dimension, alert.key, "#bench", "", at, at
            )
        return messages, replies


def duration(ms: int) -> str:
    seconds = max(0, ms // 1000)
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%a %m-%d %H:%M")


def describe(r: Raised) -> str:
    a = r.alert
    return f"    {when(r.at_ms)}  {a.kind} {a.dimension}={a.key} ({a.severity}): {a.message}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=14, help="evaluated days (default 14)")
    parser.add_argument("--history-days", type=int, default=14, help="days of history before them (default 14)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=5000, help="calls per stored batch (default 5000)")
    parser.add_argument("--list", action="store_true", help="print the false alarms and the other alerts")
    args = parser.parse_args()
    config = DetectorsConfig()
    total_days = args.history_days + args.days
    first_day = int(START.timestamp() * 1000) + args.history_days * DAY_MS

    began = time.perf_counter()
    traffic = Traffic(seed=args.seed, start=START, days=total_days)
    quiet_calls = traffic.calls()
    generated = time.perf_counter() - began
    began = time.perf_counter()
    quiet = price(quiet_calls, traffic)
    priced_in = time.perf_counter() - began
    spend = pc.sum(quiet.column("cost_usd")).as_py()
    print(
        f"Detectors on realistic traffic, seed {args.seed}: {total_days} days from {START:%a %Y-%m-%d} "
        f"({args.history_days} of history, {args.days} evaluated from {when(first_day)[:9]}), "
        f"{quiet.num_rows:,} calls, ${spend:,.0f}; generated in {generated:.1f} s, priced in {priced_in:.1f} s"
    )

    quiet_raised, quiet_seconds = feed(quiet, args.batch, config)
    false_alarms = opened(quiet_raised)
    history = Counter(r.alert.kind for r in false_alarms if r.at_ms < first_day)
    evaluated = Counter(r.alert.kind for r in false_alarms if r.at_ms >= first_day)
    print(
        f"\nQuiet run: incidents opened (all false alarms); detectors {quiet_seconds:.1f} s, "
        f"{quiet_seconds / quiet.num_rows * 1e6:.2f} µs per call"
    )
    print(f"  {'kind':<28}{'history':>10}{'evaluated':>12}{'per day':>10}")
    for kind in sorted(set(history) | set(evaluated)):
        print(f"  {kind:<28}{history[kind]:>10}{evaluated[kind]:>12}{evaluated[kind] / args.days:>10.2f}")
    print(f"  {'all':<28}{history.total():>10}{evaluated.total():>12}{evaluated.total() / args.days:>10.2f}")
    if args.list:
        for r in false_alarms:
            print(describe(r))

    incidents = inject(traffic, Quiet(quiet_calls), first_day, args.days)
    injected_calls = injected(quiet, incidents, traffic)
    raised, seconds = feed(injected_calls, args.batch, config)
    print(f"\nIncident run: {len(incidents)} incidents injected into the evaluated days; detectors {seconds:.1f} s")
    print(f"  {'incident':<48}{'expected alert':<62}{'started':<17}{'caught':<8}{'time to detect':>14}")
    caught = 0
    for incident in incidents:
        first = next((r for r in raised if matches(incident, r)), None)
        caught += first is not None
        expected = f"{incident.kind} {incident.dimension}={incident.key}"
        detect = duration(first.at_ms - incident.start_ms) if first else "-"
        print(
            f"  {incident.name:<48}{expected:<62}{when(incident.start_ms):<17}{'yes' if first else 'NO':<8}{detect:>14}"
        )
    print(f"  recall: {caught} of {len(incidents)}")

    known = {(r.alert.dedup_key, r.at_ms) for r in false_alarms}
    other = [
        r
        for r in opened(raised)
        if (r.alert.dedup_key, r.at_ms) not in known and not any(matches(i, r) for i in incidents)
    ]
    during = [r for r in other if any(i.start_ms <= r.at_ms <= i.end_ms + DAY_MS for i in incidents)]
    print(
        f"  other incidents opened: {len(during)} on other keys within a day of an incident (the same cause seen "
        f"through its model, team, tenant, user...), {len(other) - len(during)} at other times"
    )
    if args.list:
        for r in other:
            print(describe(r))
    messages, replies = threads(injected_calls, raised)
    print(
        f"  in Slack: {messages + len(replies)} incidents opened, {messages} as messages of their own, {len(replies)} "
        "as replies in the thread of an open incident that explains them (alerts.inhibit)"
    )
    for incident in incidents:
        first = next((r for r in raised if matches(incident, r)), None)
        if first is not None and id(first) in replies:
            print(f"    {incident.name}: a reply to {replies[id(first)]}")


if __name__ == "__main__":
    main()
