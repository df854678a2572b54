"""Pipeline benchmark: produce N events, then measure end-to-end events/s through spendstream and a raw baseline.

    .venv/bin/python bench/pipeline.py [--events 200000]

Prints the produce rate; the sustained end-to-end rate of ``spendstream up`` (first event produced to
all rows queryable); the same workload through a raw baseline in this process (a plain confluent-kafka
consumer inserting columnar batches into chDB with clickhouse-connect, no Faust, no validation); the
ratio; and peak memory (RSS) of both.
"""

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
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
from confluent_kafka import Consumer

from producers import Emitter
from spendstream.broker import EmbeddedBroker, port_open
from tests.conftest import free_port

# Calls per agent session: ordinary traffic, under the loop detector's caps (a bench where every
# session is a runaway loop measures an alert storm, not the pipeline).
SESSION_CALLS = 8


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


def produce(bootstrap: str, topic: str, payloads: list[bytes]) -> float:
    emitter = Emitter(bootstrap, topic=topic, max_queued=1_000_000)
    start = time.perf_counter()
    for n, value in enumerate(payloads):
        emitter.emit_raw(value, f"s{n // SESSION_CALLS}")
    emitter.close(timeout=120)
    return len(payloads) / (time.perf_counter() - start)


def spendstream_rate(bootstrap: str, prefix: str, payloads: list[bytes], home: Path) -> tuple[float, float, int]:
    sql_port = free_port()
    env = {**os.environ, "SPENDSTREAM_HOME": str(home), "SPENDSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "SPENDSTREAM_SQL_PORT": str(sql_port), "SPENDSTREAM_TOPIC_PREFIX": prefix}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "spendstream.cli", "up"], env=env, stderr=subprocess.DEVNULL)
    try:
        while not port_open("127.0.0.1", sql_port):
            time.sleep(0.1)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=sql_port, database="spendstream")
        time.sleep(8)  # let the worker join its consumer group before the clock starts
        start = time.perf_counter()
        produce_rate = produce(bootstrap, prefix + "llm.calls", payloads)
        while client.query("SELECT count() FROM llm_calls").result_rows[0][0] < len(payloads):
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) // 1024
        return produce_rate, len(payloads) / elapsed, rss
    finally:
        proc.terminate()
        proc.wait(30)


def baseline_rate(bootstrap: str, topic: str, n: int, home: Path) -> float:
    client = clickhouse_connect.get_client(dsn=f"chdb://{home}")
    client.command("CREATE DATABASE IF NOT EXISTS raw")
    client.command(
        "CREATE TABLE IF NOT EXISTS raw.calls (event_id String, ts DateTime64(3, 'UTC'),"
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
    start = None
    while done < n:
        messages = consumer.consume(10_000, 1.0)
        if not messages:
            continue
        start = start or time.perf_counter()
        rows = [json.loads(m.value()) for m in messages if m.error() is None]
        columns = [[r[c] for r in rows] for c in names]
        columns[1] = [datetime.fromtimestamp(t / 1000, UTC) for t in columns[1]]
        client.insert("raw.calls", columns, column_names=names, column_oriented=True)
        done += len(rows)
    consumer.close()
    assert start is not None
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    payloads = events(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(free_port(), Path(tmp) / "broker.log")
        broker.start()
        try:
            prefix = f"bench{uuid.uuid4().hex[:6]}."
            produce_rate, e2e, rss = spendstream_rate(broker.bootstrap, prefix, payloads, Path(tmp) / "home")
            raw = baseline_rate(broker.bootstrap, prefix + "llm.calls", len(payloads), Path(tmp) / "raw")
        finally:
            broker.stop()
    print(f"events:                  {args.events}")
    print(f"produce rate:            {produce_rate:,.0f} events/s")
    print(f"spendstream end to end:  {e2e:,.0f} events/s (produce start to all rows queryable)")
    print(f"raw baseline:            {raw:,.0f} events/s (confluent-kafka + columnar chDB inserts)")
    print(f"ratio:                   {e2e / raw:.2f} of the baseline")
    print(f"peak memory:             spendstream up {rss} MiB; baseline process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
