"""Recovery time: from a kill (or a stop) of ``spendstream up`` to new events queryable again.

    .venv/bin/python -m bench.restart [--rounds 3] [--embedded]

An application emits one event every 20 ms through the SDK's Emitter for the whole run. Each round
kills ``up`` (SIGKILL, then a SIGTERM round), starts it again on the same home, and times:

- ``stop``: from SIGTERM to the process gone (SIGKILL: immediate);
- ``sql``: from the start of the new ``up`` to its SQL endpoint answering;
- ``queryable``: from the start of the new ``up`` to the first event sent after that start being
  in ``llm_calls`` (read through the SQL endpoint every 50 ms).

By default ``up`` reads an external tansu broker (the worker restarts, the broker stays);
``--embedded`` runs ``up`` with its own broker, which restarts with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from producers import Emitter
from spendstream.broker import EmbeddedBroker
from tests.conftest import EmbeddedUpProcess, UpProcess, free_port


def emit(emitter: Emitter, stop: threading.Event) -> None:
    n = 0
    while not stop.wait(0.02):
        event = {
            "event_id": f"restart-{uuid.uuid4().hex}", "ts": int(time.time() * 1000), "provider": "openai",
            "model": "gpt-4o-mini", "feature": "bench.restart", "input_tokens": 100, "output_tokens": 20,
            "latency_ms": 300.0, "data_mode": "test",
        }  # fmt: skip
        emitter.emit_raw(orjson.dumps(event), str(n))
        n += 1


def first_after(up: UpProcess, since: float, timeout: float = 60) -> float:
    """Seconds from ``since`` (epoch) until a call sent after it is queryable."""
    deadline = time.monotonic() + timeout
    query = f"SELECT count() FROM llm_calls WHERE ts >= fromUnixTimestamp64Milli({int(since * 1000)})"
    while time.monotonic() < deadline:
        try:
            if int(up.client().query(query).result_rows[0][0]) > 0:  # type: ignore[arg-type]
                return time.time() - since
        except Exception:
            up._client = None  # the endpoint is not up yet
        time.sleep(0.05)
    raise SystemExit(f"no event sent after the restart was queryable within {timeout:.0f} s")


def restart(
    old: UpProcess, make: type[UpProcess], how: str, args: tuple[object, ...]
) -> tuple[UpProcess, dict[str, float]]:
    """Stop ``old`` (``how``), start a new one; returns it and the times (see the module)."""
    began = time.monotonic()
    if how == "SIGKILL":
        old.kill()
    else:
        old.stop()
    stopped = time.monotonic() - began
    since = time.time()
    new = make(*args).start()  # type: ignore[arg-type]
    sql = time.time() - since
    return new, {"stop": stopped, "sql": sql, "queryable": first_after(new, since)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedded", action="store_true", help="up with its own broker (the default mode)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        broker: EmbeddedBroker | None = None
        env = {k: v for k, v in os.environ.items() if k == "SPENDSTREAM_SESSION_TIMEOUT_S"}  # else the default
        if options.embedded:
            port = free_port()
            make: type[UpProcess] = EmbeddedUpProcess
            args: tuple[object, ...] = (home, port, env)
            bootstrap = f"127.0.0.1:{port}"
        else:
            broker = EmbeddedBroker(free_port(), Path(tmp) / "broker.log")
            broker.start()
            env["SPENDSTREAM_TOPIC_PREFIX"] = f"r{uuid.uuid4().hex[:6]}."
            make, args, bootstrap = UpProcess, (home, broker.bootstrap, env), broker.bootstrap
        up = make(*args).start()  # type: ignore[arg-type]
        topic = env.get("SPENDSTREAM_TOPIC_PREFIX", "") + "llm.calls"
        emitter = Emitter(bootstrap, topic=topic)
        stop = threading.Event()
        threading.Thread(target=emit, args=(emitter, stop), daemon=True).start()
        first_after(up, time.time())
        figures: dict[str, list[dict[str, float]]] = {"SIGKILL": [], "SIGTERM": []}
        try:
            for _ in range(options.rounds):
                for how in figures:
                    time.sleep(3)  # steady: the worker has stored and committed what came before
                    up, row = restart(up, make, how, args)
                    figures[how].append(row)
                    print(
                        f"{how:<8} stop {row['stop']:.2f} s, SQL up {row['sql']:.2f} s, "
                        f"queryable {row['queryable']:.2f} s",
                        flush=True,
                    )
        finally:
            stop.set()
            up.stop()
            emitter.close(timeout=10)
            if broker is not None:
                broker.stop()
    mode = "its own broker (embedded)" if options.embedded else "an external broker"
    print(f"\nspendstream up with {mode}, medians of {options.rounds} rounds:")
    for how, rows in figures.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in ("stop", "sql", "queryable")}
        print(
            f"  {how:<8} stop {medians['stop']:.2f} s; restarted: SQL endpoint {medians['sql']:.2f} s, "
            f"new events queryable {medians['queryable']:.2f} s"
        )


if __name__ == "__main__":
    main()
