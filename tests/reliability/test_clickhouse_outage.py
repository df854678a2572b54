"""ClickHouse down under a worker: the worker stops when told to, and loses nothing.

A worker writing to a ClickHouse server that goes away retries its batch and acknowledges nothing
(the stream waits). A SIGTERM in that state used to hang for ever: Faust's stop waited for the
batch to be acknowledged. The worker here writes over the HTTP interface of another ``up`` (its
SQL endpoint, as the admin user), whose SIGKILL is the outage.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from producers import Emitter
from tests.conftest import UpProcess, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PER_PHASE = 200


def emit(emitter: Emitter, phase: str) -> None:
    for n in range(PER_PHASE):
        event = {
            "event_id": f"{phase}-{n}-{uuid.uuid4().hex[:8]}", "ts": 1_764_800_000_000 + n, "provider": "openai",
            "model": "gpt-4o-mini", "feature": "outage.test", "input_tokens": 1000, "output_tokens": 100,
            "data_mode": "test",
        }  # fmt: skip
        emitter.emit_raw(orjson.dumps(event), f"s{n % 7}")
    assert emitter.flush(30) == 0, "the broker did not take the events"


def test_a_worker_stops_while_clickhouse_is_down_and_stores_everything_once_after(
    start_up: Callable[..., UpProcess], start_worker: Callable[..., WorkerProcess], broker: str, tmp_path: Path
) -> None:
    home = tmp_path / "server"
    server = start_up(home)
    prefix = f"o{uuid.uuid4().hex[:8]}."
    worker = start_worker(server, tmp_path / "worker-home", SPENDSTREAM_TOPIC_PREFIX=prefix)
    log = worker.log
    emitter = Emitter(broker, topic=prefix + "llm.calls")
    try:
        emit(emitter, "before")
        query = "SELECT count() FROM llm_calls WHERE feature = 'outage.test'"
        assert server.wait_for(query, PER_PHASE, timeout=90) == PER_PHASE, log.read_text()[-3000:]

        server.kill()  # ClickHouse goes away under the worker
        emit(emitter, "during")
        failing = "ClickHouse insert failed for now"
        deadline = time.monotonic() + 30
        while failing not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failing in log.read_text(), "the worker never tried to write during the outage"

        worker.process.send_signal(signal.SIGTERM)
        try:
            code = worker.process.wait(60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            pytest.fail(f"the worker hung on SIGTERM while ClickHouse was down:\n{log.read_text()[-3000:]}")
        assert code == 0
        assert "stopping with events not stored yet" in log.read_text()

        back = start_up(home)  # ClickHouse is back, on the same data
        start_worker(back, tmp_path / "worker-home", SPENDSTREAM_TOPIC_PREFIX=prefix)
        stored = back.wait_for(query, 2 * PER_PHASE, timeout=90)
        # the rollups take a batch after llm_calls shows it (its insert runs the views): wait for them too
        rollup_query = "SELECT sum(calls) FROM rollup_day WHERE dimension = 'feature' AND key = 'outage.test'"
        rollup = back.wait_for(rollup_query, 2 * PER_PHASE, timeout=30)
        distinct = back.client().query("SELECT uniqExact(event_id) FROM llm_calls WHERE feature = 'outage.test'")
        print(f"\nClickHouse down under a worker: SIGTERM stopped it (exit {code}); {stored} of {2 * PER_PHASE} stored")
        assert (stored, distinct.result_rows[0][0], rollup) == (2 * PER_PHASE, 2 * PER_PHASE, 2 * PER_PHASE)
    finally:
        emitter.close(timeout=10)
