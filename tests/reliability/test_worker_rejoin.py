"""A worker killed with SIGKILL and started again removes its stale member and rejoins its group alone.

The killed worker cannot leave its consumer group: its member stays until its session expires, and
a restarted worker used to join beside it, then rebalance again once it expired. The restarted
worker now removes that member before it joins, so the group it joins holds only itself; and no
event is lost or stored twice across the kill.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.admin import DescribeGroupsRequest

from producers import Emitter
from tests.conftest import UpProcess

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PER_PHASE = 300
PARTITIONS = 4


def emit(emitter: Emitter, phase: str) -> None:
    for n in range(PER_PHASE):
        event = {
            "event_id": f"{phase}-{n}-{uuid.uuid4().hex[:8]}", "ts": 1_764_800_000_000 + n, "provider": "openai",
            "model": "gpt-4o-mini", "feature": "rejoin.test", "input_tokens": 1000, "output_tokens": 100,
            "data_mode": "test",
        }  # fmt: skip
        emitter.emit_raw(orjson.dumps(event), f"s{n % 11}")
    assert emitter.flush(30) == 0, "the broker did not take the events"


def members(bootstrap: str, group: str) -> set[str]:
    """The member ids of ``group`` (DescribeGroups; librdkafka's describe lists none from tansu)."""

    async def describe() -> set[str]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        try:
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            (described,) = (await client.send(node, DescribeGroupsRequest([group]))).groups
            return {member[0] for member in described[5]}
        finally:
            await client.close()

    return asyncio.run(describe())


def first_assignment(log: str, topic: str) -> str:
    """The partitions of ``topic`` in the first assignment the worker logged (``{0-3}``)."""
    table = log[log.index("Setting newly assigned partitions") :]
    found = re.search(rf"\| {re.escape(topic)} +\| (\S+) +\|", table[: table.index(" for group ")])
    return found.group(1) if found else "{}"


def test_a_killed_worker_is_replaced_in_its_group_at_once_and_stores_every_event_once(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    prefix = f"j{uuid.uuid4().hex[:8]}."
    group = prefix + "spendstream"
    up = start_up(home, SPENDSTREAM_TOPIC_PREFIX=prefix, SPENDSTREAM_PARTITIONS=str(PARTITIONS))
    emitter = Emitter(broker, topic=prefix + "llm.calls")
    query = "SELECT count() FROM llm_calls WHERE feature = 'rejoin.test'"
    try:
        emit(emitter, "before")
        assert up.wait_for(query, PER_PHASE, timeout=90) == PER_PHASE, up.log.read_text()[-3000:]
        (killed,) = members(broker, group)
        restarted_at = len(up.log.read_text())

        emit(emitter, "killed")  # acknowledged by the broker, some not stored or committed when the worker dies
        up.kill()
        again = start_up(home, SPENDSTREAM_TOPIC_PREFIX=prefix, SPENDSTREAM_PARTITIONS=str(PARTITIONS))
        emit(emitter, "after")

        # the first time the restarted worker's member shows in the group, the killed one is gone
        deadline = time.monotonic() + 60
        while not (seen := members(broker, group)) - {killed} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen - {killed}, f"the restarted worker never joined: {again.log.read_text()[-3000:]}"
        assert killed not in seen, f"the killed worker's member {killed} was still in the group beside the new one"

        total = 3 * PER_PHASE
        stored = again.wait_for(query, total, timeout=90)
        distinct = again.scalar("SELECT uniqExact(event_id) FROM llm_calls WHERE feature = 'rejoin.test'")
        log = again.log.read_text()[restarted_at:]
        print(f"\nworker killed and restarted: stale member removed; {stored} of {total} stored, {distinct} distinct")
        assert f"removed its stale member {killed} from group {group}" in log, log[-3000:]
        # it takes every partition at its first assignment and stays the group's only member
        assert first_assignment(log, prefix + "llm.calls") == f"{{0-{PARTITIONS - 1}}}", log[-3000:]
        assert len(members(broker, group)) == 1
        assert (stored, distinct) == (total, total)
    finally:
        emitter.close(timeout=10)
