"""Validation and pricing of a batch of raw call events: the per-event path of the pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import NamedTuple, cast

import pyarrow as pa
import pyarrow.compute as pc
import pydantic_core
from pydantic import ValidationError

from schemas.call_event import PSEUDONYMS, UNATTRIBUTED, CallEvent, name_problem
from schemas.call_event_decoder import ID_TEXT, NAME_TEXT, TEXT_FIELDS, CleanCallEvent, decode_clean, decode_usage
from schemas.privacy import ID_CANDIDATES, NAME_CANDIDATES, Pseudonyms, redact, redact_raw
from schemas.usage_payload import RECORD_TS, USAGE_PAYLOAD_ERROR, USER_ID_AS, UsageCallEvent, UserIdAs, model_for
from sinks import call_block
from sinks.batch import LLM_CALL_COLUMNS, CallRows, Rejection
from streams.pricing import CALLER_SOURCE, Pricer

MAX_EVENT_BYTES = 64 * 1024
MISSING_FEATURE = "missing_feature"
"""The ``error_kind`` of a call refused for having no feature tag (``require_feature``)."""
MISSING_FEATURE_REASON = (
    "feature missing: this worker refuses calls not tagged with the feature they serve "
    "(SPENDSTREAM_REQUIRE_FEATURE); send feature (endpointTag in the usage payload)"
)


class RawEvent(NamedTuple):
    """One Kafka record as received (a named tuple: made once per record, it must be cheap to make)."""

    value: bytes | None
    partition: int
    offset: int
    timestamp: int | None = None
    """The record's Kafka timestamp in epoch milliseconds (``None``: it has none): the time of a
    usage payload that sends no ``ts`` (``schemas.usage_payload``)."""


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
        # the path may repeat what was sent (an unknown field's name, a tag key): it is redacted
        where = redact(".".join(str(p) for p in error["loc"])) or "event"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (see schemas/jsonschema/call_event.schema.json)"
        elif error["type"] == "missing":
            message = "required field missing"
        elif error["type"] == "int_parsing_size" or (error["type"] == "float_type" and type(error["input"]) is int):
            message = "a number far too large"  # pydantic's words: a string that is no integer, or no number
        elif error["type"] == USAGE_PAYLOAD_ERROR:  # it names its fields
            parts.append(message)
            continue
        elif error["type"] == "value_error":  # the model's own reason, without pydantic's "Value error, "
            message = str(error.get("ctx", {}).get("error", message))
            if message.startswith(f"{where} "):  # it names its field already: "user_id looks like ..."
                parts.append(message)
                continue
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class Ingestor:
    """Turns raw records into priced ``llm_calls`` rows and readable rejections.

    Args:
        pricer: the price lookup (cached per model).
        topic: the source topic, recorded with each rejection.
        max_event_bytes: larger records are rejected unread.
        user_id_key: the HMAC key of user ids (``SPENDSTREAM_USER_ID_KEY``, the SDK's): when given, a
            ``user_id`` not yet pseudonymous is replaced by the SDK's pseudonym of it, instead of being
            refused when it looks like personal data.
        require_feature: refuse calls without a feature tag (``error_kind`` :data:`MISSING_FEATURE`)
            instead of storing them in the ``unattributed`` bucket (``SPENDSTREAM_REQUIRE_FEATURE``).
        user_id_as: what a usage payload's ``userId`` is stored as (``SPENDSTREAM_USERID_AS``, see
            ``schemas.usage_payload``).
    """

    def __init__(
        self,
        pricer: Pricer,
        topic: str,
        max_event_bytes: int = MAX_EVENT_BYTES,
        user_id_key: bytes | None = None,
        *,
        require_feature: bool = False,
        user_id_as: UserIdAs = "user_id",
    ) -> None:
        self._pricer = pricer
        self._topic = topic
        self._max_event_bytes = max_event_bytes
        self._pseudonyms = Pseudonyms(user_id_key) if user_id_key else None
        self._require_feature = require_feature
        self._user_id_as: UserIdAs = user_id_as
        self._context: dict[str, object] = {USER_ID_AS: user_id_as}
        if self._pseudonyms is not None:
            self._context[PSEUDONYMS] = self._pseudonyms
        self._names_ok: dict[tuple[str, str], bool] = {}
        """Whether the model accepts a (provider, model) pair as sent: only those are priced at first."""

    def process(self, records: Iterable[RawEvent]) -> IngestResult:
        result = IngestResult()
        calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]] = []
        modelled: set[int] = set()  # positions in calls of the events the model validated
        require_feature = self._require_feature
        for record in records:
            raw = record.value
            unread = unread_reason(raw, self._max_event_bytes)
            if unread is not None:
                result.rejected.append(rejection(self._topic, record, *unread, keep=self._max_event_bytes))
                continue
            event: CallEvent | CleanCallEvent | None = decode_clean(raw, self._pseudonyms)  # type: ignore[arg-type]
            if event is None and model_for(raw) is UsageCallEvent:  # type: ignore[arg-type]
                event = decode_usage(raw, record.timestamp, self._pseudonyms, self._user_id_as)  # type: ignore[arg-type]
            # an untagged call refused by require_feature: the model says why, any other reason first
            if event is None or (require_feature and event.feature == UNATTRIBUTED):
                event = self._validate(record, result.rejected)
                if event is None:
                    continue
                modelled.add(len(calls))
            calls.append((event, record))
        unpriced_at = self._price(calls, result)
        if not calls:
            return result
        columns = call_block.table(result.calls.rows)
        unsure = [i for i in _unclean_rows(columns) if i not in modelled]
        if unsure:  # rare: a padded or non-ASCII id or name, text that may hold personal data; the model decides
            columns = self._revalidate(calls, unsure, set(unpriced_at), result, columns)
        result.calls.columns = columns
        return result

    def _validate(self, record: RawEvent, rejected: list[Rejection]) -> CallEvent | None:
        """The event as the model reads it; ``None`` when refused (added to ``rejected`` with why)."""
        raw = cast(bytes, record.value)
        context = self._context if record.timestamp is None else {**self._context, RECORD_TS: record.timestamp}
        try:
            event = model_for(raw).model_validate_json(raw, context=context)
        except ValidationError as exc:
            rejected.append(rejection(self._topic, record, error_kind(exc), describe(exc)))
            return None
        if self._require_feature and event.feature_or_unattributed == UNATTRIBUTED:
            rejected.append(rejection(self._topic, record, MISSING_FEATURE, MISSING_FEATURE_REASON))
            return None
        return event

    def _revalidate(
        self,
        calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]],
        unsure: list[int],
        unpriced_at: set[int],
        result: IngestResult,
        columns: pa.Table,
    ) -> pa.Table:
        """Validate the calls at positions ``unsure`` (ascending) again with the model; return the columns.

        The batch is patched, not priced again: a refused call's row is taken out (its rejection
        added), a kept one's row is priced anew from what the model read (it strips names), and the
        unpriced counts follow.
        """
        rows, unpriced = result.calls.rows, result.unpriced_calls
        again: list[tuple[CallEvent | CleanCallEvent, RawEvent]] = []
        kept: set[int] = set()
        for i in unsure:
            event, record = calls[i]
            if i in unpriced_at:  # counted unpriced under the names as decoded
                where = (event.provider, event.model, event.ts.date(), event.data_mode)
                unpriced[where] -= 1
                if not unpriced[where]:
                    del unpriced[where]
            modelled = self._validate(record, result.rejected)
            if modelled is not None:
                again.append((modelled, record))
                kept.add(i)
        fresh = IngestResult()
        self._price(again, fresh)
        for again_where, count in fresh.unpriced_calls.items():
            unpriced[again_where] = unpriced.get(again_where, 0) + count
        new_rows = reversed(fresh.calls.rows)
        for i in reversed(unsure):  # rows after i keep their positions while i is replaced or dropped
            if i in kept:
                rows[i] = next(new_rows)
            else:
                del rows[i]
        if len(unsure) > _MOST_PATCHES:  # many pieces: building the columns anew costs less
            return call_block.table(rows)
        fresh_columns = call_block.table(fresh.calls.rows)
        pieces, start, n = [], 0, 0
        for i in unsure:
            if start < i:
                pieces.append(columns.slice(start, i - start))
            if i in kept:
                pieces.append(fresh_columns.slice(n, 1))
                n += 1
            start = i + 1
        pieces.append(columns.slice(start))
        return pa.concat_tables(pieces)

    def _price(self, calls: list[tuple[CallEvent | CleanCallEvent, RawEvent]], result: IngestResult) -> list[int]:
        """Price each call and add its row to ``result``; count the calls no price is known for.

        Returns the positions of the calls counted unpriced. A call whose provider or model the model
        would refuse (personal data, an invisible character) is neither priced nor counted: the
        pricer would log the name it cannot price, and the batch's text check sends it to the model.
        """
        unit_prices = self._pricer.unit_prices
        append = result.calls.append
        unpriced = result.unpriced_calls
        unpriced_at = []
        names_ok = self._names_ok
        for position, (event, record) in enumerate(calls):
            if event.cost_usd is not None:
                cost: float | None = event.cost_usd
                source, units = CALLER_SOURCE, None
            else:
                names = (event.provider, event.model)
                ok = names_ok.get(names)
                if ok is None:
                    if len(names_ok) >= _NAMES_REMEMBERED:
                        names_ok.clear()
                    ok = names_ok[names] = name_problem("provider", names[0]) is name_problem("model", names[1]) is None
                prices = unit_prices(event.provider, event.model, event.ts.date(), event.input_tokens) if ok else None
                if prices is None:
                    cost, source, units = None, "", None
                    if ok:
                        where = (event.provider, event.model, event.ts.date(), event.data_mode)
                        unpriced[where] = unpriced.get(where, 0) + 1
                        unpriced_at.append(position)
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
        return unpriced_at


_NAMES_REMEMBERED = 4096
"""Most (provider, model) pairs the ingestor remembers as screened."""
_MOST_PATCHES = 64
"""Most rows :meth:`Ingestor._revalidate` patches into a batch's columns as slices (zero-copy pieces)."""
_ID_COLUMNS = tuple(LLM_CALL_COLUMNS.index(name) for name in ID_TEXT)
_NAME_COLUMNS = tuple(LLM_CALL_COLUMNS.index(name) for name in NAME_TEXT)
_SEPARATOR = "|"
_SAMPLE = 512
"""How many of a column's first values tell whether it holds few distinct values."""
_PADDED = rf"^ | $|\{_SEPARATOR} | \{_SEPARATOR}"
"""A value of the joined text that starts or ends with a space (and, rarely, a value holding ``| ``)."""
_ID_SUSPECT = f"{ID_CANDIDATES}|{_PADDED}"
_NAME_SUSPECT = f"{NAME_CANDIDATES}|{_PADDED}"
if not set(TEXT_FIELDS) <= set(ID_TEXT + NAME_TEXT):  # pragma: no cover - a mistake caught at import
    raise RuntimeError("streams.ingest checks every text field of the fast decoder")


