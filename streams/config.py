"""What the stream processor needs to know, passed explicitly by whoever starts it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import topics
from schemas.usage_payload import UserIdAs


@dataclass(frozen=True)
class StreamConfig:
    """Settings of the Faust app.

    Args:
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
        data_dir: where Faust keeps its local state.
        app_id: the consumer group and the prefix of internal topics.
        partitions: partitions of the topics the app creates.
        batch_size: most events priced and written to ClickHouse at once.
        batch_seconds: longest an event waits for its batch to fill.
        session_timeout: Kafka consumer session timeout in seconds (short in the embedded mode).
        max_event_bytes: larger events are rejected.
        kafka_security: librdkafka-style security settings (``security.protocol``, ``sasl.*``, ``ssl.*``).
        user_id_key: the HMAC key of user ids (the SDK's): user ids not yet pseudonymous are
            pseudonymised, not refused (see ``streams.ingest.Ingestor``).
        require_feature: refuse calls without a feature tag instead of storing them as ``unattributed``.
        user_id_as: what a usage payload's ``userId`` is stored as (``schemas.usage_payload``).
        budget_sweep_seconds: how often the budget agent forgets the keys with no spend left in their
            periods, and removes their states from ``spendstream.budgets`` (a session long over).
    """

    bootstrap: str
    data_dir: Path
    app_id: str = "spendstream"
    partitions: int = 4
    batch_size: int = 10_000
    batch_seconds: float = 0.5
    session_timeout: float = 30.0
    max_event_bytes: int = 64 * 1024
    calls_topic: str = topics.CALLS
    dlq_topic: str = topics.CALLS_DLQ
    outcomes_topic: str = topics.OUTCOMES
    alerts_topic: str = topics.ALERTS
    budgets_topic: str = topics.BUDGETS
    budget_spend_topic: str = topics.BUDGET_SPEND
    detector_partials_topic: str = topics.DETECTOR_PARTIALS
    kafka_security: dict[str, Any] = field(default_factory=dict)
    user_id_key: bytes | None = field(default=None, repr=False)
    require_feature: bool = False
    user_id_as: UserIdAs = "user_id"
    budget_sweep_seconds: float = 600.0
