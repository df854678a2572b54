"""Creating spendstream's topics on whatever Kafka cluster it runs against."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas import topics
from spendstream.exceptions import StackError


def ensure_topics(
    bootstrap: str, partitions: int, security: dict[str, Any], prefix: str = "", timeout: float = 15.0
) -> None:
    """Create the contract's topics when missing (``spendstream.budgets`` compacted)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **security})
    wanted = [
        NewTopic(prefix + topics.CALLS, partitions),
        NewTopic(prefix + topics.CALLS_DLQ, partitions),
        NewTopic(prefix + topics.OUTCOMES, partitions),
        NewTopic(prefix + topics.ALERTS, 1),
        NewTopic(prefix + topics.BUDGETS, partitions, config={"cleanup.policy": "compact"}),
        NewTopic(prefix + topics.BUDGET_SPEND, partitions),
        NewTopic(prefix + topics.DETECTOR_PARTIALS, partitions),
    ]
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise StackError(f"Kafka at {bootstrap} did not answer ({exc})", "check SPENDSTREAM_KAFKA_BOOTSTRAP") from exc
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"cannot create topic {name} ({exc})", "create it by hand or grant CREATE") from exc


def require_kafka(bootstrap: str, security: dict[str, Any], timeout: float = 5.0) -> None:
    """Fail fast, and say what to do, when no Kafka answers at ``bootstrap``."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **security})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise StackError(
            f"no Kafka answered at {bootstrap} within {timeout:.0f}s",
            "start the stack with `spendstream up`, or set SPENDSTREAM_KAFKA_BOOTSTRAP",
        ) from exc