def _unclean_rows(columns: pa.Table) -> list[int]:
    """Rows with text the fast decoder cannot vouch for: padded, not printable ASCII, or maybe personal data.

    Arrow kernels, in C, instead of checks per value in Python. The candidate patterns are a
    superset of the model's rules (``schemas.privacy``): the model decides, and says why. Also
    searched, though the model does not strip them: the error type and the prompt and arguments
    hashes (one that is padded or not ASCII only costs a trip to the model).
    """
    unclean = None
    for positions, suspect in ((_ID_COLUMNS, _ID_SUSPECT), (_NAME_COLUMNS, _NAME_SUSPECT)):
        found = _suspect_rows([columns.column(i) for i in positions], suspect)
        if found is not None:
            unclean = found if unclean is None else pc.or_(unclean, found)
    if unclean is None:
        return []
    return cast(list[int], pc.indices_nonzero(pc.fill_null(unclean, True)).to_pylist())


def _suspect_rows(columns: list[pa.ChunkedArray], suspect: str) -> pa.BooleanArray | None:
    """Which rows hold text that is not printable ASCII or matches ``suspect``; ``None``: all columns empty.

    A regex search pays about 30 ns per value besides its bytes: a column of few distinct values (a
    model, a tenant) is searched once per distinct value; the others are joined into one string per
    row (``|`` between the values: printable, and a boundary as between values) and searched once.
    """
    found = None
    joined = []
    for column in columns:
        values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if not len(values.buffers()[2] or b""):  # every value empty: nothing to search
            continue
        if len(pc.unique(values.slice(0, _SAMPLE))) * 4 <= min(len(values), _SAMPLE):  # few distinct values
            encoded = pc.dictionary_encode(values)
            bad = pc.take(_suspect_values(encoded.dictionary, suspect), encoded.indices)
            found = bad if found is None else pc.or_(found, bad)
        else:
            joined.append(values)
    if joined:
        text = joined[0] if len(joined) == 1 else pc.binary_join_element_wise(*joined, _SEPARATOR)
        bad = _suspect_values(text, suspect)
        found = bad if found is None else pc.or_(found, bad)
    return found


