"""The demo's calls, priced as the worker prices them, at a fixed point in time: input for detector tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

from producers.demo import DemoTraffic
from producers.demo_incidents import DemoIncidents
from schemas.call_event import CallEvent
from streams.ingest import Ingestor, IngestResult, RawEvent
from streams.pricing import Pricer

NOW = datetime(2026, 11, 23, 10, 45, tzinfo=UTC)  # a Monday: the incidents were on Friday afternoon


def priced(events: list[CallEvent]) -> IngestResult:
    raw = (RawEvent(orjson.dumps(e.model_dump(mode="json", exclude_none=True)), 0, n) for n, e in enumerate(events))
    return Ingestor(Pricer([]), "llm.calls").process(raw)


def demo_calls(
    incidents: DemoIncidents | None, days: float = 6.5, size: int = 5000, now: datetime = NOW
) -> Iterator[list[CallEvent]]:
    """The demo's calls in time order, in batches as the worker would store them."""
    traffic = DemoTraffic(seed=7, incidents=incidents, now=now)
    events = [
        call
        for request in traffic.requests_between(now - timedelta(days=days), now)
        for call in request.calls
        if call.ts <= now
    ]
    events.sort(key=lambda e: e.ts)
    for start in range(0, len(events), size):
        yield events[start : start + size]
