"""Hierarchical attribution: the named queries of ``sql/queries/traces.sql``, run with their parameters.

The file is the documentation users read and the SQL ``spendstream trace`` runs: one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.exceptions import SpendstreamError
from sinks.migrations import SQL_DIR

TRACE_QUERIES = SQL_DIR / "queries" / "traces.sql"


class TraceNotFoundError(SpendstreamError):
    """No stored call has this trace id, or none of them is a root call."""


@cache
def named_queries() -> dict[str, str]:
    """The queries of ``traces.sql`` by their ``-- name:``."""
    queries = {}
    for block in TRACE_QUERIES.read_text().split("-- name: ")[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().rstrip(";")
    return queries


@dataclass(frozen=True, slots=True)
class TraceReport:
    tree: Sequence[Sequence[Any]]
    """depth, event_id, agent_id, kind, what, own_usd, total_usd, latency_ms; depth first, in time order."""
    by_depth: Sequence[Sequence[Any]]
    """depth, agent_id, n_calls, usd."""
    critical_path: Sequence[Sequence[Any]]
    """step, event_id, agent_id, what, latency_ms, ends_after_ms, request_ms."""
    unreached: tuple[int, float]
    """Calls of the trace no chain from the root reaches (their parent was never stored), and their cost."""

    @property
    def total_usd(self) -> float:
        return float(self.tree[0][6])

    @property
    def duration_ms(self) -> int:
        """From the first call's start to the last call's end."""
        return int(self.critical_path[0][6]) if self.critical_path else 0


def trace_report(client: Client, trace_id: str) -> TraceReport:
    """One request as a tree: cost of each call and of everything under it, per depth and agent, critical path.

    Raises:
        TraceNotFoundError: the trace has no stored root call.
    """
    queries = named_queries()

    def run(name: str) -> Sequence[Sequence[Any]]:
        return client.query(queries[name], parameters={"trace_id": trace_id}).result_rows

    tree = run("call_tree")
    if not tree:
        raise TraceNotFoundError(
            f"trace {trace_id!r} has no stored root call (a call of it with no parent_id): check the id with "
            "`spendstream sql \"SELECT trace_id, count() FROM llm_calls WHERE trace_id = '...' GROUP BY trace_id\"`"
        )
    calls, usd = run("unreached_calls")[0]
    return TraceReport(tree, run("cost_by_depth_and_agent"), run("critical_path"), (int(calls), float(usd)))


def agents_by_workflow(client: Client, data_mode: str = "real", days: int = 7) -> Sequence[Sequence[Any]]:
    """Per workflow (the root call's feature) and agent: calls, traces, USD, USD per trace, share."""
    return client.query(
        named_queries()["agents_by_workflow"], parameters={"data_mode": data_mode, "days": days}
    ).result_rows
