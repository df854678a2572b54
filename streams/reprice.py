"""Repricing stored calls with the current price table and overrides, rollups included.

``llm_calls`` keeps every token count, so a corrected price can fix history. Materialized views
only see inserts, and the rollups are sums, so the rollups are corrected by adding the difference:
the changed calls, with ``cost_usd`` replaced by ``new - old``, go through each rollup view's own
SELECT (read from ``system.tables``) into its table; the hour and day rollups follow the minute
rollup by themselves. A call that becomes priced also leaves ``unpriced_calls``: its UInt64 sums
wrap modulo 2**64, so adding ``0 - n`` takes n away. Then ``llm_calls`` itself is updated in place
(a mutation, waited for).

Calls whose cost the caller stated are left alone.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.migrations import view_definition
from streams.pricing import CALLER_SOURCE, Pricer

logger = logging.getLogger(__name__)

_READ_COLUMNS = (
    "event_id", "ts", "provider", "model", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_usd", "priced", "price_source", "input_price_per_mtok",
    "output_price_per_mtok", "cache_read_price_per_mtok", "cache_write_price_per_mtok",
)  # fmt: skip
_NEW_COLUMNS = (
    "event_id", "cost_usd", "priced", "price_source", "input_price_per_mtok", "output_price_per_mtok",
    "cache_read_price_per_mtok", "cache_write_price_per_mtok",
)  # fmt: skip
_COST_EPSILON = 1e-12


@dataclass(frozen=True, slots=True)
class RepriceResult:
    examined: int
    """Calls looked at (from ``since``, of ``model`` if given, not caller-priced)."""
    changed: int
    """Calls whose cost, priced flag, unit prices or price source changed."""
    delta_usd: float
    """New total minus old total of the changed calls."""
    newly_priced: int
    """Calls that had no price and have one now."""


def reprice(
    client: Client, database: str, pricer: Pricer, since: date, model: str | None = None, *, dry_run: bool = False
) -> RepriceResult:
    """Recompute costs of calls from ``since`` (UTC day) on, and correct every rollup by the difference."""
    db = f"`{database}`"
    where = "ts >= toDateTime64(%(since)s, 3, 'UTC') AND price_source != %(caller)s"
    parameters: dict[str, Any] = {"since": since.isoformat(), "caller": CALLER_SOURCE}
    if model is not None:
        where += " AND model = %(model)s"
        parameters["model"] = model
    examined, changes, cost_deltas, newly_priced = 0, [], [], 0
    with client.query_row_block_stream(
        f"SELECT {', '.join(_READ_COLUMNS)} FROM {db}.llm_calls FINAL WHERE {where}", parameters=parameters
    ) as blocks:
        for block in blocks:
            for row in block:
                examined += 1
                change = _new_price(pricer, row)
                if change is not None:
                    changes.append(change)
                    old_cost = row[8] or 0.0
                    cost_deltas.append((change[1] or 0.0) - old_cost)
                    newly_priced += change[2] == 1 and row[9] == 0
    # summed exactly: the rows come in no fixed order, and a dry run must say what the run will do
    result = RepriceResult(examined, len(changes), math.fsum(cost_deltas), newly_priced)
    if dry_run or not changes:
        return result

    suffix = uuid.uuid4().hex[:12]
    new_prices = f"{db}.`_reprice_new_{suffix}`"
    deltas = f"{db}.`_reprice_delta_{suffix}`"
    client.command(
        f"CREATE TABLE {new_prices} (event_id String, cost_usd Nullable(Float64), priced UInt8, price_source String, "
        "input_price_per_mtok Float64, output_price_per_mtok Float64, cache_read_price_per_mtok Float64, "
        "cache_write_price_per_mtok Float64) ENGINE = Join(ANY, LEFT, event_id)"
    )
    client.command(f"CREATE TABLE {deltas} AS {db}.llm_calls ENGINE = Memory")
    try:
        client.insert(f"_reprice_new_{suffix}", changes, column_names=list(_NEW_COLUMNS), database=database)
        join = f"'{database}._reprice_new_{suffix}'"
        # each changed call once, with cost_usd the difference; priced = 0 marks a call whose
        # unpriced status flips, price_source which way ('+': becomes unpriced, '-': becomes priced)
        client.command(
            f"INSERT INTO {deltas} SELECT * REPLACE ("
            f"ifNull(joinGet({join}, 'cost_usd', event_id), 0) - ifNull(cost_usd, 0) AS cost_usd, "
            f"if(joinGet({join}, 'priced', event_id) = priced, 1, 0) AS priced, "
            f"if(joinGet({join}, 'priced', event_id) < priced, '+', '-') AS price_source) "
            f"FROM {db}.llm_calls FINAL WHERE {where} AND event_id IN (SELECT event_id FROM {new_prices})",
            parameters=parameters,
        )
        _add_to_rollups(client, database, deltas)
        client.command(
            f"ALTER TABLE {db}.llm_calls UPDATE "
            + ", ".join(f"{c} = joinGet({join}, '{c}', event_id)" for c in _NEW_COLUMNS[1:])
            + f" WHERE {where} AND event_id IN (SELECT event_id FROM {new_prices})",
            parameters=parameters,
            settings={"mutations_sync": 2, "allow_nondeterministic_mutations": 1},
        )
    finally:
        client.command(f"DROP TABLE IF EXISTS {new_prices}")
        client.command(f"DROP TABLE IF EXISTS {deltas}")
    return result


def _new_price(pricer: Pricer, row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The row of new prices for a stored call, or None when nothing changes."""
    event_id, ts, provider, model, inp, out, cache_read, cache_write, cost, priced, source = row[:11]
    prices = pricer.unit_prices(provider, model, ts.date(), inp)
    if prices is None:
        new: tuple[Any, ...] = (event_id, None, 0, "", 0.0, 0.0, 0.0, 0.0)
    else:
        new = (event_id, prices.cost(inp, out, cache_read, cache_write), 1, prices.source, *prices.per_mtok)
    old = (event_id, cost, priced, source, *row[11:15])
    same_cost = (cost is None and new[1] is None) or (
        cost is not None and new[1] is not None and abs(cost - new[1]) <= _COST_EPSILON
    )
    if same_cost and old[2:] == new[2:]:
        return None
    return new


