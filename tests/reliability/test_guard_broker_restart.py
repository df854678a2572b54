"""A guard that keeps running while its broker restarts empty reads what is published after the restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from producers import BudgetGuard
from schemas import topics
from spendstream.broker import EmbeddedBroker
from spendstream.kafka_admin import ensure_topics
from spendstream.kill_switch import kill_state, publish
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def kill(bootstrap: str, agent: str) -> None:
    state = kill_state("agent_id", agent, "loops on order_status")
    publish(bootstrap, topics.BUDGETS, state.scope, state.model_dump_json().encode(), {})


def test_a_running_guard_reads_kills_published_after_its_broker_restarted_empty(tmp_path: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(port, tmp_path / "broker.log")
    broker.start()
    ensure_topics(broker.bootstrap, 1, {})
    for agent in ("a1", "a2", "a3", "a4", "a5", "a6"):
        kill(broker.bootstrap, agent)
    guard = BudgetGuard(broker.bootstrap)
    try:
        assert guard.wait_ready(20)
        assert guard.check(agent_id="a6").action == "deny"

        broker.stop()  # in-memory: the next broker on this port starts with empty topics
        time.sleep(1)
        broker = EmbeddedBroker(port, tmp_path / "broker-2.log")
        broker.start()
        ensure_topics(broker.bootstrap, 1, {})
        # the new log's first record is the one that matters; it grows past the guard's old position
        for agent in ("coder", "b2", "b3", "b4", "b5", "b6", "b7", "b8"):
            kill(broker.bootstrap, agent)

        deadline = time.monotonic() + 30
        while guard.check(agent_id="coder").action != "deny" and time.monotonic() < deadline:
            time.sleep(0.1)
        decision = guard.check(agent_id="coder")
        assert decision.action == "deny", f"the guard missed a kill published after the restart: {guard.stats()}"
        assert "loops on order_status" in decision.reason
        assert guard.check(agent_id="b8").action == "deny"
        assert guard.check(agent_id="a1").action == "deny"  # what it read before still holds
    finally:
        guard.close()
        broker.stop()
