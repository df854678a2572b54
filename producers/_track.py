"""``track()``: one call event per model or tool call, with timing, usage and the call tree.

A tracked call takes its trace from the call around it (a context variable, so it follows nested
calls and asyncio tasks; :func:`carry_context` takes it into a thread), times itself, records TTFT
when it sees the first chunk of a stream, reads usage from OpenAI and Anthropic responses, and
emits its event when it ends, also when the call raised. Tracking never raises into the host
application: an event spendstream would refuse is logged and counted in :meth:`Tracker.stats`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

from pydantic import ValidationError

from producers._exceptions import EmitterClosedError, SDKError
from producers._guard import BudgetGuard, Decision
from producers._pseudonym import pseudonymize
from producers._pseudonym import user_id_key as user_id_key_of
from producers._usage import Usage, model_from, usage_from
from schemas.call_event import CallEvent

logger = logging.getLogger("spendstream.producers")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

ATTRIBUTION_FIELDS = frozenset(
    {
        "feature", "prompt_version", "agent_id", "task_id", "session_id", "user_id", "tenant_id",
        "team", "environment", "data_mode", "tags",
    }
)  # fmt: skip


class EventSink(Protocol):
    """Where tracked calls go: an :class:`~producers.Emitter`, or anything with its ``emit``."""

    def emit(self, event: CallEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class _Span:
    event_id: str
    trace_id: str


_span: contextvars.ContextVar[_Span | None] = contextvars.ContextVar("spendstream_span", default=None)
_NO_ATTRIBUTION: Mapping[str, Any] = MappingProxyType({})
_attribution: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "spendstream_attribution", default=_NO_ATTRIBUTION
)


@dataclass(frozen=True, slots=True)
class TrackerStats:
    tracked: int
    """Calls whose event was handed to the emitter."""
    invalid: int
    """Calls whose event spendstream would refuse (logged with the reason, not sent)."""


def current_trace() -> tuple[str, str] | None:
    """``(trace_id, event_id)`` of the tracked call in progress here, if any."""
    span = _span.get()
    return (span.trace_id, span.event_id) if span else None


def carry_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` running in the caller's trace and attribution, for a thread pool or another thread.

    ``executor.submit(carry_context(work), item)``: calls tracked inside ``work`` become children
    of the call that submitted it. (asyncio tasks carry it on their own.)
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(fn, *args, **kwargs)

    return run


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return "cancelled"
    names = " ".join(cls.__name__ for cls in type(exc).__mro__)
    if "RateLimit" in names:
        return "rate_limited"
    if "Timeout" in names:
        return "timeout"
    return "error"


class Tracker:
    """Tracks model and tool calls and sends their events through ``emitter``.

    Args:
        emitter: where events go (an :class:`~producers.Emitter`).
        guard: a :class:`~producers.BudgetGuard` asked before every call (budgets, kill switch).
        user_id_key: HMAC key for user ids (default: ``SPENDSTREAM_USER_ID_KEY``); raw user ids
            never leave the process. Without a key, passing a ``user_id`` is an error.
        defaults: attribution for every call (``feature``, ``environment``, ``team``, ...).
    """

    def __init__(
        self,
        emitter: EventSink,
        *,
        user_id_key: str | bytes | None = None,
        guard: BudgetGuard | None = None,
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - ATTRIBUTION_FIELDS
        if unknown:
            raise SDKError(f"unknown attribution {sorted(unknown)}; use any of {sorted(ATTRIBUTION_FIELDS)}")
        self._emitter = emitter
        self._key = user_id_key_of(user_id_key)
        self._check_user_id(defaults)
        self._defaults = dict(defaults)
        self._guard = guard
        self._tracked = 0
        self._invalid = 0

    def track(
        self,
        *,
        provider: str,
        model: str | None = None,
        kind: str = "llm",
        tool_name: str | None = None,
        estimated_usd: float | None = None,
        **fields: Any,
    ) -> TrackedCall:
        """A call to track: ``with tracker.track(provider="openai", model="gpt-4o") as call:``.

        Also a decorator (``@tracker.track(...)``) for sync and async functions: each invocation is
        one call, and a returned response's usage is recorded. ``fields`` are any event fields
        (``feature``, ``agent_id``, ``prompt_hash``, ``trace_id`` for a root call, ...).

        With a guard (``Tracker(..., guard=BudgetGuard(...))``), entering the call asks it first: a
        denied call raises :class:`BudgetExceededError` before it is made, a throttled one waits, a
        downgraded one gets its cheaper model in ``call.model``. ``estimated_usd`` (see
        ``BudgetGuard.estimate_usd``) lets the guard refuse a call that would pass a limit.
        """
        self._check_user_id(fields)
        if kind == "tool" and model is None:
            model = tool_name  # a tool has no model: its name stands in, so its calls can be priced by override
        return TrackedCall(
            self, estimated_usd, provider=provider, model=model, kind=kind, tool_name=tool_name, **fields
        )

    @contextmanager
    def attribute(self, **fields: Any) -> Iterator[None]:
        """Attribution for every call tracked inside: ``with tracker.attribute(session_id=s, agent_id="coder"):``."""
        unknown = set(fields) - ATTRIBUTION_FIELDS
        if unknown:
            raise SDKError(f"unknown attribution {sorted(unknown)}; use any of {sorted(ATTRIBUTION_FIELDS)}")
        self._check_user_id(fields)
        token = _attribution.set({**_attribution.get(), **fields})
        try:
            yield
        finally:
            _attribution.reset(token)

    def stats(self) -> TrackerStats:
        return TrackerStats(self._tracked, self._invalid)

    def _check_user_id(self, fields: Mapping[str, Any]) -> None:
        if fields.get("user_id") is not None and self._key is None:
            raise SDKError(
                "a user_id was given but no key to pseudonymize it: set SPENDSTREAM_USER_ID_KEY or "
                "Tracker(user_id_key=...); raw user ids are never sent"
            )

    def _pseudonymous(self, user_id: Any) -> str | None:
        if user_id is None or self._key is None:
            return None
        return pseudonymize(str(user_id), self._key)

    def _send(self, fields: dict[str, Any]) -> None:
        try:
            event = CallEvent.model_validate(fields)
        except ValidationError as exc:
            self._invalid += 1
            logger.warning("spendstream: call %s not sent, it is not a valid event: %s", fields.get("event_id"), exc)
            return
        try:
            self._emitter.emit(event)
        except EmitterClosedError:
            self._invalid += 1
            logger.warning("spendstream: call %s not sent, the emitter is closed", event.event_id)
            return
        self._tracked += 1


class TrackedCall:
    """One model or tool call being tracked; see :meth:`Tracker.track`."""

    def __init__(self, tracker: Tracker, estimated_usd: float | None = None, **fields: Any) -> None:
        self._tracker = tracker
        self._fields = fields
        self._usage = Usage()
        self._model: str | None = fields.get("model")
        self._extra: dict[str, Any] = {}
        self._started = 0.0
        self._first_token: float | None = None
        self._ts: datetime | None = None
        self._token: contextvars.Token[_Span | None] | None = None
        self.event_id = ""
        self.trace_id = ""
        self.parent_id: str | None = None
        self.estimated_usd = estimated_usd
        self.decision: Decision | None = None
        """The guard's decision for this call (None without a guard)."""

    @property
    def model(self) -> str | None:
        """The model to call: the one asked for, or the cheaper one a downgrading budget names."""
        return self._model

    # -- what the caller reports ------------------------------------------------------------------

    def record(self, response: T) -> T:
        """Take usage and the serving model from a response or stream event; returns it unchanged."""
        usage = usage_from(response)
        if usage is not None:
            self._usage = self._usage.merge(usage)
        if self._fields.get("model") is None:
            self._model = model_from(response) or self._model
        return response

    def usage(self, **tokens: int) -> None:
        """Token counts stated by the caller (``input_tokens=..., output_tokens=...``), in spendstream's convention."""
        self._usage = self._usage.merge(Usage(**tokens))

    def first_token(self) -> None:
        """Mark the first token of a streamed answer (TTFT); later marks are ignored."""
        if self._first_token is None:
            self._first_token = time.perf_counter()

    def set(self, **fields: Any) -> None:
        """More event fields, e.g. ``status="error"`` for an answer that failed without raising."""
        self._extra.update(fields)

    def stream(self, chunks: Iterable[T]) -> Iterator[T]:
        """Pass a stream through, recording TTFT at its first chunk and the usage it reports."""
        for chunk in chunks:
            self.first_token()
            yield self.record(chunk)

    async def astream(self, chunks: AsyncIterable[T]) -> AsyncIterator[T]:
        """:meth:`stream` for an async stream."""
        async for chunk in chunks:
            self.first_token()
            yield self.record(chunk)

    # -- context manager --------------------------------------------------------------------------

    def _ask_guard(self, wait: bool) -> Decision | None:
        guard = self._tracker._guard
        if guard is None:
            return None
        keys = {**self._tracker._defaults, **_attribution.get(), **self._fields}
        keys["user_id"] = self._tracker._pseudonymous(keys.get("user_id"))
        keys.pop("model", None)
        self.decision = guard.enforce(model=self._model, estimated_usd=self.estimated_usd, wait=wait, **keys)
        self._model = self.decision.model or self._model
        return self.decision

    def __enter__(self) -> TrackedCall:
        self._ask_guard(wait=True)
        return self._start()

    def _start(self) -> TrackedCall:
        parent = _span.get()
        self.event_id = uuid.uuid4().hex
        self.trace_id = parent.trace_id if parent else str(self._fields.get("trace_id") or self.event_id)
        self.parent_id = parent.event_id if parent else self._fields.get("parent_id")
        self._token = _span.set(_Span(self.event_id, self.trace_id))
        self._ts = datetime.now(UTC)
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ended = time.perf_counter()
        if self._token is not None:
            _span.reset(self._token)
            self._token = None
        fields = {
            **self._tracker._defaults,
            **_attribution.get(),
            **{k: v for k, v in self._fields.items() if k not in ("trace_id", "parent_id")},
            "event_id": self.event_id,
            "ts": self._ts,
            "trace_id": self.trace_id,
            "parent_id": self.parent_id,
            "model": self._model,
            "latency_ms": round((ended - self._started) * 1000, 3),
            "ttft_ms": round((self._first_token - self._started) * 1000, 3) if self._first_token else None,
            "input_tokens": self._usage.input_tokens,
            "output_tokens": self._usage.output_tokens,
            "cache_read_tokens": self._usage.cache_read_tokens,
            "cache_write_tokens": self._usage.cache_write_tokens,
            "reasoning_tokens": self._usage.reasoning_tokens,
        }
        if exc is not None:
            fields["status"] = _status_of(exc)
            fields["error_type"] = type(exc).__name__
        fields.update(self._extra)
        fields["user_id"] = self._tracker._pseudonymous(fields.get("user_id"))
        self._tracker._send({k: v for k, v in fields.items() if v is not None})

    async def __aenter__(self) -> TrackedCall:
        decision = self._ask_guard(wait=False)
        if decision is not None and decision.delay_seconds:
            await asyncio.sleep(decision.delay_seconds)
        return self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator --------------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        tracker, fields, estimate = self._tracker, self._fields, self.estimated_usd
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def tracked_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with TrackedCall(tracker, estimate, **fields) as call:
                    return call.record(await fn(*args, **kwargs))

            return tracked_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            with TrackedCall(tracker, estimate, **fields) as call:
                return call.record(fn(*args, **kwargs))

        return tracked
