"""The kill switches' record: ``kill_switches`` in ClickHouse, published again when a worker starts.

``spendstream kill`` and ``unkill`` write a row there before they publish the state (or the tombstone)
on ``spendstream.budgets``, so the topic can be rebuilt: the embedded broker keeps it in memory, and a
restart of ``up`` would otherwise lift every kill switch. A worker, when it starts, publishes the
active kills and a tombstone for each lifted one; then reads the record again and publishes what
changed meanwhile, so an ``unkill`` running while it starts is not undone by its older read.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from clickhouse_connect.driver.client import Client

from schemas.budget import BudgetState
from sinks.sink import ClickHouseSink
from streams.backoff import read_until

logger = logging.getLogger(__name__)

TABLE = "kill_switches"


def record(client: Client, database: str, state: BudgetState | None, scope: str) -> None:
    """Record a kill switch set (``state``) or lifted (``None``) on ``scope``."""
    client.insert(
        f"`{database}`.{TABLE}",
        [[scope, 0 if state is None else 1, "" if state is None else state.model_dump_json()]],
        column_names=["scope", "active", "state"],
    )


def recorded(client: Client, database: str) -> dict[str, BudgetState | None]:
    """Every scope ever killed: its state when set now, None when lifted."""
    rows = client.query(
        f"SELECT scope, argMax(active, updated_at), argMax(state, updated_at) FROM `{database}`.{TABLE} GROUP BY scope"
    ).result_rows
    return {scope: BudgetState.model_validate_json(state) if active else None for scope, active, state in rows}


def register_kill_switches(
    app: faust.App,
    budgets: faust.TopicT,
    sink: ClickHouseSink,
    send: Callable[[faust.TopicT, list[Any]], Awaitable[None]],
    partitions: int,
) -> None:
    """At start, publish the recorded kill switches to ``budgets`` (retrying until ClickHouse answers)."""

    @app.task  # type: ignore[untyped-decorator]
    async def publish_kill_switches() -> None:
        published: dict[str, BudgetState | None] = {}
        while True:  # again until a read finds nothing new: an unkill written meanwhile wins
            found = await read_until(sink, recorded, f"read {TABLE}", "kill switches wait to be published")
            changed = {
                scope: state for scope, state in found.items() if scope not in published or published[scope] != state
            }
            if not changed:
                break
            await send(
                budgets,
                [
                    (
                        scope.encode(),
                        None if s is None else s.model_dump_json().encode(),
                        None,
                        partition_of(scope, partitions),
                    )
                    for scope, s in changed.items()
                ],
            )
            published.update(changed)
        active = sorted(scope for scope, state in published.items() if state is not None)
        logger.info(
            "kill switches published from ClickHouse: %d set (%s), %d lifted",
            len(active),
            ", ".join(active) or "none",
            len(published) - len(active),
        )


def partition_of(scope: str, partitions: int) -> int:
    """The partition ``spendstream kill`` and ``unkill`` write ``scope`` to: librdkafka's default partitioner
    (CRC-32 of the key), not Faust's (murmur2), so that a tombstone lands on the state it removes and a
    guard reading the partitions in any order ends with the latest of the two."""
    return zlib.crc32(scope.encode()) % partitions
