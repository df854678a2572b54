"""Validation and pricing of a batch of raw call events: the per-event path of the pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import NamedTuple, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from schemas.call_event import CallEvent
from schemas.call_event_decoder import TEXT_FIELDS, CleanCallEvent, decode_clean
from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS, CallRows, Rejection
from streams.pricing import CALLER_SOURCE, Pricer

MAX_EVENT_BYTES = 64 * 1024


class RawEvent(NamedTuple):
    """One Kafka record as received (a named tuple: made once per record, it must be cheap to make)."""

    value: bytes | None
    partition: int
    offset: int


@dataclass(slots=True)
class IngestResult:
    calls: CallRows = field(default_factory=CallRows)
    rejected: list[Rejection] = field(default_factory=list)
    unpriced_calls: dict[tuple[str, str, date, str], int] = field(default_factory=dict)
    """Calls stored without a price, per (provider, model, UTC day, data_mode)."""

    @classmethod
    def combined(cls, parts: list[IngestResult]) -> IngestResult:
        """One result for consecutive parts of a batch, in order (their Arrow columns joined, not copied)."""
        if len(parts) == 1:
            return parts[0]
        whole = cls()
        for part in parts:
            whole.calls.extend(part.calls)
            whole.rejected.extend(part.rejected)
            for where, calls in part.unpriced_calls.items():
                whole.unpriced_calls[where] = whole.unpriced_calls.get(where, 0) + calls
        tables = [part.calls.columns for part in parts if len(part.calls)]
        if tables and all(table is not None for table in tables):
            whole.calls.columns = pa.concat_tables(tables)
        return whole


def describe(exc: ValidationError) -> str:
    """A one-line, readable reason: every failing field and what is wrong with it."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "event"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (see schemas/jsonschema/call_event.schema.json)"
        elif error["type"] == "missing":
            message = "required field missing"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class Ingestor:
    """Turns raw records into priced ``llm_calls`` rows and readable rejections.

    Args:
        pricer: the price lookup (cached per model).
        topic: the source topic, recorded with each rejection.
        max_event_bytes: larger records are rejected unread.
    """

    def __init__(self, pricer: Pricer, topic: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._pricer = pricer
        self._topic = topic
        self._max_event_bytes = max_event_bytes

    def process(self, records: Iterable[RawEvent]) -> IngestResult:
        result = IngestResult()
        calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]] = []
        modelled: set[int] = set()  # positions in calls of the events the model validated
        for record in records:
            raw = record.value
            unread = unread_reason(raw, self._max_event_bytes)
            if unread is not None:
                result.rejected.append(rejection(self._topic, record, *unread))
                continue
            event: CallEvent | CleanCallEvent | None = decode_clean(raw)  # type: ignore[arg-type]  # bytes here
            if event is None:
                event = self._validate(record, result.rejected)
                if event is None:
                    continue
                modelled.add(len(calls))
            calls.append((event, record))
        self._price(calls, result)
        if not calls:
            return result
        columns = call_block.table(result.calls.rows)
        unsure = [i for i in _unclean_rows(columns) if i not in modelled]
        if unsure:  # rare: a padded or non-ASCII id or name; the model strips or refuses it
            calls = self._revalidate(calls, set(unsure), result.rejected)
            result.calls, result.unpriced_calls = CallRows(), {}
            self._price(calls, result)
            columns = call_block.table(result.calls.rows)
        result.calls.columns = columns
        return result

    def _validate(self, record: RawEvent, rejected: list[Rejection]) -> CallEvent | None:
        """The event as the model reads it; ``None`` when refused (added to ``rejected`` with why)."""
        try:
            return CallEvent.model_validate_json(record.value)  # type: ignore[arg-type]  # bytes here
        except ValidationError as exc:
            rejected.append(rejection(self._topic, record, error_kind(exc), describe(exc)))
            return None

    def _revalidate(
        self, calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]], positions: set[int], rejected: list[Rejection]
    ) -> list[tuple[CallEvent | CleanCallEvent, RawEvent]]:
        """``calls`` with those at ``positions`` validated again by the model; the refused ones left out."""
        kept: list[tuple[CallEvent | CleanCallEvent, RawEvent]] = []
        for i, (event, record) in enumerate(calls):
            if i in positions:
                modelled = self._validate(record, rejected)
                if modelled is None:
                    continue
                event = modelled
            kept.append((event, record))
        return kept

    def _price(self, calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]], result: IngestResult) -> None:
        """Price each call and add its row to ``result``; count the calls no price is known for."""
        unit_prices = self._pricer.unit_prices
        append = result.calls.append
        unpriced = result.unpriced_calls
        for event, record in calls:
            if event.cost_usd is not None:
                cost: float | None = event.cost_usd
                source, units = CALLER_SOURCE, None
            else:
                prices = unit_prices(event.provider, event.model, event.ts.date(), event.input_tokens)
                if prices is None:
                    cost, source, units = None, "", None
                    where = (event.provider, event.model, event.ts.date(), event.data_mode)
                    unpriced[where] = unpriced.get(where, 0) + 1
                else:
                    cost = prices.cost(
                        event.input_tokens,
                        event.output_tokens,
                        event.cache_read_tokens,
                        event.cache_write_tokens,
                    )
                    source = prices.source
                    units = prices.per_mtok
            append(
                event,
                cost_usd=cost,
                price_source=source,
                unit_prices=units,
                partition=record.partition,
                offset=record.offset,
            )


_TEXT_COLUMNS = tuple(LLM_CALL_COLUMNS.index(name) for name in TEXT_FIELDS)


def _unclean_rows(columns: pa.Table) -> list[int]:
    """Rows with an id or name the fast decoder cannot vouch for: not printable ASCII, or padded.

    One pass of Arrow kernels over the batch's columns, instead of checks per value in Python.
    """
    unclean = None
    for i in _TEXT_COLUMNS:
        column = columns.column(i)
        padded = pc.or_(pc.starts_with(column, " "), pc.ends_with(column, " "))
        bad = pc.fill_null(pc.or_(pc.invert(pc.ascii_is_printable(column)), padded), False)
        unclean = bad if unclean is None else pc.or_(unclean, bad)
    return cast(list[int], pc.indices_nonzero(unclean).to_pylist())


def error_kind(exc: ValidationError) -> str:
    return "malformed_json" if exc.errors()[0]["type"] == "json_invalid" else "schema"


def unread_reason(raw: bytes | None, max_event_bytes: int) -> tuple[str, str] | None:
    """Why a record is rejected without being parsed, or None when it can be read."""
    if raw is None:
        return "schema", "empty message (no value): send one JSON object per event"
    if len(raw) > max_event_bytes:
        return "oversize", f"message is {len(raw)} bytes, over the limit of {max_event_bytes}"
    return None


def rejection(topic: str, record: RawEvent, kind: str, reason: str) -> Rejection:
    return Rejection(
        topic=topic,
        partition=record.partition,
        offset=record.offset,
        received_at=datetime.now(UTC),
        error_kind=kind,
        reason=reason,
        event_id=_event_id_of(record.value) if kind != "oversize" else "",
        raw=record.value or b"",
    )


def _event_id_of(raw: bytes | None) -> str:
    """The event_id of a rejected event when it can be read, to help find it at the producer."""
    if not raw:
        return ""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        value = data.get("event_id", data.get("externalRequestId", ""))
        return str(value)[:256]
    return ""
