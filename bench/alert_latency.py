"""Event-to-Slack latency: from an incident's first event produced to its message posted, under load.

    .venv/bin/python -m bench.alert_latency [--incidents 10] [--rate 5000] [--kind mixed] [--busy 2]

Starts a tansu broker, ``spendstream up`` (its own chDB) and a local Slack Web API stand-in. A
background producer sends ordinary calls at ``--rate`` events/s (sessions of four calls), stamped
with the time they are sent, for the whole run: it raises no alert of its own. Every ``--spacing``
seconds an incident starts, sent at once: a runaway session (one model call and one tool call with
the same prompt hash and tool, five times: ``loop_detected``, to #agent-loops) or a rate-limit
storm (40 calls of a new feature refused by the provider: ``error_rate``, to #llm-costs); ``mixed``
takes them in turn. The clock of an incident runs from its first event handed to the producer
until the stand-in has recorded the message naming it. Prints p50, p95 and max; ``--group-wait 0``
shows the pipeline without the alerter's group wait; ``--busy N`` starts N other runaway sessions
a second, routed to another channel, and the stand-in takes ``--slack-seconds`` to answer each
post, so the alerter is busy with other incidents meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import clickhouse_connect
import orjson

from producers import Emitter
from spendstream.broker import EmbeddedBroker, port_open
from tests.conftest import free_port
from tests.slack_standin import SlackStandIn

FEATURES = ["sales.email_draft", "sales.proposal_summary", "support.triage", "coordinator.plan"]


def ordinary(n: int) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()), "ts": int(time.time() * 1000), "provider": "openai",
        "model": "gpt-4o-mini" if n % 3 else "gpt-4o", "feature": FEATURES[n % 4], "input_tokens": 900 + n % 400,
        "output_tokens": 200, "latency_ms": 700.0 + n % 500, "session_id": f"s{n // 4}",
        "tenant_id": f"t{n % 20}", "user_id": f"u{n % 300}", "data_mode": "test",
    }  # fmt: skip


def busy(stop: threading.Event, emitter: Emitter, per_second: float) -> None:
    """Other runaway sessions (routed to another channel) at ``per_second`` until ``stop``: the alerter is busy."""
    n = 0
    while not stop.wait(1 / per_second):
        for event in runaway(f"busy-{n}"):
            emitter.emit_raw(orjson.dumps(event), f"busy-{n}")
        n += 1


def runaway(session: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    for turn in range(5):
        now = int(time.time() * 1000)
        common = {"session_id": session, "feature": "support.ticket_reply", "tenant_id": "t1", "data_mode": "test"}
        events.append({**common, "event_id": str(uuid.uuid4()), "ts": now, "provider": "anthropic",
                       "model": "claude-haiku-4-5", "input_tokens": 800 + 400 * turn, "output_tokens": 80,
                       "latency_ms": 900.0, "prompt_hash": "ph_bench_loop"})  # fmt: skip
        events.append({**common, "event_id": str(uuid.uuid4()), "ts": now, "kind": "tool", "provider": "internal",
                       "model": "tool", "tool_name": "order_status", "latency_ms": 120.0})  # fmt: skip
    return events


def storm(feature: str) -> list[dict[str, object]]:
    """A rate-limit storm: 40 calls of a feature, all refused by the provider, at once."""
    now = int(time.time() * 1000)
    return [
        {"event_id": str(uuid.uuid4()), "ts": now, "provider": "openai", "model": "gpt-4o-mini", "feature": feature,
         "input_tokens": 900, "output_tokens": 0, "latency_ms": 150.0, "status": "rate_limited",
         "error_type": "RateLimitError", "session_id": f"{feature}-{n}", "tenant_id": "t1", "data_mode": "test"}
        for n in range(40)
    ]  # fmt: skip


INCIDENTS = {"loop": ("bench-loop", runaway), "errors": ("bench-storm", storm)}


def load(emitter: Emitter, rate: int, stop: threading.Event, sent: list[int]) -> None:
    """Send ordinary calls at ``rate`` per second, in 10 ms steps, until ``stop``."""
    n = 0
    start = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        while n < due:
            emitter.emit_raw(orjson.dumps(ordinary(n)), f"s{n // 4}")
            n += 1
        time.sleep(0.01)
    sent.append(n)


def diagnose(sql_port: int, name: str) -> str:
    """What the stack had when an incident's message did not come."""
    client = clickhouse_connect.get_client(host="127.0.0.1", port=sql_port, database="spendstream")
    stored = client.query("SELECT count(), max(ts) FROM llm_calls").result_rows[0]
    of_session = client.query(
        f"SELECT count() FROM llm_calls WHERE session_id = '{name}' OR feature = '{name}'"
    ).result_rows[0][0]
    alerts = client.query(
        f"SELECT kind, delivery_state, delivery_error FROM alerts FINAL WHERE key = '{name}'"
    ).result_rows
    return f"no message: {stored[0]:,} calls stored (latest {stored[1]}), {of_session} of the incident; alerts {alerts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=10)
    parser.add_argument("--rate", type=int, default=5000, help="background events per second")
    parser.add_argument("--group-wait", type=float, default=10.0, help="alerts.group_wait_seconds")
    parser.add_argument("--spacing", type=float, default=15.0, help="seconds between incidents")
    parser.add_argument(
        "--busy", type=float, default=0.0, help="other runaway sessions per second, routed to #llm-oncall"
    )
    parser.add_argument("--slack-seconds", type=float, default=0.2, help="how long Slack takes to answer a post")
    parser.add_argument(
        "--kind", choices=["loop", "errors", "mixed"], default="mixed",
        help="runaway sessions (loop_detected), rate-limit storms of a feature (error_rate), or both in turn",
    )  # fmt: skip
    args = parser.parse_args()
    slack = SlackStandIn(post_seconds=args.slack_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(free_port(), Path(tmp) / "broker.log")
        broker.start()
        config = Path(tmp) / "spendstream.yaml"
        config.write_text(
            f"alerts:\n  group_wait_seconds: {args.group_wait}\n  routes:\n"
            "    - {match: {kind: loop_detected, key: 'busy-*'}, channel: '#llm-oncall'}\n"
            "    - {match: {kind: loop_detected}, channel: '#agent-loops'}\n"
            "    - {match: {kind: error_rate}, channel: '#llm-costs'}\n"
        )
        sql_port = free_port()
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        env = {**os.environ, "SPENDSTREAM_HOME": str(Path(tmp) / "home"),
               "SPENDSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "SPENDSTREAM_SQL_PORT": str(sql_port),
               "SPENDSTREAM_TOPIC_PREFIX": prefix,
               "SPENDSTREAM_SESSION_TIMEOUT_S": "6", "SPENDSTREAM_CONFIG": str(config),
               "SPENDSTREAM_SLACK_BOT_TOKEN": "xoxb-bench", "SPENDSTREAM_SLACK_API_URL": slack.url}  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "spendstream.cli", "up"], env=env, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        sent: list[int] = []
        try:
            while not port_open("127.0.0.1", sql_port):
                time.sleep(0.1)
            emitter = Emitter(broker.bootstrap, topic=prefix + "llm.calls", max_queued=1_000_000)
            loader = threading.Thread(target=load, args=(emitter, args.rate, stop, sent), daemon=True)
            loader.start()
            time.sleep(20)  # the worker joins its group and catches up with the first seconds of load
            if args.busy:
                threading.Thread(target=busy, args=(stop, emitter, args.busy), daemon=True).start()
            latencies = []
            kinds = ["loop", "errors"] if args.kind == "mixed" else [args.kind]
            for n in range(args.incidents):
                kind = kinds[n % len(kinds)]
                prefix_of, make = INCIDENTS[kind]
                name = f"{prefix_of}-{n}"
                started = time.perf_counter()
                for event in make(name):
                    emitter.emit_raw(orjson.dumps(event), str(event.get("session_id", name)))
                deadline = started + 120
                while not any(name in p.text for p in slack.posted) and time.perf_counter() < deadline:
                    time.sleep(0.05)
                latencies.append(time.perf_counter() - started)
                if time.perf_counter() >= deadline:
                    print(diagnose(sql_port, name), flush=True)
                print(f"incident {n + 1} ({kind}): {latencies[-1]:.2f} s", flush=True)
                time.sleep(max(0.0, args.spacing - latencies[-1]))
            stop.set()
            loader.join()
            emitter.close(timeout=60)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(30)
            broker.stop()
            slack.close()
    if len(latencies) < 2:
        raise SystemExit("p95 needs two incidents at least: --incidents 2")
    quantiles = statistics.quantiles(latencies, n=20, method="inclusive")
    print(f"background load:         {args.rate:,} events/s ({sent[0] if sent else 0:,} sent)")
    what = {
        "loop": "runaway sessions",
        "errors": "rate-limit storms",
        "mixed": "runaway sessions and rate-limit storms",
    }
    print(f"incidents:               {len(latencies)} {what[args.kind]}, group wait {args.group_wait:g} s")
    others = sum(p.channel == "#llm-oncall" for p in slack.posted)
    print(f"alerter busy with:       {args.busy:g} other incidents/s ({others} messages)")
    print(f"Slack answers a post in: {args.slack_seconds:g} s")
    print(f"event to Slack p50:      {statistics.median(latencies):.2f} s")
    print(f"event to Slack p95:      {quantiles[18]:.2f} s")
    print(f"event to Slack max:      {max(latencies):.2f} s")


if __name__ == "__main__":
    main()
