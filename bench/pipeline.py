"""Pipeline benchmark: produce N events, then measure end-to-end events/s through spendstream and a raw baseline.

    .venv/bin/python -m bench.pipeline [--events 200000] [--runs 1] [--payload native|usage]

Per run: the produce rate; the sustained end-to-end rate of ``spendstream up`` (first event produced
to all rows queryable) and its CPU time per event (all its threads); the same workload through a raw
baseline in this process (a plain confluent-kafka consumer inserting columnar batches into chDB with
clickhouse-connect, no Faust, no validation, no rollups) with its CPU per event; the ratio; and peak
memory (RSS) of both. With several runs it prints each run and the medians: on a shared machine the
wall rate of one run swings widely, the ratio to a baseline measured in the same run much less.
The traffic is ordinary: sessions of eight calls, under the loop detector's caps; ``--payload usage``
sends it as hosted cost trackers' SDKs do (camelCase, no ts: the worker takes the record's time)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer

from producers import Emitter
from schemas.call_event import CAMEL_NAMES
from spendstream.broker import EmbeddedBroker, port_open
from tests.conftest import free_port

# Calls per agent session: ordinary traffic, under the loop detector's caps (a bench where every
# session is a runaway loop measures an alert storm, not the pipeline).
SESSION_CALLS = 8


def usage_payloads(n: int) -> list[bytes]:
    """The same calls as :func:`events`, as the usage payload of hosted cost trackers (no ts)."""
    return [
        json.dumps(
            {
                "externalRequestId": str(uuid.uuid4()),
                "provider": "openai",
                "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
                "endpointTag": ["sales.email_draft", "sales.proposal_summary", "support.triage", "coordinator.plan"][
                    i % 4
                ],
                "inputTokens": 1200 + i % 500,
                "outputTokens": 300,
                "latencyMs": 800.0,
                "status": "ok",
                "session_id": f"s{i // SESSION_CALLS}",
                "tenant_id": f"t{i % 20}",
                "userId": f"u{i % 300}",
            }
        ).encode()
        for i in range(n)
    ]


def events(n: int) -> list[bytes]:
    now = int(datetime.now(UTC).timestamp() * 1000)
    features = ["sales.email_draft", "sales.proposal_summary", "support.triage", "coordinator.plan"]
    return [
        json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "ts": now - (i % 3_600_000),
                "provider": "openai",
                "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
                "feature": features[i % 4],
                "input_tokens": 1200 + i % 500,
                "output_tokens": 300,
                "cache_read_tokens": 100,
                "latency_ms": 800.0,
                "session_id": f"s{i // SESSION_CALLS}",
                "tenant_id": f"t{i % 20}",
                "user_id": f"u{i % 300}",
            }
        ).encode()
        for i in range(n)
    ]


def produce(emitter: Emitter, payloads: list[bytes]) -> float:
    start = time.perf_counter()
    for n, value in enumerate(payloads):
        emitter.emit_raw(value, f"s{n // SESSION_CALLS}")
    emitter.close(timeout=120)
    return len(payloads) / (time.perf_counter() - start)


@dataclass(frozen=True, slots=True)
class Run:
    produce_rate: float
    e2e_rate: float
    cpu_us_per_event: float
    """CPU time of the ``up`` process (every thread: Faust, chDB, the sink) per event, in microseconds."""
    rss_mib: int
    baseline_rate: float
    baseline_cpu_us_per_event: float


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spendstream_rate(
    bootstrap: str, prefix: str, payloads: list[bytes], home: Path, cwd: Path | None = None
) -> tuple[float, float, float, int]:
    """Produce rate, end-to-end rate, CPU µs per event and peak RSS (MiB) of ``spendstream up``.

    ``cwd``: run ``up`` from that checkout of the project (``bench.compare``) rather than this one.
    """
    sql_port = free_port()
    env = {**os.environ, "SPENDSTREAM_HOME": str(home), "SPENDSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "SPENDSTREAM_SQL_PORT": str(sql_port), "SPENDSTREAM_TOPIC_PREFIX": prefix}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "up"], env=env, stderr=subprocess.DEVNULL, cwd=cwd
    )
    try:
        while not port_open("127.0.0.1", sql_port):
            time.sleep(0.1)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=sql_port, database="spendstream")
        # Before the clock starts, the worker joins its consumer group and the producer connects
        # (librdkafka sets up an idempotent producer in about 0.5 s): the clock starts with the first
        # event produced, as the baseline's starts with the first event it consumes.
        emitter = Emitter(bootstrap, topic=prefix + "llm.calls", max_queued=1_000_000)
        emitter.start()
        time.sleep(8)
        start, cpu_start = time.perf_counter(), _cpu_seconds(proc.pid)
        produce_rate = produce(emitter, payloads)
        while client.query("SELECT count() FROM llm_calls").result_rows[0][0] < len(payloads):
            time.sleep(0.1)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds(proc.pid) - cpu_start
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) // 1024
        return produce_rate, len(payloads) / elapsed, cpu / len(payloads) * 1e6, rss
    finally:
        proc.terminate()
        proc.wait(30)


def _native(row: dict[str, Any], timestamp: int) -> dict[str, Any]:
    """A usage payload's row under the contract's names, at its record's time (a native row as it is)."""
    if "ts" in row:
        return row
    return {CAMEL_NAMES.get(name, name): value for name, value in row.items()} | {
        "ts": timestamp,
        "cache_read_tokens": 0,
    }


