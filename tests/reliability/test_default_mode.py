"""The default mode keeps every acknowledged event: ``spendstream up`` (its own in-memory broker) stopped with
SIGTERM, Ctrl-C (SIGINT) or SIGKILL while an application streams events, then started again on the same home."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer

from tests.conftest import EmbeddedUpProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

EVENTS = 8_000
RATE = 2_000  # events a second: the stream runs 4 s, and is stopped 1.5 s into it


class Application:
    """An application emitting call events at a steady rate, recording which ones the broker acknowledged.

    The producer is configured as the SDK's emitter is (acks from all replicas, not idempotent, one
    request in flight), with per-event delivery reports: the emitter counts, this needs the ids.
    """

    def __init__(self, bootstrap: str, events: int = EVENTS, rate: int = RATE) -> None:
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
             "max.in.flight.requests.per.connection": 1, "linger.ms": 20, "compression.type": "lz4",
             "reconnect.backoff.max.ms": 500, "message.timeout.ms": 120_000}
        )  # fmt: skip
        self.sent: list[str] = []
        self.acked: set[str] = set()
        self.failed: list[str] = []
        self._events, self._rate = events, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="application", daemon=True)

    def start(self) -> Application:
        self._thread.start()
        return self

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        event_id = orjson.loads(message.value() or b"{}")["event_id"]
        if error is None:
            self.acked.add(event_id)
        else:
            self.failed.append(f"{event_id}: {error}")

    def _run(self) -> None:
        self._send(0)
        while not self.acked:  # the broker acknowledges once the worker reads the topic: stream from then on
            self.producer.poll(0.02)
        start = time.monotonic()
        for n in range(1, self._events):
            self._send(n)
            ahead = n / self._rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def _send(self, n: int) -> None:
        event_id = str(uuid.uuid4())
        value = {"event_id": event_id, "ts": datetime.now(UTC).isoformat(), "provider": "openai",
                 "model": "gpt-4o-mini", "feature": "reliability", "session_id": f"s{n % 97}",
                 "input_tokens": 100 + n % 50, "output_tokens": 20}  # fmt: skip
        self.producer.produce("llm.calls", orjson.dumps(value), f"s{n % 97}".encode(), on_delivery=self._delivered)
        self.sent.append(event_id)
        self.producer.poll(0)

    def wait_acked(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} events acknowledged in {timeout:.0f}s"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> None:
        """Wait until every event was sent, and delivered or failed; stop polling."""
        deadline = time.monotonic() + timeout
        while len(self.sent) < self._events or len(self.acked) + len(self.failed) < len(self.sent):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(5)


def stored_ids(up: EmbeddedUpProcess) -> list[str]:
    return [row[0] for row in up.client().query("SELECT event_id FROM llm_calls").result_rows]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_every_acknowledged_event_is_stored_once_across_a_stop_of_up(
    start_embedded_up: Callable[..., EmbeddedUpProcess], tmp_path: Path, stop: signal.Signals
) -> None:
    home = tmp_path / "home"
    up = start_embedded_up(home)
    app = Application(up.bootstrap).start()
    app.wait_acked(int(RATE * 1.5))  # 1.5 s into the stream
    assert up.process is not None
    stopped_at = time.monotonic()
    # SIGINT to `up` alone is what Ctrl-C in a terminal does to it: the broker has a session of its own.
    up.process.send_signal(stop)
    up.process.wait(30)
    stop_seconds = time.monotonic() - stopped_at
    acked_before_restart = set(app.acked)

    again = start_embedded_up(home, broker_port=up.broker_port)
    app.finish()
    again.wait_for("SELECT count() FROM llm_calls", len(app.acked), timeout=60)
    stored = stored_ids(again)
    distinct = set(stored)
    saved = "saved" if (home / "up.log").read_text().count("when the broker last stopped") else "none saved"
    print(
        f"\n{stop.name}: stopped in {stop_seconds:.2f} s; {len(acked_before_restart)} acknowledged before the restart, "
        f"{len(app.acked)} of {len(app.sent)} in all; {len(stored)} rows, {len(distinct)} distinct; tail {saved}"
    )
    assert not acked_before_restart - distinct, "acknowledged before the stop, never stored"
    assert not app.acked - distinct, "acknowledged, never stored"
    assert len(stored) == len(distinct), "an event stored twice"
    assert distinct <= set(app.sent)
    assert not app.failed, app.failed[:3]
    if stop != signal.SIGKILL:
        assert up.process.returncode == 0, (home / "up.log").read_text()[-3000:]
        assert stop_seconds < 2.0, f"up took {stop_seconds:.2f} s to stop"
