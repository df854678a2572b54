"""Validation of outcome events (``llm.outcomes``) into ``outcomes`` rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas.outcome_event import OutcomeEvent
from sinks.batch import Rejection, outcome_row
from streams.ingest import RawEvent, describe, error_kind, rejection, unread_reason


@dataclass(slots=True)
class OutcomeResult:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class OutcomeIngestor:
    """Turns raw outcome records into ``outcomes`` rows and readable rejections."""

    def __init__(self, topic: str, max_event_bytes: int) -> None:
        self._topic = topic
        self._max_event_bytes = max_event_bytes

    def process(self, records: Iterable[RawEvent]) -> OutcomeResult:
        result = OutcomeResult()
        for record in records:
            unread = unread_reason(record.value, self._max_event_bytes)
            if unread is not None:
                result.rejected.append(rejection(self._topic, record, *unread, keep=self._max_event_bytes))
                continue
            try:
                event = OutcomeEvent.model_validate_json(record.value)  # type: ignore[arg-type]  # bytes here
            except ValidationError as exc:
                result.rejected.append(rejection(self._topic, record, error_kind(exc), describe(exc)))
                continue
            result.rows.append(outcome_row(event, record.partition, record.offset))
        return result
