"""The call event: one model or tool call, as applications publish it to ``llm.calls``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Protocol

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.privacy import sensitive_kind

UNATTRIBUTED = "unattributed"
"""The feature bucket of a call that carries no ``feature`` tag."""

# The limits of the fields, shared with the fast decoder (``schemas.call_event_decoder``).
MAX_TAGS = 32
MAX_TOKENS = 100_000_000
MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 128
MAX_SHORT_TEXT_LENGTH = 1024
MAX_TAG_VALUE_LENGTH = 128
MAX_PROMPT_HASH_LENGTH = 128
MAX_MILLIS = 86_400_000
MAX_COST_USD = 1_000_000
MAX_ATTEMPT = 100
TAG_KEY = r"[A-Za-z0-9_.:-]{1,64}"
"""A tag key, unanchored: each validator anchors it its own way."""
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(days=1)
_EARLIEST_S = EARLIEST_TS.timestamp()
_MAX_SKEW_S = MAX_CLOCK_SKEW.total_seconds()

# Ids are printable: no control characters (the sink relies on it when it looks ids up in bulk).
Id = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH)]
ShortText = Annotated[str, StringConstraints(max_length=MAX_SHORT_TEXT_LENGTH)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Millis = Annotated[float, Field(ge=0, le=MAX_MILLIS)]
TagKey = Annotated[str, StringConstraints(pattern=f"^{TAG_KEY}$")]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE_LENGTH)]

Status = Literal["success", "error", "timeout", "rate_limited", "cancelled"]
Kind = Literal["llm", "tool"]
DataMode = Literal["real", "test", "demo"]


def _alias(name: str, camel: str) -> AliasChoices:
    return AliasChoices(name, camel)


class CallEvent(BaseModel):
    """One model or tool call.

    Token counts follow one convention whatever the provider reports: ``input_tokens`` counts every
    prompt token, cached ones included, and ``cache_read_tokens``/``cache_write_tokens`` say how
    many of them were read from or written to the cache; ``output_tokens`` counts every generated
    token, reasoning included, and ``reasoning_tokens`` says how many were reasoning.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_max_length=4096)

    # Identity and time.
    event_id: Id = Field(validation_alias=_alias("event_id", "externalRequestId"))
    """Client-generated idempotency key: a redelivered event with the same id is counted once."""
    ts: AwareDatetime
    """When the call started: RFC 3339 with an offset, or epoch milliseconds."""
    provider: Name
    model: Name

    # Attribution.
    feature: Name | None = Field(default=None, validation_alias=_alias("feature", "endpointTag"))
    """The endpoint tag (``sales.email_draft``); missing means the ``unattributed`` bucket."""
    prompt_version: Name | None = Field(default=None, validation_alias=_alias("prompt_version", "promptVersion"))
    agent_id: Id | None = None
    task_id: Id | None = None
    session_id: Id | None = None
    trace_id: Id | None = None
    parent_id: Id | None = None
    """The ``event_id`` of the calling event, for hierarchical rollups."""
    user_id: Id | None = Field(default=None, validation_alias=_alias("user_id", "userId"))
    """Pseudonymous user id (the SDK HMACs raw ids)."""
    tenant_id: Id | None = None
    team: Name | None = None
    environment: Name = "prod"
    data_mode: DataMode = Field(default="real", validation_alias=_alias("data_mode", "dataMode"))
    """Only ``real`` calls count in finance rollups."""
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=MAX_TAGS)
    """Categorical labels only; values that look like personal data or secrets are refused."""
    prompt_hash: Annotated[str, StringConstraints(max_length=MAX_PROMPT_HASH_LENGTH)] | None = None
    """A hash of the prompt, so that loop detection can see the same prompt repeating."""

    # Usage.
    kind: Kind = "llm"
    tool_name: Name | None = None
    input_tokens: Tokens = Field(default=0, validation_alias=_alias("input_tokens", "inputTokens"))
    output_tokens: Tokens = Field(default=0, validation_alias=_alias("output_tokens", "outputTokens"))
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    cost_usd: Annotated[float, Field(ge=0, le=MAX_COST_USD)] | None = None
    """A cost the caller states (a paid tool, a negotiated rate); otherwise the pipeline prices the call."""

    # Behaviour.
    latency_ms: Millis | None = Field(default=None, validation_alias=_alias("latency_ms", "latencyMs"))
    ttft_ms: Millis | None = None
    status: Status = "success"
    error_type: ShortText | None = None
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPT)] = 1
    """1 for the first try; retries are cost multipliers."""

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        # on the per-event path: convert once (pydantic's own time zone is slow to ask), then compare
        # epoch seconds, cheaper than aware datetimes
        if value.tzinfo is not UTC:
            try:
                value = value.astimezone(UTC)
            except OverflowError:  # year 1 or 9999 moved past datetime's range: long ago or far ahead
                raise ValueError(implausible_time(float("-inf") if value.year < 2000 else float("inf"))) from None
        problem = implausible_time(value.timestamp())
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("tags")
    @classmethod
    def _no_personal_data(cls, tags: dict[str, str]) -> dict[str, str]:
        problem = personal_data_in(tags)
        if problem is not None:
            raise ValueError(problem)
        return tags

    @model_validator(mode="after")
    def _consistent_usage(self) -> CallEvent:
        problem = inconsistent_usage(self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def feature_or_unattributed(self) -> str:
        return self.feature or UNATTRIBUTED

    @property
    def partition_key(self) -> str:
        """The Kafka key: calls of one session (or trace) share a partition, so session windows see them in order."""
        return self.session_id or self.trace_id or self.event_id


# The rules beyond single fields, shared by the model and the fast decoder (``schemas.call_event_decoder``).


def implausible_time(seconds: float) -> str | None:
    """What is wrong with a call's ``ts`` (in epoch seconds), or ``None`` when it is plausible."""
    if seconds < _EARLIEST_S:
        return "ts is before 2000-01-01: send RFC 3339 or epoch milliseconds"
    if seconds > time.time() + _MAX_SKEW_S:
        return "ts is more than a day in the future: check the producer's clock"
    return None


def personal_data_in(tags: dict[str, str]) -> str | None:
    """Why ``tags`` are refused (a value that looks like personal data or a secret), or ``None``."""
    for key, value in tags.items():
        kind = sensitive_kind(value)
        if kind is not None:
            return f"tag {key!r} looks like {kind}: tags hold categorical labels only"
    return None


class Usage(Protocol):
    """What :func:`inconsistent_usage` reads of a call."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def tool_name(self) -> str | None: ...


def inconsistent_usage(call: Usage) -> str | None:
    """Why a call's token counts or kind contradict each other, or ``None`` when they agree."""
    if call.cache_read_tokens + call.cache_write_tokens > call.input_tokens:
        return (
            "cache_read_tokens + cache_write_tokens exceed input_tokens: input_tokens must count "
            "every prompt token, cached ones included"
        )
    if call.reasoning_tokens > call.output_tokens:
        return (
            "reasoning_tokens exceed output_tokens: output_tokens must count every generated token, reasoning included"
        )
    if call.kind == "tool" and not call.tool_name:
        return "a tool call (kind=tool) needs tool_name"
    return None
