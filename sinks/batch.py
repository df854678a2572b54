"""Columnar buffers of rows for the ClickHouse tables the sink writes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pyarrow as pa
from msgspec.structs import astuple

from schemas.alert import Alert
from schemas.call_event import CallEvent
from schemas.call_event_decoder import ROW_FIELDS, CleanCallEvent
from schemas.outcome_event import OutcomeEvent

LLM_CALL_COLUMNS: tuple[str, ...] = (
    "event_id", "ts", "provider", "model", "kind", "tool_name",
    "feature", "prompt_version", "agent_id", "task_id", "session_id", "trace_id", "parent_id",
    "user_id", "tenant_id", "team", "environment", "data_mode", "tags", "prompt_hash", "args_hash",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "latency_ms", "ttft_ms", "status", "error_type", "attempt",
    "cost_usd", "priced", "price_source",
    "input_price_per_mtok", "output_price_per_mtok", "cache_read_price_per_mtok", "cache_write_price_per_mtok",
    "source_partition", "source_offset",
)  # fmt: skip

REJECTED_COLUMNS: tuple[str, ...] = (
    "topic", "partition", "offset", "received_at", "error_kind", "reason", "event_id", "raw", "raw_size", "raw_hash",
)  # fmt: skip

OUTCOME_COLUMNS: tuple[str, ...] = (
    "event_id", "ts", "outcome", "value", "trace_id", "session_id", "feature", "tenant_id", "data_mode",
    "source_partition", "source_offset",
)  # fmt: skip

ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id", "ts", "kind", "severity", "dimension", "key", "value", "baseline", "threshold", "window",
    "message", "query", "dedup_key", "data_mode", "status",
)  # fmt: skip

NO_PRICES = (0.0, 0.0, 0.0, 0.0)

_ROW_HEAD = CleanCallEvent.__struct_fields__[:ROW_FIELDS]
if LLM_CALL_COLUMNS[:ROW_FIELDS] != _ROW_HEAD:  # pragma: no cover - a mistake caught at import
    raise RuntimeError("schemas.call_event_decoder.CleanCallEvent must list the llm_calls columns in their order")


@dataclass(slots=True)
class CallRows:
    """Priced calls as rows of ``llm_calls`` values (in :data:`LLM_CALL_COLUMNS` order).

    Kept as tuples, one per call, and turned into columns once per batch (``sinks.call_block``):
    far cheaper per call than appending to 40 column lists.
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    columns: pa.Table | None = None
    """The same rows as Arrow columns (``sinks.call_block.table``), when whoever made them built those too."""

    def __len__(self) -> int:
        return len(self.rows)

    def append(
        self,
        event: CallEvent | CleanCallEvent,
        *,
        cost_usd: float | None,
        price_source: str,
        unit_prices: tuple[float, float, float, float] | None,
        partition: int,
        offset: int,
    ) -> None:
        """Add one call; ``unit_prices`` are USD per million input, output, cache-read, cache-write tokens."""
        priced = unit_prices if unit_prices is not None else NO_PRICES
        if isinstance(event, CleanCallEvent):  # its first fields are the row's first columns
            head = astuple(event)[:ROW_FIELDS]
        else:
            head = (
                event.event_id, event.ts, event.provider, event.model, event.kind, event.tool_name or "",
                event.feature_or_unattributed, event.prompt_version or "", event.agent_id or "",
                event.task_id or "", event.session_id or "", event.trace_id or "", event.parent_id or "",
                event.user_id or "", event.tenant_id or "", event.team or "", event.environment,
                event.data_mode, event.tags, event.prompt_hash or "", event.args_hash or "",
                event.input_tokens, event.output_tokens, event.cache_read_tokens, event.cache_write_tokens,
                event.reasoning_tokens,
                event.latency_ms, event.ttft_ms, event.status, event.error_type or "", event.attempt,
            )  # fmt: skip
        self.rows.append((
            *head, cost_usd, 0 if cost_usd is None else 1, price_source,
            priced[0], priced[1], priced[2], priced[3],
            partition, offset,
        ))  # fmt: skip

    def event_ids(self) -> list[str]:
        return [row[0] for row in self.rows]

    def timestamps(self) -> list[datetime]:
        return [row[1] for row in self.rows]

    def extend(self, other: CallRows) -> None:
        self.rows.extend(other.rows)

    def select(self, keep: list[int]) -> CallRows:
        """The rows at the positions ``keep``, in that order."""
        rows = self.rows
        return CallRows([rows[i] for i in keep])


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that failed validation, as it arrived (or its first bytes, see :meth:`cut`), and why."""

    topic: str
    partition: int
    offset: int
    received_at: datetime
    error_kind: str
    reason: str
    event_id: str
    raw: bytes
    raw_size: int | None = None
    """How many bytes the record had, when ``raw`` holds only its first ones; None: ``raw`` is all of it."""

    @property
    def size(self) -> int:
        """The record's length in bytes, whether ``raw`` holds all of it or not."""
        return len(self.raw) if self.raw_size is None else self.raw_size

    @property
    def truncated(self) -> bool:
        return self.size > len(self.raw)

    def cut(self, limit: int) -> Rejection:
        """This rejection with at most the first ``limit`` bytes of its record (its size kept)."""
        if len(self.raw) <= limit:
            return self
        return replace(self, raw=self.raw[:limit], raw_size=self.size)

    def row(self) -> tuple[Any, ...]:
        """Its ``rejected_events`` row (in :data:`REJECTED_COLUMNS` order)."""
        return (
            self.topic, self.partition, self.offset, self.received_at, self.error_kind, self.reason,
            self.event_id, self.raw, self.size, self.raw_hash(),
        )  # fmt: skip

    def raw_hash(self) -> int:
        """A 64-bit hash of the bytes kept and the record's size, part of the row's key in ``rejected_events``.

        With it, a record delivered again (same source position, same bytes) replaces its row, and
        another record at the same position (a broker that started its offsets again) has its own.
        """
        digest = hashlib.blake2b(self.raw, digest_size=8)
        digest.update(self.size.to_bytes(8, "little"))
        return int.from_bytes(digest.digest(), "little")


def outcome_row(event: OutcomeEvent, partition: int, offset: int) -> tuple[Any, ...]:
    """One ``outcomes`` row (in :data:`OUTCOME_COLUMNS` order)."""
    return (
        event.event_id, event.ts, event.outcome, event.value, event.trace_id or "", event.session_id or "",
        event.feature or "", event.tenant_id or "", event.data_mode, partition, offset,
    )  # fmt: skip


def alert_row(alert: Alert) -> tuple[Any, ...]:
    """One ``alerts`` row (in :data:`ALERT_COLUMNS` order)."""
    return tuple(getattr(alert, column) for column in ALERT_COLUMNS)
