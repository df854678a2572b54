"""Rejections survive a restart of the default mode: its broker keeps its log in memory and starts its offsets at 0
again, so rejections of the new run take the (topic, partition, offset) of earlier ones. They used to replace them."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.conftest import EmbeddedUpProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BAD = 5  # malformed records per run


def bad(run: str, n: int) -> bytes:
    return f'{{"event_id": "{run}-{n}", "ts": '.encode()


def send_bad(up: EmbeddedUpProcess, run: str) -> None:
    """``BAD`` malformed records to partition 0 of ``llm.calls``; waits until the broker acknowledged them all."""
    producer = Producer({"bootstrap.servers": up.bootstrap, "acks": "all", "enable.idempotence": False})
    for n in range(BAD):
        producer.produce("llm.calls", bad(run, n), partition=0)
    assert producer.flush(60) == 0, "the broker did not acknowledge the records"


def test_rejections_of_a_new_run_do_not_replace_those_of_the_last(
    start_embedded_up: Callable[..., EmbeddedUpProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    up = start_embedded_up(home)
    send_bad(up, "first")
    assert up.wait_for("SELECT count() FROM rejected_events", BAD, timeout=60) == BAD
    assert up.process is not None
    up.process.send_signal(signal.SIGTERM)
    up.process.wait(30)

    again = start_embedded_up(home, broker_port=up.broker_port)
    send_bad(again, "second")
    started = time.monotonic()
    kept = again.wait_for("SELECT count() FROM rejected_events FINAL", 2 * BAD, timeout=60)
    rows = again.client().query("SELECT offset, raw FROM rejected_events FINAL ORDER BY raw").result_rows
    print(f"\nrejections across a restart of up: {kept} of {2 * BAD} kept ({time.monotonic() - started:.1f}s)")
    assert kept == 2 * BAD
    # the same positions, as the broker started again at 0
    assert rows == [(n, bad(run, n).decode()) for run in ("first", "second") for n in range(BAD)]
