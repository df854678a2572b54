"""The call event: one model or tool call, as applications publish it to ``llm.calls``."""

from __future__ import annotations

import functools
import re
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from schemas.privacy import Pseudonyms, hash_kind, id_kind, name_kind, problem, sensitive_kind

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
"""The longest ``prompt_hash`` or ``args_hash``."""
MAX_MILLIS = 86_400_000
MAX_COST_USD = 1_000_000
MAX_ATTEMPT = 100
TAG_KEY = r"[A-Za-z0-9_.:-]{1,64}"
"""A tag key, unanchored: each validator anchors it its own way."""
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(days=1)
_EARLIEST_S = EARLIEST_TS.timestamp()
_MAX_SKEW_S = MAX_CLOCK_SKEW.total_seconds()

PSEUDONYMS = "pseudonyms"
"""The validation context key of a :class:`schemas.privacy.Pseudonyms`: when given (the worker has
``SPENDSTREAM_USER_ID_KEY``), a ``user_id`` not yet pseudonymous is replaced by its pseudonym instead
of being screened as sent."""

INVISIBLE = (
    r"\x00-\x1f\x7f-\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f"
    r"\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ue000-\uf8ff\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb"
)
"""The invisible characters of the Basic Multilingual Plane, as the body of a regex class (Python, RE2 and
JSON Schema read it alike): the JSON Schema's pattern. The model refuses more (:func:`unprintable`): every
character of an invisible Unicode category, and those of the other planes (tag characters, variation
selectors 17 to 256, unassigned and private-use code points)."""
PRINTABLE = f"^[^{INVISIBLE}]+$"

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"})
"""Control, format (zero-width, bidi, tag characters, the soft hyphen), private-use, unassigned and surrogate
code points, line and paragraph separators, and every space but U+0020: what ``str.isprintable`` refuses."""
_INVISIBLE_PRINTABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
).search
"""Characters Python calls printable that print as nothing: the combining grapheme joiner, the Hangul
fillers, the Khmer inherent vowels, the Mongolian variation selectors, the blank braille pattern, and
the variation selectors. Ordinary combining marks (an accent, a vowel sign) stay welcome."""
_CATEGORY_NAMES = {"Co": "a private-use character", "Cn": "an unassigned character", "Cs": "a surrogate"}


def _invisible(value: str) -> str | None:
    """The first character of ``value`` that no id or name may hold, or ``None``.

    On the per-event path: printable ASCII (nearly every id and name) is two C-speed checks.
    """
    if value.isprintable():
        if value.isascii() or _INVISIBLE_PRINTABLE(value) is None:
            return None
        return next(char for char in value if _INVISIBLE_PRINTABLE(char))
    return next(char for char in value if char != " " and unicodedata.category(char) in _REFUSED_CATEGORIES)


def unprintable(field: str, value: str) -> str | None:
    """Why an id or name is refused for a character it holds (naming the first one), or ``None``."""
    char = _invisible(value)
    if char is None:
        return None
    category = unicodedata.category(char)
    name = unicodedata.name(char, _CATEGORY_NAMES.get(category, "a control character"))
    return (
        f"{field} holds U+{ord(char):04X} ({name}): ids and names must be printable, "
        "without control, invisible or bidi characters"
    )


def id_problem(field: str, value: str) -> str | None:
    """Why an id is refused (an unprintable character, personal data, a secret), or ``None``."""
    found = unprintable(field, value)
    if found is None and (kind := id_kind(value)) is not None:
        return problem(field, kind)
    return found


def name_problem(field: str, value: str) -> str | None:
    """Why a name is refused (an unprintable character, personal data, a secret), or ``None``."""
    found = unprintable(field, value)
    if found is None and (kind := name_kind(value)) is not None:
        return problem(field, kind, name=True)
    return found


_name_kind = functools.lru_cache(maxsize=8192)(name_kind)
"""Names repeat (a model, a feature): each is judged once."""


class _Screened:
    """Annotation of a text field: refused when ``kind_of`` finds personal data or a secret in it, or,
    for ids, names and hashes (``printable``), when it holds an invisible character (:func:`unprintable`).

    On the per-event path of the model: the field's name and the reason are only made for a refusal.
    """

    def __init__(self, kind_of: Callable[[str], str | None], *, name: bool = False, printable: bool = False) -> None:
        self._kind_of = kind_of
        self._name = name
        self._printable = printable

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        if self._printable:  # a text that may be empty (a hash) may be empty in the pattern too
            json_schema["pattern"] = PRINTABLE if json_schema.get("minLength") else PRINTABLE.replace("]+$", "]*$")
        return json_schema

    def _validate(self, value: str, info: ValidationInfo) -> str:
        if (self._printable and _invisible(value) is not None) or self._kind_of(value) is not None:
            field = info.field_name or "value"
            found = unprintable(field, value) if self._printable else None
            raise ValueError(found or problem(field, self._kind_of(value) or "", name=self._name))
        return value


def _pseudonymized(user_id: str, info: ValidationInfo) -> str:
    pseudonyms = info.context.get(PSEUDONYMS) if isinstance(info.context, dict) else None
    return pseudonyms(user_id) if isinstance(pseudonyms, Pseudonyms) else user_id