def _suspect_values(values: pa.Array, suspect: str) -> pa.BooleanArray:
    return pc.or_(pc.invert(pc.ascii_is_printable(values)), pc.match_substring_regex(values, suspect))


def error_kind(exc: ValidationError) -> str:
    return "malformed_json" if exc.errors()[0]["type"] == "json_invalid" else "schema"


def unread_reason(raw: bytes | None, max_event_bytes: int) -> tuple[str, str] | None:
    """Why a record is rejected without being parsed, or None when it can be read."""
    if raw is None:
        return "schema", "empty message (no value): send one JSON object per event"
    if len(raw) > max_event_bytes:
        return "oversize", f"message is {len(raw)} bytes, over the limit of {max_event_bytes}"
    return None


_REDACT_MARGIN = 4096
"""Bytes past the part of an oversize record that is kept, redacted with it: a secret across the cut is caught."""


def rejection(topic: str, record: RawEvent, kind: str, reason: str, keep: int | None = None) -> Rejection:
    """A refused record, as it is stored in ``rejected_events`` and sent to the dead-letter topic.

    Whatever the reason it was refused, its bytes and its event_id are kept with personal data and
    secrets redacted (``schemas.privacy``); so is the reason, made by :func:`describe`. ``keep``: only
    that many bytes of the record will be kept (an oversize one), so only they (and a margin) are
    redacted; its size stays the size received.
    """
    value = record.value or b""
    head = value if keep is None else value[: keep + _REDACT_MARGIN]
    raw = redact_raw(head) if head else b""
    return Rejection(
        topic=topic,
        partition=record.partition,
        offset=record.offset,
        received_at=datetime.now(UTC),
        error_kind=kind,
        reason=reason,
        event_id=_event_id_of(raw) if kind != "oversize" else "",
        raw=raw,
        raw_size=len(value),
    )


def _event_id_of(raw: bytes | None) -> str:
    """The event_id of a rejected event when it can be read, to help find it at the producer."""
    if not raw:
        return ""
    try:
        data = pydantic_core.from_json(raw)  # as the model reads it: an integer over 64 bits included
    except ValueError:
        return ""
    if isinstance(data, dict):
        value = data.get("event_id", data.get("externalRequestId", ""))
        return str(value)[:256]
    return ""
