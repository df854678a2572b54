"""The emitter: sends call events to Kafka without ever blocking or crashing the host application."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from producers._exceptions import EmitterClosedError
from producers._kafka_log import quiet_kafka_logs
from schemas import topics
from schemas.call_event import CallEvent

logger = logging.getLogger("spendstream.producers")


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """What became of the events given to :meth:`Emitter.emit`.

    ``sent == delivered + failed + dropped + in_flight``: nothing is lost without being counted.
    """

    sent: int
    delivered: int
    failed: int
    """Refused by the broker, or not acknowledged within ``delivery_timeout_ms`` or by ``close()``."""
    dropped: int
    """Not queued because the local queue was full (the broker slow or down for a long time)."""
    in_flight: int
    outages: int
    """Times no broker could be reached (stopped, restarted, failed over); events wait in the local queue meanwhile."""
    reconnects: int
    """Outages that ended: events were delivered again after them. ``outages > reconnects``: no broker now."""
    last_error: str
    """The latest error of the Kafka client or of a delivery, ``""`` when there was none."""


class Emitter:
    """A Kafka producer for call events: ``acks=all``, one request in flight per broker, compressed, batched.

    ``emit()`` never blocks and never raises on a slow or unreachable broker: events wait in a
    bounded local queue; what cannot be delivered is counted in :meth:`stats`, logged, and, when
    ``spill_path`` is given, appended there as JSON lines for ``spendstream emit FILE``. ``close()``
    (also run at exit) flushes what is queued.

    A broker that restarts empty or fails over is written to as soon as it answers. The producer is
    not idempotent: an idempotent one never delivers again to a broker that forgot its producer id
    (librdkafka bumps its epoch in a loop against a restarted in-memory broker), and the pipeline
    drops a redelivered event by its ``event_id`` anyway. With one request in flight a retry cannot
    overtake the batch after it, so a session's events stay in the order they were emitted.

    Args:
        bootstrap: Kafka bootstrap servers.
        topic: the topic of call events.
        max_queued: the most events waiting locally; more are dropped and counted.
        spill_path: where undeliverable events are appended, to be replayed later.
        kafka_config: more librdkafka settings (security, client.id, ...); an ``error_cb`` in it is
            called too, after the emitter has counted the error.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.CALLS,
        max_queued: int = 100_000,
        delivery_timeout_ms: int = 120_000,
        spill_path: Path | str | None = None,
        kafka_config: dict[str, Any] | None = None,
    ) -> None:
        self._topic = topic
        self._spill_path = Path(spill_path) if spill_path is not None else None
        self._app_error_cb = (kafka_config or {}).get("error_cb")
        self._config = quiet_kafka_logs(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": False,
                "max.in.flight.requests.per.connection": 1,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": max_queued,
                "delivery.timeout.ms": delivery_timeout_ms,
                **(kafka_config or {}),
                "error_cb": self._on_error,
            }
        )
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._sent = self._delivered = self._failed = self._dropped = 0
        self._outages = self._reconnects = 0
        self._down_since: float | None = None
        self._last_error = ""
        self._closed = False

    def start(self) -> None:
        """Create the Kafka producer (``emit()`` does it on first use)."""
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self._config)
                atexit.register(self.close)

    def emit(self, event: CallEvent) -> None:
        """Queue one event for delivery; returns at once."""
        self.emit_raw(orjson.dumps(event.model_dump(mode="json", exclude_none=True)), event.partition_key)

    def emit_raw(self, value: bytes, key: str | None = None) -> None:
        """Queue bytes already validated as a call event."""
        if self._closed:
            raise EmitterClosedError()
        if self._producer is None:
            self.start()
        assert self._producer is not None
        self._sent += 1
        try:
            self._producer.produce(self._topic, value, key.encode() if key else None, on_delivery=self._on_delivery)
        except BufferError:
            self._dropped += 1
            self._spill(value, "local queue full")
        self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds for queued events; return how many are still in flight."""
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))

    def stats(self) -> EmitterStats:
        """What became of the events so far (delivery reports that arrived are counted first)."""
        if self._producer is not None:
            self._producer.poll(0)
        in_flight = self._sent - self._delivered - self._failed - self._dropped
        return EmitterStats(
            self._sent, self._delivered, self._failed, self._dropped, in_flight,
            self._outages, self._reconnects, self._last_error,
        )  # fmt: skip

    def close(self, timeout: float = 10.0) -> EmitterStats:
        """Flush, then stop; events not acknowledged after ``timeout`` count as failed, and are spilled if configured.

        An event sent but not acknowledged may have been written all the same: replayed from the spill
        file it is a duplicate, which the pipeline drops by its ``event_id``.
        """
        if self._closed:
            return self.stats()
        left = self.flush(timeout)
        self._closed = True
        if left and self._producer is not None:
            # librdkafka would drop them at exit: purged, each gets a delivery report that spills it
            self._producer.purge()
            self._producer.flush(1.0)
        stats = self.stats()
        self._producer = None  # the client is destroyed: it stops reconnecting to a broker that is gone
        if stats.failed or stats.dropped or stats.in_flight:
            logger.error(
                "spendstream emitter closed with %d events undelivered (%d failed, %d dropped)%s",
                stats.failed + stats.dropped + stats.in_flight, stats.failed, stats.dropped,
                f"; spilled to {self._spill_path}" if self._spill_path else "",
            )  # fmt: skip
        return stats

    def _on_error(self, error: KafkaError) -> None:
        """Count outages for ``stats()``, then call the application's own ``error_cb`` (``kafka_config``), if any."""
        self._last_error = error.str()
        if self._app_error_cb is not None:
            self._app_error_cb(error)
        if error.code() == KafkaError._ALL_BROKERS_DOWN and self._down_since is None:
            self._down_since = time.monotonic()
            self._outages += 1
            logger.warning(
                "spendstream emitter: no Kafka broker answers at %s; events wait in the local queue for it "
                "(up to delivery.timeout.ms, %d ms, then they count as failed)",
                self._config["bootstrap.servers"], self._config["delivery.timeout.ms"],
            )  # fmt: skip

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self._delivered += 1
            if self._down_since is not None:
                logger.info(
                    "spendstream emitter: delivering again after %.1fs without a broker",
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
                self._reconnects += 1
            return
        self._failed += 1
        self._last_error = error.str()
        self._spill(message.value() or b"", str(error))

    def _spill(self, value: bytes, reason: str) -> None:
        if self._spill_path is None:
            logger.warning("spendstream event not delivered (%s); counted in Emitter.stats()", reason)
            return
        with self._lock, self._spill_path.open("ab") as spill:
            spill.write(value + b"\n")
