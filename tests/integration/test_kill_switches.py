"""The kill switches' record in ClickHouse: a scope's latest kill or unkill wins."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from sinks.migrations import migrate
from spendstream.kill_switch import kill_state
from streams.kill_switches import record, recorded

pytestmark = pytest.mark.integration


def test_the_latest_change_of_each_scope_wins(ch: Client, database: str) -> None:
    migrate(ch, database)
    coder, everything = kill_state("agent_id", "coder", "loops"), kill_state(None, None, "incident 42")
    record(ch, database, coder, coder.scope)
    record(ch, database, everything, everything.scope)
    record(ch, database, None, coder.scope)
    assert recorded(ch, database) == {"kill:agent_id=coder": None, "kill:*": everything}
    again = kill_state("agent_id", "coder", "loops again")
    record(ch, database, again, again.scope)
    record(ch, database, None, everything.scope)
    assert recorded(ch, database) == {"kill:agent_id=coder": again, "kill:*": None}
