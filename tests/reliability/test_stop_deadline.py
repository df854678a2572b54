"""``up`` stops on SIGTERM even when its Kafka broker is gone, says why, and loses nothing."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pytest

from producers import Emitter
from spendstream.broker import EmbeddedBroker
from tests.conftest import UpProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def emit(bootstrap: str, topic: str, count: int) -> None:
    emitter = Emitter(bootstrap, topic=topic)
    for n in range(count):
        event = {
            "event_id": f"deadline-{n}", "ts": int(time.time() * 1000), "provider": "openai",
            "model": "gpt-4o-mini", "feature": "stop.deadline", "input_tokens": 100, "output_tokens": 20,
        }  # fmt: skip
        emitter.emit_raw(orjson.dumps(event), str(n))
    assert emitter.close(timeout=20).delivered == count


def test_up_stops_within_its_stop_timeout_when_the_broker_is_gone(tmp_path: Path) -> None:
    prefix = f"d{uuid.uuid4().hex[:6]}."
    env = {"SPENDSTREAM_TOPIC_PREFIX": prefix, "SPENDSTREAM_STOP_TIMEOUT_S": "3"}
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    up = UpProcess(tmp_path / "home", broker.bootstrap, env).start()
    try:
        emit(broker.bootstrap, prefix + "llm.calls", 50)
        assert up.wait_for("SELECT count() FROM llm_calls", 50) == 50
        broker.stop()
        time.sleep(2)  # the worker finds its broker gone (and says so)
        assert up.process is not None
        up.process.send_signal(signal.SIGTERM)
        try:
            code = up.process.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up still ran 60 s after SIGTERM with its broker gone: {up.log.read_text()[-2000:]}")
    finally:
        up.stop()
        broker.stop()
    log = up.log.read_text()
    assert code == 1
    assert "still stopping 3 s after SIGTERM (SPENDSTREAM_STOP_TIMEOUT_S): exiting now" in log
    # aiokafka says each failure several times a second; the log says each once
    assert log.count("Unable connect to node") <= 2, log[-3000:]

    broker = EmbeddedBroker(free_port(), tmp_path / "broker-2.log")
    broker.start()
    again = UpProcess(tmp_path / "home", broker.bootstrap, env).start()
    try:
        assert again.scalar("SELECT count() FROM llm_calls") == 50
        rollup = "SELECT sum(calls) FROM rollup_day WHERE dimension = 'feature' AND key = 'stop.deadline'"
        assert again.scalar(rollup) == 50
    finally:
        again.stop()
        broker.stop()
