"""``track()``: one call event per model or tool call, with timing, usage and the call tree.

A tracked call takes its trace from the call around it (a context variable, so it follows nested
calls and asyncio tasks; :func:`carry_context` takes it into a thread), times itself, records TTFT
when it sees the first chunk of a stream, reads usage from OpenAI and Anthropic responses, and
emits its event when it ends, also when the call raised. Tracking never raises into the host
application: an event spendstream would refuse is logged and counted in :meth:`Tracker.stats`.

Before a call is made the tracker applies the guardrails the application set, all in process: its
governors (caps per session, request and user's day; a ceiling per action), stuck detection (the
``on_stuck`` hook), the budget guard and kill switch, and the circuit breakers. A call refused by a
governor, the ceiling or the hook raises and is sent as an event with status ``cancelled`` and the
reason in ``error_type``; the guard's denials and an open breaker's fast failures are counted, not
sent (during an incident they come by the thousand).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from pydantic import ValidationError

from producers._args import args_hash, args_key
from producers._breaker import Breakers, BreakerState, CircuitBreakers
from producers._exceptions import CostConfirmationRequired, EmitterClosedError, SDKError, SessionLimitExceeded
from producers._governor import Admission, CallPlan, Governance, Governor
from producers._guard import BudgetGuard, Decision
from producers._pseudonym import pseudonymize
from producers._pseudonym import user_id_key as user_id_key_of
from producers._stuck import Stuck, StuckRule, StuckWatch
from producers._usage import Usage, model_from, usage_from
from schemas.budget import WORKFLOW_TAG
from schemas.call_event import MAX_TAGS, CallEvent

if TYPE_CHECKING:
    from schemas.config import PriceOverride
    from streams.pricing import Pricer

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
    workflow: str | None = None
    """The feature of the trace's root call (or the ``workflow`` tag a call of it was given)."""


_span: contextvars.ContextVar[_Span | None] = contextvars.ContextVar("spendstream_span", default=None)
_NO_ATTRIBUTION: Mapping[str, Any] = MappingProxyType({})
_attribution: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "spendstream_attribution", default=_NO_ATTRIBUTION
)


DEFAULT_STUCK_RULE = StuckRule()


@dataclass(frozen=True, slots=True)
class TrackerStats:
    tracked: int
    """Calls whose event was handed to the emitter."""
    invalid: int
    """Calls whose event spendstream would refuse (logged with the reason, not sent)."""
    refused: int = 0
    """Calls stopped before they were made by a governor, the ceiling per action or the ``on_stuck``
    hook (their events are sent, status ``cancelled``)."""
    stuck: int = 0
    """Times a session looked stuck (the ``on_stuck`` hook was called)."""
    fast_failed: int = 0
    """Calls an open circuit breaker failed fast (not made, not sent)."""
    breakers: Mapping[str, BreakerState] = field(default_factory=dict)
    """Each breaker that has seen a failure: ``tool:NAME`` or ``model:PROVIDER/MODEL``."""


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


