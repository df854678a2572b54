"""The usage payload of hosted cost trackers' SDKs, read as a call event.

Their SDKs send one camelCase object per call (``externalRequestId``, ``endpointTag``,
``promptVersion``, ``userId``, ``inputTokens``, ``outputTokens``, ``latencyMs``, ``status``,
``dataMode``, ``environment``), and often no ``ts``: the call's time is the Kafka record's. An event
holding any of the camelCase names of ``schemas.call_event.CAMEL_NAMES`` is such a payload:
:class:`UsageCallEvent` reads it, a :class:`~schemas.call_event.CallEvent` whose fields
:func:`usage_fields` first puts in the contract's terms, then validated as any event is, personal-data
screening included:

- no ``ts`` (absent or ``null``): the Kafka record's timestamp (:data:`RECORD_TS` in the validation
  context), in epoch milliseconds;
- ``userId``: ``user_id``, or ``tenant_id`` when the worker is told so (:data:`USER_ID_AS`): such
  SDKs often send a tenant or account hash there;
- ``status``: their words for an outcome (``ok``, ``failed``, ``timed_out``, ``throttled``, an HTTP
  status code ...) onto the contract's five (:data:`STATUSES`, :func:`status_of_http`);
- ``environment``: ``production`` and ``development`` as ``prod`` and ``dev``, the contract's names.

The model needs ``provider`` and ``model`` as it does of any event: without them a call can be
neither priced nor put in its rollups, so the payload is refused, saying so. What the payload cannot
hold is refused with a reason naming its fields: a camelCase name and its snake_case twin both given,
no ``externalRequestId``.

Only such payloads take this way (:func:`model_for`): a model validator that rewrites its input makes
pydantic build the whole event in Python objects before validating it, about 3 µs more per event.
Most of them never do: ``schemas.call_event_decoder.decode_usage`` reads a clean one as this model
would, in front of it, as ``decode_clean`` does for native events.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from schemas.call_event import CAMEL_NAMES, CallEvent

_CAMEL: Final = frozenset(CAMEL_NAMES)
_HINTS: Final = (*(f'{name}"'.encode() for name in CAMEL_NAMES), b"\\")
"""What the bytes of a usage payload hold: a camelCase name, or an escape (a name may be escaped)."""

RECORD_TS: Final = "record_ts"
"""The validation context key of the Kafka record's timestamp (epoch milliseconds): a usage payload's
``ts`` when it sends none."""
USER_ID_AS: Final = "user_id_as"
"""The validation context key of what a usage payload's ``userId`` is stored as (:data:`UserIdAs`)."""
UserIdAs = Literal["user_id", "tenant_id"]

STATUSES: Final = {
    "success": "success", "succeeded": "success", "ok": "success", "completed": "success", "complete": "success",
    "error": "error", "failed": "error", "failure": "error", "errored": "error",
    "timeout": "timeout", "timed_out": "timeout", "timedout": "timeout",
    "rate_limited": "rate_limited", "ratelimited": "rate_limited", "rate_limit": "rate_limited",
    "throttled": "rate_limited",
    "cancelled": "cancelled", "canceled": "cancelled", "aborted": "cancelled",
}  # fmt: skip
"""A usage payload's words for a call's outcome (lower-cased) and the contract's status for each."""
ENVIRONMENTS: Final = {"production": "prod", "development": "dev"}
"""A usage payload's long environment names and the contract's short ones."""
USAGE_PAYLOAD_ERROR: Final = "usage_payload"
"""The pydantic error type of a usage payload refused as a whole (its reason names the fields)."""


def status_of_http(code: int) -> str | None:
    """The contract's status of an HTTP status code a usage payload sends as ``status``, or ``None``."""
    if 200 <= code < 300:
        return "success"
    if code == 429:
        return "rate_limited"
    if code in (408, 504):
        return "timeout"
    if code == 499:  # the client closed the request
        return "cancelled"
    if 400 <= code < 600:
        return "error"
    return None


def is_usage_payload(data: dict[str, Any]) -> bool:
    """Whether an event uses any camelCase name of the usage payload."""
    return not data.keys().isdisjoint(_CAMEL)


def model_for(raw: bytes) -> type[CallEvent]:
    """The model that reads these bytes: :class:`UsageCallEvent` when they may be a usage payload.

    A byte search, wider than the payload's names (any escape): an event it takes for one that is not
    is read alike, only slower.
    """
    for hint in _HINTS:
        if hint in raw:
            return UsageCallEvent
    return CallEvent


def usage_fields(data: dict[str, Any], context: Any) -> dict[str, Any]:
    """A usage payload's fields as the model reads them (see the module's docstring); ``data`` is left as is.

    ``context``: the model's validation context (:data:`RECORD_TS`, :data:`USER_ID_AS`), or ``None``.

    Raises:
        PydanticCustomError: of type :data:`USAGE_PAYLOAD_ERROR`, naming every field the payload
            cannot hold: twins, the id or the names the call is priced by missing, no time at all.
    """
    record_ts = context.get(RECORD_TS) if isinstance(context, dict) else None
    as_tenant = isinstance(context, dict) and context.get(USER_ID_AS) == "tenant_id"
    problems = []
    fields = dict(data)
    for camel, snake in CAMEL_NAMES.items():
        if camel in data:
            if as_tenant and camel == "userId":  # what the worker was told it holds
                snake = "tenant_id"
                fields[snake] = fields.pop(camel)
            if snake in data:
                problems.append(f"{camel} and {snake} both given: send one ({camel} is read as {snake})")
    if "externalRequestId" not in fields and "event_id" not in fields:
        problems.append("externalRequestId missing: the call's idempotency key (a call sent twice is counted once)")
    unnamed = [name for name in ("provider", "model") if fields.get(name) is None]
    if unnamed:
        problems.append(
            f"{' and '.join(unnamed)} missing: a call is priced and rolled up by its provider and model; "
            "add them to the usage payload"
        )
    if fields.get("ts") is None:
        if isinstance(record_ts, int) and record_ts >= 0:
            fields["ts"] = record_ts
        else:
            problems.append("ts missing, and the Kafka record has no timestamp: send ts (RFC 3339 or epoch ms)")
    if problems:
        raise PydanticCustomError(USAGE_PAYLOAD_ERROR, "{reason}", {"reason": "; ".join(problems)})
    status = fields.get("status")
    if isinstance(status, str):
        fields["status"] = STATUSES.get(status.strip().lower(), status)
    elif isinstance(status, int) and not isinstance(status, bool):
        fields["status"] = status_of_http(status) or status
    environment = fields.get("environment")
    if isinstance(environment, str):
        fields["environment"] = ENVIRONMENTS.get(environment.strip().lower(), environment)
    return fields


class UsageCallEvent(CallEvent):
    """A call event read from a usage payload (or a native event, read as :class:`CallEvent` reads it)."""

    @model_validator(mode="before")
    @classmethod
    def _usage_payload(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and is_usage_payload(data):
            return usage_fields(data, info.context)
        return data
