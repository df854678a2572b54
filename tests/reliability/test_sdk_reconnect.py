"""The SDK's emitter keeps delivering when the broker restarts empty, and says so in ``stats()``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from producers import Emitter
from schemas.call_event import CallEvent
from spendstream.broker import EmbeddedBroker
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

TOPIC = "llm.calls"


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (in-memory storage), to stop and start again."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    broker.start()
    yield broker
    broker.stop()


def call(event_id: str, session_id: str) -> CallEvent:
    return CallEvent(
        event_id=event_id, ts=datetime.now(UTC), provider="openai", model="gpt-4o-mini", session_id=session_id
    )


def read_all(bootstrap: str) -> list[tuple[str, str]]:
    """(session_id, event_id) of every event on the topic, in each partition's order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    partitions = consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
    consumer.assign([TopicPartition(TOPIC, partition, 0) for partition in partitions])
    read = []
    while messages := consumer.consume(500, 3.0):
        events = [orjson.loads(m.value() or b"") for m in messages if m.error() is None]
        read += [(event["session_id"], event["event_id"]) for event in events]
    consumer.close()
    return read


def test_the_emitter_delivers_to_a_restarted_empty_broker_within_seconds(tansu: EmbeddedBroker, tmp_path: Path) -> None:
    emitter = Emitter(tansu.bootstrap, topic=TOPIC, spill_path=tmp_path / "spill.jsonl")
    for n in range(20):
        emitter.emit(call(f"before-{n}", f"s-{n % 3}"))
    assert emitter.flush(15) == 0

    tansu.stop()  # its in-memory log is gone with it
    later = [(f"s-{n % 3}", f"down-{n}") for n in range(10)]  # kept in the local queue meanwhile
    for session_id, event_id in later:
        emitter.emit(call(event_id, session_id))
    time.sleep(2)
    tansu.start()
    later += [(f"s-{n % 3}", f"after-{n}") for n in range(20)]
    for session_id, event_id in later[10:]:
        emitter.emit(call(event_id, session_id))
    started = time.monotonic()
    left = emitter.flush(15)
    took = time.monotonic() - started
    stats = emitter.close(0)

    assert left == 0, f"{left} events not delivered 15 s after the restart: {stats}"
    assert (stats.sent, stats.delivered, stats.failed, stats.in_flight) == (50, 50, 0, 0)
    assert (stats.outages, stats.reconnects) == (1, 1)
    assert "Connection refused" in stats.last_error
    assert not (tmp_path / "spill.jsonl").exists()
    read = read_all(tansu.bootstrap)
    for session in ("s-0", "s-1", "s-2"):  # each session's events, all of them, in the order emitted
        assert [e for s, e in read if s == session] == [e for s, e in later if s == session]
    print(f"\nSDK through a broker restart: 30 events delivered {took:.1f}s after it; {stats}")


def test_events_no_broker_acknowledged_by_close_are_spilled(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    emitter = Emitter(f"127.0.0.1:{free_port()}", topic=TOPIC, spill_path=spill)  # nothing listens there
    for n in range(5):
        emitter.emit(call(f"e-{n}", "s-0"))

    stats = emitter.close(1)

    assert (stats.sent, stats.failed, stats.in_flight, stats.outages, stats.reconnects) == (5, 5, 0, 1, 0)
    assert [orjson.loads(line)["event_id"] for line in spill.read_bytes().splitlines()] == [f"e-{n}" for n in range(5)]


def test_the_applications_own_error_callback_still_hears_of_broker_errors(tmp_path: Path) -> None:
    heard: list[str] = []
    emitter = Emitter(
        f"127.0.0.1:{free_port()}", topic=TOPIC, spill_path=tmp_path / "spill.jsonl",
        kafka_config={"error_cb": lambda error: heard.append(error.str())},
    )  # fmt: skip
    emitter.emit(call("e-0", "s-0"))

    stats = emitter.close(1)

    assert stats.outages == 1 and heard  # the emitter counted the outage, and the application was told


def test_a_broker_that_does_not_answer_is_said_once_not_several_times_a_second(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    emitter = Emitter(f"127.0.0.1:{free_port()}", topic=TOPIC, spill_path=tmp_path / "spill.jsonl")
    emitter.emit(call("e-0", "s-0"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        emitter.flush(0.2)  # librdkafka retries the connection meanwhile, and logs each failure
    emitter.close(1)

    assert "Connection refused" not in capfd.readouterr().err  # not straight to stderr, several times a second
    refused = [r for r in caplog.records if r.name == "spendstream.kafka" and "Connection refused" in r.message]
    assert 1 <= len(refused) <= 2, refused  # through logging, once per line (and per broker address)