_ID_TEXT = StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH)
Id = Annotated[str, _ID_TEXT, _Screened(id_kind, printable=True)]
"""An id: printable, no personal data or secret (random ids are welcome)."""
UserId = Annotated[str, _ID_TEXT, AfterValidator(_pseudonymized), _Screened(id_kind, printable=True)]
"""A user id: an id, pseudonymised before it is screened when the validation context has :data:`PSEUDONYMS`."""
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH),
    _Screened(_name_kind, name=True, printable=True),
]
"""A name (a model, a feature, a team...): printable, no personal data, secret or key-like token."""
ShortText = Annotated[
    str, StringConstraints(max_length=MAX_SHORT_TEXT_LENGTH), _Screened(name_kind, name=True, printable=True)
]
"""Short text (an error type): printable, no personal data, secret or key-like token."""
PromptHash = Annotated[str, StringConstraints(max_length=MAX_PROMPT_HASH_LENGTH), _Screened(hash_kind, printable=True)]
"""A hash of the prompt: screened as an id is (a hex digest is a digest, even when its digits pass for a card)."""
ArgsHash = Annotated[str, StringConstraints(max_length=MAX_PROMPT_HASH_LENGTH), _Screened(hash_kind, printable=True)]
"""A digest of a tool call's arguments: screened as a prompt hash is."""


def _not_a_boolean(value: Any) -> Any:
    # pydantic reads true as 1 and false as 0 where a number is due: a count or a duration sent as a
    # boolean is a producer's mistake, not one token
    if value is True or value is False:
        raise ValueError("a number, not true or false")
    return value


_NUMBER = BeforeValidator(_not_a_boolean)
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS), _NUMBER]
Millis = Annotated[float, Field(ge=0, le=MAX_MILLIS), _NUMBER]
TagKey = Annotated[str, StringConstraints(pattern=f"^{TAG_KEY}$")]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE_LENGTH)]

Status = Literal["success", "error", "timeout", "rate_limited", "cancelled"]
Kind = Literal["llm", "tool"]
DataMode = Literal["real", "test", "demo"]


CAMEL_NAMES = {
    "externalRequestId": "event_id",
    "endpointTag": "feature",
    "promptVersion": "prompt_version",
    "userId": "user_id",
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "latencyMs": "latency_ms",
    "dataMode": "data_mode",
}
"""The camelCase names of hosted cost trackers' usage payload, and the contract's names they stand for
(``schemas.usage_payload`` reads the rest of that payload)."""
CAMEL_OF = {snake: camel for camel, snake in CAMEL_NAMES.items()}


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, CAMEL_OF[name])


class CallEvent(BaseModel):
    """One model or tool call.

    Token counts follow one convention whatever the provider reports: ``input_tokens`` counts every
    prompt token, cached ones included, and ``cache_read_tokens``/``cache_write_tokens`` say how
    many of them were read from or written to the cache; ``output_tokens`` counts every generated
    token, reasoning included, and ``reasoning_tokens`` says how many were reasoning.
    """

    # hide_input_in_errors: a refused value (an e-mail address in a name) must not reach the logs
    # of whoever prints the error, the SDK's warning included
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, str_max_length=4096, hide_input_in_errors=True
    )

    # Identity and time.
    event_id: Id = Field(validation_alias=_alias("event_id"))
    """Client-generated idempotency key: a redelivered event with the same id is counted once."""
    ts: AwareDatetime
    """When the call started: RFC 3339 with an offset, or epoch milliseconds."""
    provider: Name
    model: Name

    # Attribution.
    feature: Name | None = Field(default=None, validation_alias=_alias("feature"))
    """The endpoint tag (``sales.email_draft``); missing means the ``unattributed`` bucket."""
    prompt_version: Name | None = Field(default=None, validation_alias=_alias("prompt_version"))
    agent_id: Id | None = None
    task_id: Id | None = None
    session_id: Id | None = None
    trace_id: Id | None = None
    parent_id: Id | None = None
    """The ``event_id`` of the calling event, for hierarchical rollups."""
    user_id: UserId | None = Field(default=None, validation_alias=_alias("user_id"))
    """Pseudonymous user id (the SDK HMACs raw ids; so does the worker, given ``SPENDSTREAM_USER_ID_KEY``)."""
    tenant_id: Id | None = None
    team: Name | None = None
    environment: Name = "prod"
    data_mode: DataMode = Field(default="real", validation_alias=_alias("data_mode"))
    """Only ``real`` calls count in finance rollups."""
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=MAX_TAGS)
    """Categorical labels only; keys and values that look like personal data or secrets are refused."""
    prompt_hash: PromptHash | None = None
    """A hash of the prompt, so that loop detection can see the same prompt repeating."""
    args_hash: ArgsHash | None = None
    """A digest of a tool call's arguments (the SDK's ``track(args=...)`` makes it; the arguments stay in the
    process), so that loop detection can see one tool called with the same arguments again and again."""

    # Usage.
    kind: Kind = "llm"
    tool_name: Name | None = None
    input_tokens: Tokens = Field(default=0, validation_alias=_alias("input_tokens"))
    output_tokens: Tokens = Field(default=0, validation_alias=_alias("output_tokens"))
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    cost_usd: Annotated[float, Field(ge=0, le=MAX_COST_USD), _NUMBER] | None = None
    """A cost the caller states (a paid tool, a negotiated rate); otherwise the pipeline prices the call."""

    # Behaviour.
    latency_ms: Millis | None = Field(default=None, validation_alias=_alias("latency_ms"))
    ttft_ms: Millis | None = None
    status: Status = "success"
    error_type: ShortText | None = None
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPT), _NUMBER] = 1
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
    """Why ``tags`` are refused (a key or value that looks like personal data or a secret, or a value that
    holds an invisible character), or ``None``."""
    for key, value in tags.items():
        kind = id_kind(key)
        if kind is not None:  # the key is not repeated: the reason is stored and published
            return f"a tag key looks like {kind}: tags hold categorical labels only"
        invisible = unprintable(f"tag {key!r}", value)
        if invisible is not None:
            return invisible
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
