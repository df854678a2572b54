"""Publishing alerts raised outside the stream (the scheduled checks) to ``spendstream.alerts``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.alert import Alert
from schemas.exceptions import SpendstreamError


class AlertPublishError(SpendstreamError):
    """The broker did not confirm every alert; the caller keeps them and tries again later."""


class AlertTopic:
    """A producer for the alerts topic: idempotent, acks from all replicas, keyed by the incident."""

    def __init__(self, bootstrap: str, topic: str, security: dict[str, Any] | None = None) -> None:
        self._topic = topic
        self._config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", **(security or {})}
        self._producer: Producer | None = None  # created at the first publish, when the broker is up

    def publish(self, alerts: list[Alert], timeout: float = 15.0) -> None:
        """Send ``alerts`` and wait for the broker's acks.

        Raises:
            AlertPublishError: some alert was not confirmed within ``timeout``.
        """
        if self._producer is None:
            self._producer = Producer(self._config)
        messages = [(a.dedup_key.encode(), a.model_dump_json().encode()) for a in alerts]
        failure = send_acked(self._producer, self._topic, messages, timeout)
        if failure is not None:
            raise AlertPublishError(
                f"cannot publish {len(alerts)} alert(s) to {self._topic} ({failure}): "
                "check that Kafka is reachable (SPENDSTREAM_KAFKA_BOOTSTRAP); they are raised again at the next check"
            )


def send_acked(
    producer: Producer, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], timeout: float
) -> str | None:
    """Produce ``(key, value)`` messages and wait for the broker's acks; the first failure, or None."""
    errors: list[str] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            errors.append(str(error))

    for key, value in messages:
        producer.produce(topic, value, key, on_delivery=delivered)
    left = producer.flush(timeout)
    if errors:
        return errors[0]
    return f"{left} not acknowledged within {timeout:.0f}s" if left else None
