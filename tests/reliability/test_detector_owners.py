"""Detectors give the same answers with one worker or three, and when a worker is killed mid-stream.

The same seeded traffic (three quiet days, then a spend spike, a looping session, an error storm and a
latency collapse) goes through `spendstream up` alone, and through `up` plus two `spendstream worker`
processes that write to ClickHouse over `up`'s SQL endpoint as admin. The incidents each raises are
compared with those of the detectors fed the same calls in this process.

An incident is compared by (kind, dimension, key) and the highest severity it reached: whether it
first showed as a warning depends on where batches happened to end (with one worker too).
"""

from __future__ import annotations

import os
import re
import signal
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from producers import Emitter
from schemas.config import DetectorsConfig
from streams.detectors.engine import Detectors
from streams.ingest import Ingestor, RawEvent
from streams.pricing import Pricer
from tests.conftest import UpProcess, WorkerProcess
from tests.detector_traffic import CONFIG, LOOP_SESSION, SLOW_MODEL, SPIKE_FEATURE, STORM_MODEL, encoded, events

pytestmark = pytest.mark.integration

PARTITIONS = 4
Incident = tuple[str, str, str, str]
_RANK = {"warning": 1, "critical": 2}


def worst(rows: list[tuple[str, str, str, str]]) -> set[Incident]:
    """(kind, dimension, key, highest severity) of firing alerts."""
    found: dict[tuple[str, str, str], str] = {}
    for kind, dimension, key, severity in rows:
        before = found.get((kind, dimension, key))
        if before is None or _RANK.get(severity, 0) > _RANK.get(before, 0):
            found[(kind, dimension, key)] = severity
    return {(*incident, severity) for incident, severity in found.items()}


def expected(calls: list[tuple[bytes, str]]) -> set[Incident]:
    """What one worker's detectors raise on these calls, fed in this process."""
    position = [0] * PARTITIONS
    raws = []
    for value, key in calls:
        source = zlib.crc32(key.encode()) % PARTITIONS
        position[source] += 1
        raws.append(RawEvent(value, source, position[source]))
    stored = Ingestor(Pricer([]), "llm.calls").process(raws).calls.columns
    detectors = Detectors(DetectorsConfig.model_validate(yaml.safe_load(CONFIG)["detectors"]))
    return worst([(a.kind, a.dimension, a.key, a.severity) for a in detectors.observe(stored) if a.status == "firing"])


def joined(logs: list[Path], timeout: float = 60) -> None:
    """Wait until the processes writing ``logs`` each hold partitions of the calls topic, all of them between them."""
    deadline = time.monotonic() + timeout
    held: list[set[int]] = []
    while time.monotonic() < deadline:
        held = [_held(log) for log in logs]
        if all(held) and sum(len(h) for h in held) == PARTITIONS and set().union(*held) == set(range(PARTITIONS)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the workers did not share the partitions within {timeout:.0f}s: {held}")


def _held(log: Path) -> set[int]:
    """The partitions of the calls topic a worker was last given (Faust logs a table of them)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    table = text.rpartition("Setting newly assigned partitions")[2].partition("for group")[0]
    for line in table.splitlines():
        found = re.search(r"\.llm\.calls\s.*\{([^}]*)\}", line)
        if found:
            held: set[int] = set()
            for part in found.group(1).split(","):
                first, _, last = part.strip().partition("-")
                if first:
                    held.update(range(int(first), int(last or first) + 1))
            return held
    return set()


def emit(up: UpProcess, calls: list[tuple[bytes, str]]) -> None:
    emitter = Emitter(up.env["SPENDSTREAM_KAFKA_BOOTSTRAP"], topic=up.env["SPENDSTREAM_TOPIC_PREFIX"] + "llm.calls")
    for value, key in calls:
        emitter.emit_raw(value, key)
    assert emitter.flush(30) == 0
    emitter.close()


def raised(up: UpProcess, want: set[Incident], calls: int, timeout: float = 90) -> set[Incident]:
    """The incidents raised once every call is stored and the detectors raised what they will (or the deadline)."""
    assert up.wait_for("SELECT count() FROM llm_calls", calls, timeout) == calls
    deadline = time.monotonic() + timeout
    found: set[Incident] = set()
    while time.monotonic() < deadline:
        rows = up.client().query("SELECT kind, dimension, key, severity FROM alerts WHERE status = 'firing'")
        found = worst([tuple(row) for row in rows.result_rows])  # type: ignore[misc]
        if found == want:
            return found
        time.sleep(0.5)
    return found


def up_and_workers(
    start_up: Callable[..., UpProcess], start_worker: Callable[..., WorkerProcess], home: Path, workers: int
) -> tuple[UpProcess, list[WorkerProcess]]:
    """``up`` with the detectors' config and ``workers`` more workers beside it, once they share the partitions."""
    config = home.parent / f"{home.name}.yaml"
    config.write_text(CONFIG)
    up = start_up(home=home, SPENDSTREAM_CONFIG=str(config))
    started = [start_worker(up, home.parent / f"{home.name}-worker-{n}") for n in range(workers)]
    joined([up.log, *(worker.log for worker in started)])
    return up, started


@pytest.fixture
def traffic() -> tuple[list[tuple[bytes, str]], set[Incident]]:
    calls = encoded(events())
    want = expected(calls)
    # the staged incidents are among them
    assert {("spend_spike", "feature", SPIKE_FEATURE, "critical"), ("loop_detected", "session_id", LOOP_SESSION,
            "critical"), ("error_rate", "model", STORM_MODEL, "critical"), ("latency_p95", "model", SLOW_MODEL,
            "critical")} <= want  # fmt: skip
    return calls, want


def test_one_worker_and_three_raise_the_same_incidents(
    start_up: Callable[..., UpProcess],
    start_worker: Callable[..., WorkerProcess],
    traffic: tuple[list[tuple[bytes, str]], set[Incident]],
    tmp_path: Path,
) -> None:
    calls, want = traffic
    alone, _ = up_and_workers(start_up, start_worker, tmp_path / "alone", 0)
    three, _ = up_and_workers(start_up, start_worker, tmp_path / "three", 2)
    emit(alone, calls)
    emit(three, calls)

    assert raised(alone, want, len(calls)) == want
    assert raised(three, want, len(calls)) == want


def test_a_worker_killed_mid_stream_changes_nothing(
    start_up: Callable[..., UpProcess],
    start_worker: Callable[..., WorkerProcess],
    traffic: tuple[list[tuple[bytes, str]], set[Incident]],
    tmp_path: Path,
) -> None:
    calls, want = traffic
    up, workers = up_and_workers(start_up, start_worker, tmp_path / "up", 2)
    half = len(calls) // 2
    emit(up, calls[:half])
    deadline = time.monotonic() + 60
    while (stored := up.scalar("SELECT count() FROM llm_calls")) < half // 3:  # type: ignore[operator]
        assert time.monotonic() < deadline, f"only {stored} calls stored"
        time.sleep(0.05)
    os.kill(workers[0].process.pid, signal.SIGKILL)  # mid-stream: calls stored, partials on their way
    workers[0].process.wait(10)
    emit(up, calls[half:])

    assert raised(up, want, len(calls), timeout=120) == want