def baseline_rate(bootstrap: str, topic: str, n: int, client: Client, table: str) -> tuple[float, float]:
    """Rate and CPU µs per event of a plain confluent-kafka consumer inserting columns into chDB."""
    client.command("CREATE DATABASE IF NOT EXISTS raw")
    client.command(
        f"CREATE TABLE raw.{table} (event_id String, ts DateTime64(3, 'UTC'),"
        " provider LowCardinality(String), model LowCardinality(String), feature LowCardinality(String),"
        " input_tokens UInt64, output_tokens UInt64,"
        " cache_read_tokens UInt64, latency_ms Float32, session_id String, tenant_id String, user_id String)"
        " ENGINE = MergeTree ORDER BY (toDate(ts), event_id)"
    )
    names = ["event_id", "ts", "provider", "model", "feature", "input_tokens", "output_tokens", "cache_read_tokens",
             "latency_ms", "session_id", "tenant_id", "user_id"]  # fmt: skip
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})  # fmt: skip
    consumer.subscribe([topic])
    done = 0
    start = cpu_start = None
    while done < n:
        messages = consumer.consume(10_000, 1.0)
        if not messages:
            continue
        if start is None:
            start, cpu_start = time.perf_counter(), time.process_time()
        rows = [_native(json.loads(m.value()), m.timestamp()[1]) for m in messages if m.error() is None]
        columns = [[r[c] for r in rows] for c in names]
        columns[1] = [datetime.fromtimestamp(t / 1000, UTC) for t in columns[1]]
        client.insert(f"raw.{table}", columns, column_names=names, column_oriented=True)
        done += len(rows)
    consumer.close()
    assert start is not None and cpu_start is not None
    return n / (time.perf_counter() - start), (time.process_time() - cpu_start) / n * 1e6


def one_run(payloads: list[bytes], tmp: Path, raw: Client, number: int) -> Run:
    broker = EmbeddedBroker(free_port(), tmp / f"broker-{number}.log")
    broker.start()
    try:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        produce_rate, e2e, cpu, rss = spendstream_rate(broker.bootstrap, prefix, payloads, tmp / f"home-{number}")
        base, base_cpu = baseline_rate(broker.bootstrap, prefix + "llm.calls", len(payloads), raw, f"calls_{number}")
    finally:
        broker.stop()
    return Run(produce_rate, e2e, cpu, rss, base, base_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1, help="repeat, and print each run and the medians")
    parser.add_argument("--payload", choices=["native", "usage"], default="native", help="the SDK's, or camelCase")
    args = parser.parse_args()
    payloads = events(args.events) if args.payload == "native" else usage_payloads(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        raw = clickhouse_connect.get_client(dsn=f"chdb://{tmp}/raw")  # one chDB data path per process
        runs = [one_run(payloads, Path(tmp), raw, number) for number in range(args.runs)]

    def figure(name: str) -> str:
        values = [getattr(run, name) for run in runs]
        shown = f"{median(values):,.0f}"
        return shown if len(values) == 1 else f"{shown} (runs: {', '.join(f'{v:,.0f}' for v in values)})"

    ratios = [run.e2e_rate / run.baseline_rate for run in runs]
    print(f"events:                  {args.events} per run, {args.runs} run(s); medians")
    print(f"produce rate:            {figure('produce_rate')} events/s")
    print(f"spendstream end to end:  {figure('e2e_rate')} events/s (produce start to all rows queryable)")
    print(f"  CPU per event:         {figure('cpu_us_per_event')} µs (the up process, all its threads)")
    print(f"raw baseline:            {figure('baseline_rate')} events/s (confluent-kafka + columnar chDB inserts)")
    print(f"  CPU per event:         {figure('baseline_cpu_us_per_event')} µs")
    print(f"ratio:                   {median(ratios):.2f} of the baseline (each run against its own baseline)")
    print(f"peak memory:             spendstream up {figure('rss_mib')} MiB; baseline process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
