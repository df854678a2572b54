"""The fast path of validation: a compiled decoder for clean call events, in front of the model.

Validating with :class:`~schemas.call_event.CallEvent` takes about 8 µs per event (14 with every
field set: each text field is screened), the largest share of the pipeline's work per call.
:func:`decode_clean` decodes an event with a msgspec struct built from the same constraints in
about 1.5 µs (5 with every field set), and answers only when it is sure the model accepts
the event and reads the same values from it. For anything else (a camelCase name, a timestamp in a
form it does not parse, an event the model refuses) it returns ``None``, and the caller validates
with the model: the model stays the one definition of a valid event and the one source of
rejection reasons. ``tests/unit/test_call_event_decoder.py`` holds the two to that.

The rules on text are left to the caller, who checks them for a whole batch at once
(``streams.ingest``, in Arrow columns): the model strips whitespace around ids and names, refuses
control, invisible and bidi characters in them, and refuses personal data and secrets in every text
field. The decoder does none of that; a value of :data:`TEXT_FIELDS` that is not printable ASCII
without surrounding spaces, and a value of :data:`ID_TEXT` or :data:`NAME_TEXT` in which
``schemas.privacy``'s candidate patterns find something, must go through the model. Tags are the
exception: the decoder screens them itself, as the model does.

:func:`decode_usage` does the same for the usage payload of hosted cost trackers
(``schemas.usage_payload``), read as :class:`~schemas.usage_payload.UsageCallEvent` reads it: its
camelCase names, its statuses and environments, its time the record's when it sends none, its
``userId`` as the tenant when the worker is told so.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, cast

import msgspec
from msgspec import Meta

from schemas.call_event import (
    MAX_ATTEMPT,
    MAX_COST_USD,
    MAX_ID_LENGTH,
    MAX_MILLIS,
    MAX_NAME_LENGTH,
    MAX_PROMPT_HASH_LENGTH,
    MAX_SHORT_TEXT_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
    MAX_TOKENS,
    TAG_KEY,
    UNATTRIBUTED,
    DataMode,
    Kind,
    Status,
    implausible_time,
    inconsistent_usage,
    personal_data_in,
)
from schemas.privacy import Pseudonyms
from schemas.usage_payload import ENVIRONMENTS, STATUSES, UserIdAs, status_of_http

TEXT_FIELDS: tuple[str, ...] = (
    "event_id", "provider", "model", "feature", "prompt_version", "agent_id", "task_id", "session_id",
    "trace_id", "parent_id", "user_id", "tenant_id", "team", "environment", "tool_name",
)  # fmt: skip
"""The ids and names whose surrounding whitespace and unprintable characters the caller checks."""
ID_TEXT: tuple[str, ...] = (
    "event_id", "agent_id", "task_id", "session_id", "trace_id", "parent_id", "user_id", "tenant_id", "prompt_hash",
    "args_hash",
)  # fmt: skip
"""The text the caller screens with ``schemas.privacy.ID_CANDIDATES``."""
NAME_TEXT: tuple[str, ...] = (
    "provider", "model", "feature", "prompt_version", "team", "environment", "tool_name", "error_type",
)  # fmt: skip
"""The text the caller screens with ``schemas.privacy.NAME_CANDIDATES``."""
if sorted(ID_TEXT + NAME_TEXT) != sorted([*TEXT_FIELDS, "prompt_hash", "args_hash", "error_type"]):  # pragma: no cover
    raise RuntimeError("schemas.call_event_decoder: every text field is screened, as an id or as a name")

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Millis = Annotated[float, Meta(ge=0, le=MAX_MILLIS)]
# \Z, not $: Python's $ also matches before a final newline, the model's pattern does not
_TagKey = Annotated[str, Meta(pattern=f"^{TAG_KEY}\\Z")]
_TagValue = Annotated[str, Meta(max_length=MAX_TAG_VALUE_LENGTH)]
_Hash = Annotated[str, Meta(max_length=MAX_PROMPT_HASH_LENGTH)]

# The RFC 3339 forms the model and datetime.fromisoformat read alike (both keep microseconds of up
# to nanoseconds sent, truncated; msgspec's own parser would round them). Other forms go to the model.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-5][0-9])"
).fullmatch


class CleanCallEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A call event as :func:`decode_clean` returns it: the values ``CallEvent`` would hold.

    Its fields come in the order of the ``llm_calls`` row the sink writes, and an absent text is
    ``""`` where the model has ``None`` (the row's empty string), so that the row's first
    :data:`ROW_FIELDS` values are the struct's own, taken in one step. The model accepts ``null``
    for those fields, this struct does not: such an event goes to the model.
    """

    event_id: _Id
    if TYPE_CHECKING:
        ts: datetime
    else:
        ts: int | str  # decoded as sent; decode_clean leaves an aware UTC datetime here
    provider: _Name
    model: _Name
    kind: Kind = "llm"
    tool_name: _Name = ""
    feature: _Name = UNATTRIBUTED
    prompt_version: _Name = ""
    agent_id: _Id = ""
    task_id: _Id = ""
    session_id: _Id = ""
    trace_id: _Id = ""
    parent_id: _Id = ""
    user_id: _Id = ""
    tenant_id: _Id = ""
    team: _Name = ""
    environment: _Name = "prod"
    data_mode: DataMode = "real"
    tags: Annotated[dict[_TagKey, _TagValue], Meta(max_length=MAX_TAGS)] = {}
    prompt_hash: _Hash = ""
    args_hash: _Hash = ""
    input_tokens: _Tokens = 0
    output_tokens: _Tokens = 0
    cache_read_tokens: _Tokens = 0
    cache_write_tokens: _Tokens = 0
    reasoning_tokens: _Tokens = 0
    latency_ms: _Millis | None = None
    ttft_ms: _Millis | None = None
    status: Status = "success"
    error_type: Annotated[str, Meta(max_length=MAX_SHORT_TEXT_LENGTH)] = ""
    attempt: Annotated[int, Meta(ge=1, le=MAX_ATTEMPT)] = 1
    cost_usd: Annotated[float, Meta(ge=0, le=MAX_COST_USD)] | None = None

    @property
    def feature_or_unattributed(self) -> str:
        return self.feature


