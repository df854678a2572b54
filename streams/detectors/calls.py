"""Stored calls as the detectors read them: Arrow columns counted per minute, and rows (budgets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from sinks.batch import LLM_CALL_COLUMNS

Row = tuple[Any, ...]

_INDEX = {column: i for i, column in enumerate(LLM_CALL_COLUMNS)}


def column(name: str) -> int:
    """The position of ``name`` in a call row."""
    return _INDEX[name]


EVENT_ID = column("event_id")
TS = column("ts")
DATA_MODE = column("data_mode")
COST_USD = column("cost_usd")
SOURCE_PARTITION = column("source_partition")

MINUTE = "minute"
"""The column :func:`in_time_order` adds: the call's event-time minute (epoch minutes)."""
AT = "at"
"""The column :func:`in_time_order` adds: the call's ``ts`` in epoch seconds."""
TOKENS = "tokens"
"""The column :func:`in_time_order` adds: the call's input and output tokens."""

Aggregation = tuple[str | list[str], str]
"""A pyarrow group-by aggregation: (column, function), ``([], "count_all")`` for a count."""


def in_time_order(calls: pa.Table) -> pa.Table:
    """Stored calls (``llm_calls`` columns) sorted by ``ts``, with :data:`AT`, :data:`MINUTE` and :data:`TOKENS` added.

    What every detector's ``prepare`` reads. The detectors count a batch with Arrow kernels (sorts and
    group-bys in C, which release the GIL) and go through the results in Python, not the calls.
    """
    ms = pc.cast(calls.column("ts"), pa.int64())
    order = pc.sort_indices(ms)  # stable: calls of the same millisecond keep their order
    ms = ms.take(order)
    ordered = calls.take(order)
    return (
        ordered.append_column(AT, pc.divide(pc.cast(ms, pa.float64()), 1000.0))
        .append_column(MINUTE, pc.divide(ms, 60_000))  # integer division; ts are after 1970
        .append_column(TOKENS, pc.add(ordered.column("input_tokens"), ordered.column("output_tokens")))
    )


def minutes(calls: pa.Table) -> list[int]:
    """The event-time minutes of calls made by :func:`in_time_order`, in order."""
    return cast(list[int], pc.unique(calls.column(MINUTE)).to_pylist())


def per_minute(calls: pa.Table, keys: Sequence[str], aggregations: Sequence[Aggregation]) -> dict[int, list[Row]]:
    """Per event-time minute, one tuple per combination of ``keys`` among ``calls`` (see :func:`in_time_order`).

    A tuple holds the keys' values, then the ``aggregations`` in the order given. ``first`` and ``min``
    follow time order: the group-by runs in one thread, in the calls' order.
    """
    if calls.num_rows == 0:
        return {}
    grouped = calls.group_by([MINUTE, *keys], use_threads=False).aggregate(list(aggregations))
    names = [*keys, *(f"{column}_{function}" if column else function for column, function in aggregations)]
    return _by_minute(grouped.column(MINUTE).to_pylist(), [grouped.column(name).to_pylist() for name in names])


def rows_per_minute(calls: pa.Table, columns: Sequence[str]) -> dict[int, list[Row]]:
    """Per event-time minute, the values of ``columns`` of each call, in time order (see :func:`in_time_order`)."""
    if calls.num_rows == 0:
        return {}
    return _by_minute(calls.column(MINUTE).to_pylist(), [calls.column(name).to_pylist() for name in columns])


def _by_minute(minute_of: list[int], columns: list[list[Any]]) -> dict[int, list[Row]]:
    found: dict[int, list[Row]] = {}
    for minute, row in zip(minute_of, zip(*columns, strict=True), strict=True):
        rows = found.get(minute)
        if rows is None:
            rows = found[minute] = []
        rows.append(row)
    return found
