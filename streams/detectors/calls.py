"""Reading stored call rows (tuples in ``LLM_CALL_COLUMNS`` order) without building objects per call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from sinks.batch import LLM_CALL_COLUMNS

Row = tuple[Any, ...]

_INDEX = {column: i for i, column in enumerate(LLM_CALL_COLUMNS)}


def column(name: str) -> int:
    """The position of ``name`` in a call row."""
    return _INDEX[name]


EVENT_ID = column("event_id")
TS = column("ts")
PROVIDER = column("provider")
MODEL = column("model")
KIND = column("kind")
TOOL_NAME = column("tool_name")
FEATURE = column("feature")
PROMPT_VERSION = column("prompt_version")
AGENT_ID = column("agent_id")
SESSION_ID = column("session_id")
TENANT_ID = column("tenant_id")
DATA_MODE = column("data_mode")
PROMPT_HASH = column("prompt_hash")
INPUT_TOKENS = column("input_tokens")
OUTPUT_TOKENS = column("output_tokens")
LATENCY_MS = column("latency_ms")
TTFT_MS = column("ttft_ms")
STATUS = column("status")
ATTEMPT = column("attempt")
COST_USD = column("cost_usd")
SOURCE_PARTITION = column("source_partition")


def minute_slices(rows: Iterable[Row]) -> Iterator[tuple[list[Row], list[float]]]:
    """The calls in time order, one event-time minute at a time, each with its ``ts`` in epoch seconds.

    What every detector's ``observe`` takes: ``ts`` is read once per call, and a detector counts
    a minute's calls into its minute without working the minute out per call.
    """
    stamped = sorted(((row[TS].timestamp(), row) for row in rows), key=itemgetter(0))
    start = 0
    for i in range(1, len(stamped) + 1):
        if i < len(stamped) and stamped[i][0] // 60 == stamped[start][0] // 60:
            continue
        part = stamped[start:i]
        yield [row for _, row in part], [at for at, _ in part]
        start = i


def minute_of(stamps: Sequence[float]) -> int:
    """The event-time minute (epoch minutes) of a slice of :func:`minute_slices`."""
    return int(stamps[0] // 60)
