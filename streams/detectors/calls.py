"""Reading stored call rows (tuples in ``LLM_CALL_COLUMNS`` order) without building objects per call."""

from __future__ import annotations

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
