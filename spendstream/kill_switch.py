"""The kill switch: a ``deny`` state on ``spendstream.budgets`` for everything, or for one agent, feature,
tool, prompt version, tenant or session (``schemas.budget.KILL_DIMENSIONS``).

Setting it publishes a state the SDK's guard applies before the next call; lifting it publishes a
tombstone, so compaction forgets it. What is set now is read from the topic as a guard reads it, and
from the record below (which a restarted worker has not published yet).
Both are recorded in ClickHouse first (``streams.kill_switches``): a worker publishes the record again
when it starts, so a restart of ``up`` (whose broker keeps the topic in memory) lifts nothing, and
brings back no kill that was lifted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from alerting.topic import send_acked
from producers import BudgetGuard
from schemas.budget import KILL_PREFIX, BudgetState, kill_scope
from spendstream.exceptions import StackError
from spendstream.settings import Settings
from streams.kill_switches import record, recorded

logger = logging.getLogger(__name__)


def kill_state(dimension: str | None, key: str | None, reason: str) -> BudgetState:
    scope = kill_scope(dimension, key)
    what = "every call" if dimension is None else f"calls of {dimension} {key}"
    return BudgetState(
        scope=scope, dimension=dimension or "*", key=key or "*", state="deny", action="deny",
        reason=f"kill switch on {what}: {reason}", period="kill", updated_at=datetime.now(UTC),
    )  # fmt: skip


def publish(bootstrap: str, topic: str, scope: str, value: bytes | None, security: dict[str, Any]) -> None:
    """Send one state (or a tombstone) and wait for the broker to take it.

    Raises:
        StackError: the broker did not confirm it.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **security})
    failure = send_acked(producer, topic, [(scope.encode(), value)], 15.0)
    if failure is not None:
        raise StackError(
            f"the kill switch was not stored on {topic} ({failure})",
            "check that Kafka is reachable (SPENDSTREAM_KAFKA_BOOTSTRAP) and try again",
        )


def active_kills(bootstrap: str, topic: str, security: dict[str, Any], timeout: float) -> list[BudgetState]:
    """The kill switches set now, as a guard reads them from ``topic`` to its end (by scope).

    Raises:
        StackError: the topic was not read to its end within ``timeout`` seconds.
    """
    guard = BudgetGuard(bootstrap, topic=topic, kafka_config=security)
    try:
        if not guard.wait_ready(timeout):
            why = guard.stats().last_error or "no answer"
            raise StackError(
                f"cannot read the kill switches on {topic} within {timeout:.0f}s ({why})",
                "check SPENDSTREAM_KAFKA_BOOTSTRAP, or start the stack with `spendstream up`",
            )
        states = guard.states()
    finally:
        guard.close()
    return sorted((state for state in states if state.scope.startswith(KILL_PREFIX)), key=lambda state: state.scope)


def recorded_kills(settings: Settings) -> list[BudgetState]:
    """The kill switches the ClickHouse record says are set (by scope); none when it cannot be read.

    Right after a restart of ``up`` the topic may not hold them yet: the worker publishes them again
    once it has joined its group.
    """
    from spendstream.clickhouse_target import admin_client

    try:
        client = admin_client(settings, database=settings.database)
        try:
            found = recorded(client, settings.database)
        finally:
            client.close()
    except Exception as exc:
        logger.info("the kill switches' record in ClickHouse cannot be read: %s", exc)
        return []
    return sorted((state for state in found.values() if state is not None), key=lambda state: state.scope)


def record_change(settings: Settings, scope: str, state: BudgetState | None) -> None:
    """Record a kill switch set (``state``) or lifted (None) in ClickHouse, as a command that writes (``migrate``).

    Raises:
        StackError: ClickHouse did not take it.
    """
    from spendstream.clickhouse_target import admin_client

    try:
        client = admin_client(settings, database=settings.database)
        try:
            record(client, settings.database, state, scope)
        finally:
            client.close()
    except StackError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise StackError(
            f"the kill switch {scope} was not recorded in ClickHouse ({first})",
            "check that `spendstream up` is running (or SPENDSTREAM_CLICKHOUSE_URL, migrated with "
            "`spendstream migrate`) and run the command again",
        ) from exc