def _view_select(client: Client, database: str, view: str) -> str:
    definition = view_definition(client, database, view)
    if definition is None:
        raise LookupError(f"materialized view {database}.{view} is missing: run `spendstream migrate`")
    return definition[0]


def _from(select: str, database: str, source: str) -> str:
    for spelling in (f"FROM {database}.llm_calls", f"FROM `{database}`.llm_calls", "FROM llm_calls"):
        if spelling in select:
            return select.replace(spelling, f"FROM {source}", 1)
    raise LookupError(f"cannot find llm_calls in the view's SELECT: {select[:200]}")


def _add_to_rollups(client: Client, database: str, deltas: str) -> None:
    db = f"`{database}`"
    minute = _view_select(client, database, "rollup_minute_mv")
    for direction, unpriced in (("-", "toUInt64(0) - unpriced_calls"), ("+", "unpriced_calls")):
        source = f"(SELECT * FROM {deltas} WHERE price_source = '{direction}')"
        client.command(
            f"INSERT INTO {db}.rollup_minute (bucket, data_mode, dimension, key, cost_usd, unpriced_calls) "
            f"SELECT bucket, data_mode, dimension, key, cost_usd, {unpriced} "
            f"FROM ({_from(minute, database, source)})"
        )
    trace = _view_select(client, database, "trace_rollup_mv")
    client.command(
        f"INSERT INTO {db}.trace_rollup (trace_id, data_mode, root_event_id, root_feature, tenant_id, session_id, "
        "first_ts, last_end_ts, cost_usd, agents, features) "
        "SELECT trace_id, data_mode, root_event_id, root_feature, tenant_id, session_id, first_ts, last_end_ts, "
        f"cost_usd, agents, features FROM ({_from(trace, database, deltas)})"
    )
