"""Publishing alerts raised outside the stream (the scheduled checks) to ``spendstream.alerts``."""

from __future__ import annotations

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
        errors: list[str] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is not None:
                errors.append(str(error))

        for alert in alerts:
            self._producer.produce(
                self._topic, alert.model_dump_json().encode(), alert.dedup_key.encode(), on_delivery=delivered
            )
        left = self._producer.flush(timeout)
        if left or errors:
            reason = errors[0] if errors else f"{left} not acknowledged within {timeout:.0f}s"
            raise AlertPublishError(
                f"cannot publish {len(alerts)} alert(s) to {self._topic} ({reason}): "
                "check that Kafka is reachable (SPENDSTREAM_KAFKA_BOOTSTRAP); they are raised again at the next check"
            )