def log_stuck(stuck: Stuck) -> None:
    """The default ``on_stuck`` hook: log it (the tracker counts it in ``stats().stuck``)."""
    logger.warning(
        "spendstream: session %s looks stuck: %s; the call goes ahead (register Tracker(on_stuck=...) to act)",
        stuck.session,
        stuck.reason,
    )


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
        governors: caps per session, request or user's day, and ceilings per action
            (:class:`~producers.Governor`); none by default.
        breakers: circuit breakers per tool and per model (:class:`~producers.CircuitBreakers`);
            off by default.
        stuck: when a session looks stuck (:class:`~producers.StuckRule`); None turns it off.
        on_stuck: called with a :class:`~producers.Stuck` before the call of a stuck session; raise
            in it to stop the call. The default logs (and the tracker counts it).
        price_overrides: prices of self-hosted or negotiated models (the config's
            ``prices.overrides``), to count the cost of calls under a cost cap; the guard's by default.
        defaults: attribution for every call (``feature``, ``environment``, ``team``, ...).
    """

    def __init__(
        self,
        emitter: EventSink,
        *,
        user_id_key: str | bytes | None = None,
        guard: BudgetGuard | None = None,
        governors: Sequence[Governor] = (),
        breakers: CircuitBreakers | None = None,
        stuck: StuckRule | None = DEFAULT_STUCK_RULE,
        on_stuck: Callable[[Stuck], None] = log_stuck,
        price_overrides: Sequence[PriceOverride] = (),
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - ATTRIBUTION_FIELDS
        if unknown:
            raise SDKError(f"unknown attribution {sorted(unknown)}; use any of {sorted(ATTRIBUTION_FIELDS)}")
        self._emitter = emitter
        self._key = user_id_key_of(user_id_key)
        self._args_key = args_key(self._key)
        self._check_user_id(defaults)
        self._defaults = dict(defaults)
        self._guard = guard
        self._governance = Governance(governors) if governors else None
        self._breakers = Breakers(breakers) if breakers is not None else None
        self._stuck = StuckWatch(stuck) if stuck is not None else None
        self._on_stuck = on_stuck
        self._overrides = tuple(price_overrides) or (guard.price_overrides if guard is not None else ())
        self._pricer: Pricer | None = None
        self._tracked = 0
        self._invalid = 0
        self._refused = 0
        self._stuck_seen = 0

    def track(
        self,
        *,
        provider: str,
        model: str | None = None,
        kind: str = "llm",
        tool_name: str | None = None,
        args: Any = None,
        estimated_usd: float | None = None,
        estimated_tokens: int | None = None,
        confirm_usd: float | None = None,
        **fields: Any,
    ) -> TrackedCall:
        """A call to track: ``with tracker.track(provider="openai", model="gpt-4o") as call:``.

        Also a decorator (``@tracker.track(...)``) for sync and async functions: each invocation is
        one call, and a returned response's usage is recorded. ``fields`` are any event fields
        (``feature``, ``agent_id``, ``prompt_hash``, ``trace_id`` for a root call, ...).

        ``args``: a tool call's arguments (``kind="tool"``; ``{}`` for a tool that takes none). They
        never leave the process: the event carries their ``args_hash`` (``producers._args``: keyed
        with the user id key when the tracker has one), so that the same call repeated is seen, here
        (``StuckRule.args_repeats``) and in the stream (``loop_detected``). A hash made elsewhere can be
        given as ``args_hash=`` instead. Arguments JSON cannot say (a set, bytes, an object of your
        own) are logged and sent without a hash. Not with the decorator: the same arguments for every
        call would make each a repeat (:class:`SDKError`).

        Entering the call applies the guardrails first, and raises before the call is made:
        :class:`SessionLimitExceeded` when it would pass a governor's cap,
        :class:`CostConfirmationRequired` when its estimate is above a ceiling per action and
        ``confirm_usd`` does not cover it, :class:`BudgetExceededError` when the guard's budgets or
        kill switch deny it (a throttled call waits, a downgraded one gets its cheaper model in
        ``call.model``), :class:`CircuitOpen` when its tool's or model's breaker is open; a stuck
        session calls the ``on_stuck`` hook. ``estimated_usd`` (see ``BudgetGuard.estimate_usd``)
        and ``estimated_tokens`` (prompt plus the most it may generate) let them refuse the call
        that would pass a limit, not only the one after.
        """
        self._check_user_id(fields)
        if args is not None or fields.get("args_hash") is not None:
            self._hash_args(kind, tool_name, args, fields)
        if kind == "tool" and model is None:
            model = tool_name  # a tool has no model: its name stands in, so its calls can be priced by override
        return TrackedCall(
            self, estimated_usd, estimated_tokens=estimated_tokens, confirm_usd=confirm_usd,
            provider=provider, model=model, kind=kind, tool_name=tool_name, **fields,
        )  # fmt: skip

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
        breakers = self._breakers.states() if self._breakers is not None else {}
        fast_failed = sum(breaker.fast_failed for breaker in breakers.values())
        return TrackerStats(self._tracked, self._invalid, self._refused, self._stuck_seen, fast_failed, breakers)

    def _check_user_id(self, fields: Mapping[str, Any]) -> None:
        if fields.get("user_id") is not None and self._key is None:
            raise SDKError(
                "a user_id was given but no key to pseudonymize it: set SPENDSTREAM_USER_ID_KEY or "
                "Tracker(user_id_key=...); raw user ids are never sent"
            )

    def _hash_args(self, kind: str, tool_name: str | None, args: Any, fields: dict[str, Any]) -> None:
        """Put the ``args_hash`` of ``args`` into ``fields``; refuse arguments given where they mean nothing."""
        given = "args" if args is not None else "args_hash"
        if kind != "tool":
            raise SDKError(
                f"{given}= is for a tool call's arguments: track it with kind='tool' and tool_name "
                "(a model call's prompt has prompt_hash)"
            )
        if args is None:
            return
        if fields.get("args_hash") is not None:
            raise SDKError("both args= and args_hash= given: give the arguments, or a hash you made of them")
        try:
            fields["args_hash"] = args_hash(args, self._args_key)
        except TypeError as exc:  # its message names a type, never a value: the arguments stay here
            logger.warning(
                "spendstream: the arguments of tool %s cannot be written as JSON (%s): its call is sent "
                "without args_hash, so its repeats go unseen; pass JSON-like values (dicts, lists, str, numbers)",
                tool_name,
                exc,
            )

    def _pseudonymous(self, user_id: Any) -> str | None:
        if user_id is None or self._key is None:
            return None
        return pseudonymize(str(user_id), self._key)

    def _cost_usd(self, provider: str, model: str | None, usage: Usage) -> float | None:
        """What a call cost by its usage, priced as the pipeline would; None for an unpriced model."""
        if model is None:
            return None
        if self._pricer is None:
            from streams.pricing import Pricer

            self._pricer = Pricer(self._overrides)
        unit = self._pricer.unit_prices(provider, model, datetime.now(UTC).date(), usage.input_tokens)
        if unit is None:
            return None
        return unit.cost(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)

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

    def __init__(
        self,
        tracker: Tracker,
        estimated_usd: float | None = None,
        *,
        estimated_tokens: int | None = None,
        confirm_usd: float | None = None,
        **fields: Any,
    ) -> None:
        self._tracker = tracker
        self._fields = fields
        self._keys: dict[str, Any] = {}
        self._usage = Usage()
        self._model: str | None = fields.get("model")
        self._extra: dict[str, Any] = {}
        self._started = 0.0
        self._first_token: float | None = None
        self._ts: datetime | None = None
        self._token: contextvars.Token[_Span | None] | None = None
        self._admission: Admission | None = None
        self._breaker: str | None = None
        self._trial = False
        self.event_id = ""
        self.trace_id = ""
        self.parent_id: str | None = None
        self.workflow: str | None = None
        """The feature of the trace's root call, or the ``workflow`` tag given: what workflow budgets count."""
        self.estimated_usd = estimated_usd
        self.estimated_tokens = estimated_tokens
        self.confirm_usd = confirm_usd
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

    # -- before the call: the guardrails ----------------------------------------------------------

    def _admit(self, wait: bool) -> Decision | None:
        """Apply the guardrails in order (governors, stuck detection, the guard, the breaker); the
        guard's decision. Whatever refuses the call raises; what was held for it is given back."""
        tracker = self._tracker
        fields = self._fields
        self._keys = keys = {**tracker._defaults, **_attribution.get(), **fields}
        parent = _span.get()
        self.event_id = uuid.uuid4().hex
        self.trace_id = parent.trace_id if parent else str(fields.get("trace_id") or self.event_id)
        self.parent_id = parent.event_id if parent else fields.get("parent_id")
        tags = keys.get("tags")
        tagged = tags.get(WORKFLOW_TAG) if isinstance(tags, Mapping) else None
        # the root's feature; a call continuing a trace of another process knows its workflow only if tagged
        self.workflow = tagged or (parent.workflow if parent else None if self.parent_id else keys.get("feature"))
        if tracker._governance is not None or tracker._stuck is not None:
            try:
                self._govern(keys)
            except BaseException as exc:
                self._release()
                tracker._refused += 1
                self._send_refused(exc)
                raise
        try:
            decision = self._ask_guard(keys, wait)
            breakers = tracker._breakers
            if breakers is not None:
                key = breakers.key(keys.get("kind", "llm"), keys["provider"], self._model, keys.get("tool_name"))
                if key is not None:
                    self._trial = breakers.admit(key)
                    self._breaker = key
        except BaseException:
            self._release()
            raise
        return decision

    def _govern(self, keys: dict[str, Any]) -> None:
        tracker = self._tracker
        session = str(keys.get("session_id") or self.trace_id)
        kind = keys.get("kind", "llm")
        if tracker._governance is not None:
            user_id = keys.get("user_id")
            plan = CallPlan(
                kind, keys.get("feature"), keys.get("agent_id"), session, self.trace_id,
                None if user_id is None else str(user_id), self.estimated_tokens, self.estimated_usd, self.confirm_usd,
            )  # fmt: skip
            self._admission = tracker._governance.admit(plan)
        tool_name = keys.get("tool_name") if kind == "tool" else None
        prompt_hash = keys.get("prompt_hash")
        if tracker._stuck is not None and (tool_name is not None or prompt_hash is not None):
            attempt = keys.get("attempt") or 1
            found = tracker._stuck.observe(session, tool_name, prompt_hash, attempt, keys.get("args_hash"))
            if found is not None:
                tracker._stuck_seen += 1
                tracker._on_stuck(Stuck(session, *found, call=self))

    def _ask_guard(self, keys: dict[str, Any], wait: bool) -> Decision | None:
        guard = self._tracker._guard
        if guard is None:
            return None
        asked = {**keys, "user_id": self._tracker._pseudonymous(keys.get("user_id"))}
        asked.pop("model", None)
        if self.workflow:
            asked["workflow"] = self.workflow
        self.decision = guard.enforce(model=self._model, estimated_usd=self.estimated_usd, wait=wait, **asked)
        self._model = self.decision.model or self._model
        return self.decision

    def _release(self) -> None:
        """The call is not made: give back what the governors and the breaker held for it."""
        tracker = self._tracker
        if self._admission is not None and tracker._governance is not None:
            tracker._governance.release(self._admission)
        if self._breaker is not None and tracker._breakers is not None:
            tracker._breakers.release(self._breaker, self._trial)
        self._admission = self._breaker = None

    def _send_refused(self, exc: BaseException) -> None:
        """The event of a call refused before it was made: status cancelled, the reason in error_type."""
        reason = exc.reason if isinstance(exc, SessionLimitExceeded | CostConfirmationRequired) else type(exc).__name__
        self._ts = datetime.now(UTC)
        fields = self._event(0.0)
        fields["status"] = "cancelled"
        fields["error_type"] = reason
        self._tracker._send({k: v for k, v in fields.items() if v is not None})

    # -- context manager --------------------------------------------------------------------------

    def __enter__(self) -> TrackedCall:
        self._admit(wait=True)
        return self._start()

    def _start(self) -> TrackedCall:
        self._token = _span.set(_Span(self.event_id, self.trace_id, self.workflow))
        self._ts = datetime.now(UTC)
        self._started = time.perf_counter()
        return self

    def _event(self, latency_ms: float) -> dict[str, Any]:
        """The call's event fields, before ``None`` values are dropped."""
        fields = {k: v for k, v in self._keys.items() if k not in ("trace_id", "parent_id")}
        fields.update(
            event_id=self.event_id,
            ts=self._ts,
            trace_id=self.trace_id,
            parent_id=self.parent_id,
            model=self._model,
            latency_ms=latency_ms,
            ttft_ms=round((self._first_token - self._started) * 1000, 3) if self._first_token else None,
            input_tokens=self._usage.input_tokens,
            output_tokens=self._usage.output_tokens,
            cache_read_tokens=self._usage.cache_read_tokens,
            cache_write_tokens=self._usage.cache_write_tokens,
            reasoning_tokens=self._usage.reasoning_tokens,
        )
        fields["user_id"] = self._tracker._pseudonymous(fields.get("user_id"))
        tags = fields.get("tags") or {}
        if self.workflow and self.parent_id and WORKFLOW_TAG not in tags and len(tags) < MAX_TAGS:
            fields["tags"] = {**tags, WORKFLOW_TAG: self.workflow}  # a root call's workflow is its own feature
        return fields

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ended = time.perf_counter()
        if self._token is not None:
            _span.reset(self._token)
            self._token = None
        fields = self._event(round((ended - self._started) * 1000, 3))
        if exc is not None:
            fields["status"] = _status_of(exc)
            fields["error_type"] = type(exc).__name__
        if self._extra:
            fields.update(self._extra)
            if "user_id" in self._extra:
                fields["user_id"] = self._tracker._pseudonymous(fields["user_id"])
        if self._admission is not None or self._breaker is not None:
            self._settle(fields)
        self._tracker._send({k: v for k, v in fields.items() if v is not None})

    def _settle(self, fields: dict[str, Any]) -> None:
        """Count what the call used under its governors, and how it ended in its breaker."""
        tracker = self._tracker
        admission = self._admission
        if admission is not None and tracker._governance is not None:
            usage = self._usage
            cost = 0.0
            if admission.needs_cost:
                stated = fields.get("cost_usd")
                cost = stated if isinstance(stated, int | float) else (
                    tracker._cost_usd(fields["provider"], self._model, usage) or self.estimated_usd or 0.0
                )  # fmt: skip
            tracker._governance.settle(admission, usage.input_tokens + usage.output_tokens, cost)
            self._admission = None
        if self._breaker is not None and tracker._breakers is not None:
            tracker._breakers.record(self._breaker, fields.get("status", "success"), self._trial)
            self._breaker = None

    async def __aenter__(self) -> TrackedCall:
        decision = self._admit(wait=False)
        if decision is not None and decision.delay_seconds:
            try:
                await asyncio.sleep(decision.delay_seconds)
            except BaseException:
                self._release()
                raise
        return self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator --------------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if self._fields.get("args_hash"):
            raise SDKError(
                f"args given to @track on {getattr(fn, '__qualname__', fn)!r} would be the same for every call, "
                "each then a repeat: track each call's own arguments with `with tracker.track(..., args=...)`"
            )
        fresh = functools.partial(
            TrackedCall, self._tracker, self.estimated_usd, estimated_tokens=self.estimated_tokens,
            confirm_usd=self.confirm_usd, **self._fields,
        )  # fmt: skip
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def tracked_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with fresh() as call:
                    return call.record(await fn(*args, **kwargs))

            return tracked_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            with fresh() as call:
                return call.record(fn(*args, **kwargs))

        return tracked
