"""No record stops the pipeline: records of about 1 MB, which the broker takes and the worker refuses as
oversize, are kept in ``rejected_events`` (their first bytes and their size) and in the dead-letter topic
(cut to the same bound), and the events after them are stored; ``up`` still stops at once on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer

from sinks.batch import Rejection
from streams import agents
from streams.agents import publish_dead_letters
from tests.conftest import UpProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

MAX_EVENT_BYTES = 64 * 1024  # the default limit of the worker
BIG = (999_900, 1_040_000)
"""Record sizes under Kafka's default limit (1,048,588 bytes) whose dead-letter copies, headers added, did not fit
the worker's producer (1,000,000 bytes): each stopped the stream for good."""


def record(event_id: str, size: int) -> bytes:
    """A call event padded with a tag to exactly ``size`` bytes."""
    head = json.dumps({"event_id": event_id, "ts": datetime.now(UTC).isoformat(), "provider": "openai",
                       "model": "gpt-4o", "tags": {"pad": ""}})  # fmt: skip
    return head[:-3].encode() + b"x" * (size - len(head)) + b'"}}'


def call(event_id: str) -> bytes:
    return json.dumps({
        "event_id": event_id, "ts": datetime.now(UTC).isoformat(), "provider": "openai", "model": "gpt-4o",
        "feature": "sales.email_draft", "input_tokens": 1000, "output_tokens": 100,
    }).encode()  # fmt: skip


def test_records_of_a_megabyte_are_rejected_and_the_stream_goes_on(
    start_up: Callable[..., UpProcess], broker: str
) -> None:
    up = start_up()
    prefix = up.env["SPENDSTREAM_TOPIC_PREFIX"]
    producer = KafkaProducer(bootstrap_servers=broker, max_request_size=2_000_000, linger_ms=5)
    for n, size in enumerate(BIG):
        producer.send(prefix + "llm.calls", record(f"big-{n}", size), partition=0)
    sent = time.monotonic()
    for n in range(20):  # after the big ones, in their partition and the others
        producer.send(prefix + "llm.calls", call(f"after-{n}"), partition=n % 2)
    producer.flush()
    producer.close()

    assert up.wait_for("SELECT count() FROM llm_calls", 20, timeout=30) == 20
    stored_in = time.monotonic() - sent
    assert up.wait_for("SELECT count() FROM rejected_events", len(BIG), timeout=10) == len(BIG)
    rejected = (
        up.client()
        .query(
            'SELECT error_kind, length(raw), raw_size, startsWith(raw, \'{"event_id": "big-\') '
            "FROM rejected_events FINAL ORDER BY raw_size"
        )
        .result_rows
    )
    assert rejected == [("oversize", MAX_EVENT_BYTES, size, 1) for size in BIG]

    consumer = KafkaConsumer(
        prefix + "llm.calls.dlq", bootstrap_servers=broker, auto_offset_reset="earliest",
        consumer_timeout_ms=15_000, group_id=f"dlq-{uuid.uuid4().hex[:6]}", session_timeout_ms=6000,
    )  # fmt: skip
    dead = []
    for message in consumer:
        headers = {key: value.decode() for key, value in message.headers}
        dead.append((len(message.value), headers["truncated"], int(headers["original_size"]), headers["error_kind"]))
        if len(dead) == len(BIG):
            break
    consumer.close()
    assert sorted(dead) == [(MAX_EVENT_BYTES, "true", size, "oversize") for size in BIG]

    assert up.process is not None
    stopping = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    try:
        up.process.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("spendstream up did not stop within 15 s of SIGTERM")
    stopped_in = time.monotonic() - stopping
    print(
        f"\npoison records {BIG}: 20 later events stored {stored_in:.1f}s after they were sent; "
        f"rejected_events keeps {MAX_EVENT_BYTES} bytes of each; up stopped {stopped_in:.1f}s after SIGTERM"
    )
    assert stopped_in < 5


class DeadLetterTopic:
    """A stand-in for the dead-letter topic: records what it is sent; each send answers as ``answer`` says."""

    def __init__(self, answer: Callable[[bytes], object], max_request_size: int = 1_000_000) -> None:
        self.app = SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=max_request_size))
        self.sent: list[tuple[bytes, dict[str, bytes]]] = []
        self._answer = answer

    def get_topic_name(self) -> str:
        return "llm.calls.dlq"

    async def send(self, value: bytes, headers: dict[str, bytes]) -> asyncio.Future[object]:
        self.sent.append((value, headers))
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        outcome = self._answer(value)
        if isinstance(outcome, BaseException):
            ack.set_exception(outcome)
        elif outcome is not None:
            ack.set_result(outcome)
        return ack  # None: never answered, as a broker that is down


def rejected(size: int, offset: int = 0) -> Rejection:
    return Rejection("llm.calls", 0, offset, datetime.now(UTC), "schema", "bad", "", b"x" * size)


def test_a_dead_letter_copy_too_large_for_the_producer_is_cut_to_fit_with_its_size() -> None:
    dlq = DeadLetterTopic(lambda value: "ok", max_request_size=10_000)
    asyncio.run(publish_dead_letters(dlq, [rejected(50_000), rejected(100, offset=1)]))  # type: ignore[arg-type]
    (big, big_headers), (small, small_headers) = dlq.sent
    assert 9_000 < len(big) < 10_000 and big_headers["truncated"] == b"true"
    assert big_headers["original_size"] == b"50000"
    assert len(small) == 100 and "truncated" not in small_headers


@pytest.mark.parametrize(
    "answer",
    [lambda value: None, lambda value: RuntimeError("MessageSizeTooLargeError"), lambda value: 1 / 0],
    ids=["never answered", "refused", "send raises"],
)
def test_a_dead_letter_copy_that_fails_never_holds_the_stream(
    answer: Callable[[bytes], object], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agents, "DEAD_LETTER_WAIT", 0.5)
    dlq = DeadLetterTopic(answer)
    started = time.monotonic()
    asyncio.run(publish_dead_letters(dlq, [rejected(10), rejected(10, offset=1)]))  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert "kept in rejected_events, not sent again" in caplog.text
