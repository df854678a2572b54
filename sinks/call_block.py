"""A batch of ``llm_calls`` rows as one Arrow block: what the sink inserts, and what its journal keeps.

The rows are turned into columns once (:func:`table`, the only step that works per value in Python)
and written in the Arrow IPC file format (:func:`encode`), which ClickHouse and chDB read natively
(``FORMAT Arrow``): the insert's own work happens in C, and the very same bytes are what an
interrupted insert is retried with.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pyarrow as pa

from sinks.batch import LLM_CALL_COLUMNS

_TEXT = pa.string()
_TOKENS = pa.uint64()
_PRICE = pa.float64()

SCHEMA = pa.schema([
    ("event_id", _TEXT), ("ts", pa.timestamp("ms", tz="UTC")), ("provider", _TEXT), ("model", _TEXT),
    ("kind", _TEXT), ("tool_name", _TEXT),
    ("feature", _TEXT), ("prompt_version", _TEXT), ("agent_id", _TEXT), ("task_id", _TEXT),
    ("session_id", _TEXT), ("trace_id", _TEXT), ("parent_id", _TEXT),
    ("user_id", _TEXT), ("tenant_id", _TEXT), ("team", _TEXT), ("environment", _TEXT),
    ("data_mode", _TEXT), ("tags", pa.map_(_TEXT, _TEXT)), ("prompt_hash", _TEXT), ("args_hash", _TEXT),
    ("input_tokens", _TOKENS), ("output_tokens", _TOKENS), ("cache_read_tokens", _TOKENS),
    ("cache_write_tokens", _TOKENS), ("reasoning_tokens", _TOKENS),
    ("latency_ms", pa.float32()), ("ttft_ms", pa.float32()), ("status", _TEXT), ("error_type", _TEXT),
    ("attempt", pa.uint16()),
    ("cost_usd", pa.float64()), ("priced", pa.uint8()), ("price_source", _TEXT),
    ("input_price_per_mtok", _PRICE), ("output_price_per_mtok", _PRICE), ("cache_read_price_per_mtok", _PRICE),
    ("cache_write_price_per_mtok", _PRICE),
    ("source_partition", pa.uint32()), ("source_offset", pa.uint64()),
])  # fmt: skip
"""The Arrow types of the ``llm_calls`` columns the sink writes, in :data:`LLM_CALL_COLUMNS` order."""

if tuple(SCHEMA.names) != LLM_CALL_COLUMNS:  # pragma: no cover - a mistake caught at import
    raise RuntimeError("sinks.call_block.SCHEMA must list LLM_CALL_COLUMNS in the same order")

_TAGS = LLM_CALL_COLUMNS.index("tags")
_TS = LLM_CALL_COLUMNS.index("ts")


def table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """The rows (in :data:`LLM_CALL_COLUMNS` order) as Arrow columns."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, SCHEMA, strict=True)], schema=SCHEMA
    )


def encode(calls: pa.Table) -> bytes:
    """A table made by :func:`table` as an Arrow IPC file: what is inserted, and what the journal keeps."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_table(calls)
    return bytes(sink.getvalue())


def read(block: bytes) -> pa.Table:
    """The table of a block made by :func:`encode` (a journal's leftover, replayed after a crash).

    A block of an earlier layout (left by the version before a column was added, see
    :func:`is_current`) is read in this one: the text columns it lacks are empty, as ClickHouse
    stores them for the calls it holds from before.

    Raises:
        ValueError: the block lacks a column that is not text, or holds one this layout does not know
            (a block of a later version).
    """
    calls = pa.ipc.open_file(pa.py_buffer(block)).read_all()
    if calls.schema.equals(SCHEMA):
        return calls
    unknown = sorted(set(calls.schema.names) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"a block with columns {unknown}, unknown to this version: it was written by a later one")
    columns = []
    for column in SCHEMA:
        if column.name in calls.schema.names:
            columns.append(calls.column(column.name).cast(column.type))
        elif column.type == _TEXT:
            columns.append(pa.nulls(calls.num_rows, _TEXT).fill_null(""))
        else:
            raise ValueError(f"a block without the column {column.name}, which has no empty value")
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def is_current(block: bytes) -> bool:
    """Whether a block made by :func:`encode` has this version's layout (:func:`read` reads older ones)."""
    return bool(pa.ipc.open_file(pa.py_buffer(block)).schema.equals(SCHEMA))


def rows(calls: pa.Table) -> list[tuple[Any, ...]]:
    """The rows of a table made by :func:`table` or :func:`read`, as :func:`table` took them."""
    columns = [column.to_pylist() for column in calls.columns]
    columns[_TAGS] = [dict(pairs) for pairs in columns[_TAGS]]
    columns[_TS] = [ts.replace(tzinfo=UTC) for ts in columns[_TS]]
    return list(zip(*columns, strict=True))