ROW_FIELDS = 31
"""The struct's first fields are the first columns of an ``llm_calls`` row (``sinks.batch``), in order."""


class CleanUsagePayload(CleanCallEvent, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A usage payload as :func:`decode_usage` reads it: a :class:`CleanCallEvent` under the payload's names.

    Only its camelCase names are read (a snake_case twin is an unknown field: the model says why),
    and ``externalRequestId`` is required.
    """

    event_id: _Id = msgspec.field(name="externalRequestId")
    if TYPE_CHECKING:
        status: Status
    else:
        ts: int | str | None = None  # no ts: the record's
        status: str | int = "success"  # the payload's word or HTTP status code, until decode_usage maps it
    feature: _Name = msgspec.field(default=UNATTRIBUTED, name="endpointTag")
    prompt_version: _Name = msgspec.field(default="", name="promptVersion")
    user_id: _Id = msgspec.field(default="", name="userId")
    data_mode: DataMode = msgspec.field(default="real", name="dataMode")
    input_tokens: _Tokens = msgspec.field(default=0, name="inputTokens")
    output_tokens: _Tokens = msgspec.field(default=0, name="outputTokens")
    latency_ms: _Millis | None = msgspec.field(default=None, name="latencyMs")


_decode = msgspec.json.Decoder(CleanCallEvent).decode
_decode_usage = msgspec.json.Decoder(CleanUsagePayload).decode


def decode_clean(raw: bytes, pseudonyms: Pseudonyms | None = None) -> CleanCallEvent | None:
    """The event, when the model would accept it with these values; ``None``: validate with the model.

    ``pseudonyms``: the worker's user id pseudonyms, as the model is given them in its validation
    context (``schemas.call_event.PSEUDONYMS``). The caller still checks the text (see the module's
    docstring).
    """
    try:
        event = _decode(raw)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    return _checked(event, cast(int | str, event.ts), pseudonyms)


def decode_usage(
    raw: bytes, record_ts: int | None, pseudonyms: Pseudonyms | None = None, user_id_as: UserIdAs = "user_id"
) -> CleanCallEvent | None:
    """A usage payload, when :class:`~schemas.usage_payload.UsageCallEvent` would read these values from it.

    ``record_ts``: the Kafka record's timestamp (epoch milliseconds), its time when it sends no
    ``ts``; ``user_id_as``: what its ``userId`` is stored as. Otherwise as :func:`decode_clean`.
    """
    try:
        event = _decode_usage(raw)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    sent_status = cast(str | int, event.status)
    status = status_of_http(sent_status) if isinstance(sent_status, int) else STATUSES.get(sent_status.strip().lower())
    if status is None:  # a word or a code it does not know: the model says why
        return None
    event.status = cast(Status, status)
    event.environment = ENVIRONMENTS.get(event.environment.strip().lower(), event.environment)
    if user_id_as == "tenant_id" and event.user_id:
        if event.tenant_id:  # both given: the model says why
            return None
        event.tenant_id, event.user_id = event.user_id, ""
    sent = cast(int | str | None, event.ts)
    if sent is None:
        if record_ts is None or record_ts < 0:
            return None
        sent = record_ts
    return _checked(event, sent, pseudonyms)


def _checked(event: CleanCallEvent, sent: int | str, pseudonyms: Pseudonyms | None) -> CleanCallEvent | None:
    """``event`` with its time read from ``sent`` and its user id pseudonymised, when the model would agree."""
    if isinstance(sent, str) and _RFC3339(sent) is None:
        return None
    try:
        if isinstance(sent, int):
            # epoch milliseconds; an int the model reads as seconds (below 2e10) is before 2000 in
            # milliseconds, refused below, and so goes to the model
            ts = datetime.fromtimestamp(sent / 1000, UTC)
        else:
            ts = datetime.fromisoformat(sent)
            if ts.tzinfo is not UTC:
                ts = ts.astimezone(UTC)
    except (ValueError, OverflowError, OSError):  # out of datetime's range: the model refuses it and says why
        return None
    if implausible_time(ts.timestamp()) is not None or inconsistent_usage(event) is not None:
        return None
    if event.tags and personal_data_in(event.tags) is not None:
        return None
    if pseudonyms is not None and event.user_id:
        user_id = event.user_id
        # the model pseudonymises the id it has stripped: a padded or unusual one is left to it
        if not (user_id.isascii() and user_id.isprintable()) or user_id[0] == " " or user_id[-1] == " ":
            return None
        event.user_id = pseudonyms(user_id)
    event.ts = ts
    return event
