"""Errors of the SDK.

SpendstreamError (schemas.exceptions)
└── SDKError
    ├── EmitterClosedError            emit() after close()
    └── CallRefused                   a tracked call stopped before it was made
        ├── BudgetExceededError       a budget or the kill switch denies it (the guard)
        ├── SessionLimitExceeded      it would pass a governor's cap (tokens, tool calls, cost, minutes)
        ├── CostConfirmationRequired  its estimate is above the per-action ceiling, and was not confirmed
        └── CircuitOpen               its tool or model failed too often lately: failing fast
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.exceptions import SpendstreamError

if TYPE_CHECKING:
    from producers._governor import Governor
    from producers._guard import Decision


class SDKError(SpendstreamError):
    """Root of the SDK's errors."""


class EmitterClosedError(SDKError):
    def __init__(self) -> None:
        super().__init__("the emitter is closed: create a new Emitter to send more events")


class CallRefused(SDKError):
    """A tracked call was stopped before it was made: catch this to handle every guardrail at once."""


class BudgetExceededError(CallRefused):
    """A budget or the kill switch denies the call; ``decision`` says which and why."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"spendstream guard denied the call: {decision.reason}")
        self.decision = decision


_UNITS = {"tokens": "tokens", "tool_calls": "tool calls", "cost_usd": "USD", "minutes": "minutes"}
_LABELS = {"tokens": "tokens", "tool_calls": "tool calls", "cost_usd": "cost", "minutes": "minutes"}


def _amount(limit: str, value: float) -> str:
    if limit == "cost_usd":
        return f"${value:,.4f}"
    if limit == "minutes":
        return f"{value:,.2f} minutes"
    return f"{value:,.0f} {_UNITS[limit]}"


class SessionLimitExceeded(CallRefused):
    """The call would take a session, a request or a user's day past a governor's cap.

    Attributes:
        limit: which cap: ``tokens``, ``tool_calls``, ``cost_usd`` or ``minutes``.
        per: ``session``, ``request`` or ``user_day``.
        key: the session id (or trace id), the trace id, or the user id (as the application gave it).
        used: what the session (request, user's day) has used of it so far.
        requested: what this call adds: its estimate (tokens, USD), 1 for a tool call, 0 when unknown.
        cap: the governor's cap.
        governor: the governor whose cap it is.
    """

    def __init__(
        self, limit: str, per: str, key: str, used: float, requested: float, cap: float, governor: Governor
    ) -> None:
        self.limit = limit
        self.per = per
        self.key = key
        self.used = used
        self.requested = requested
        self.cap = cap
        self.governor = governor
        whose = "this user's day (UTC)" if per == "user_day" else f"{per} {key}"
        if limit == "minutes":
            what = f"{whose} has run {_amount(limit, used)}, past its cap of {_amount(limit, cap)}"
        elif limit == "tool_calls":
            what = f"{whose} has made {_amount(limit, used)}: this one would pass its cap of {_amount(limit, cap)}"
        elif requested:
            what = (
                f"{whose} has used {_amount(limit, used)}, and this call's {_amount(limit, requested)} "
                f"would pass its cap of {_amount(limit, cap)}"
            )
        else:
            what = f"{whose} has used {_amount(limit, used)} of its cap of {_amount(limit, cap)}"
        super().__init__(
            f"spendstream stopped the call before it was made: {what} ({governor.describe()}). "
            f"End the {'day' if per == 'user_day' else per} here, or raise the governor's max_{limit}"
        )

    @property
    def reason(self) -> str:
        """Short, for the refused call's event (``error_type``): ``SessionLimitExceeded: tokens per session``."""
        return f"{type(self).__name__}: {_LABELS[self.limit]} per {self.per.replace('_', ' ')}"


class CostConfirmationRequired(CallRefused):
    """The call's estimate is above the per-action ceiling and the caller did not confirm that much.

    Attributes:
        estimated_usd: the call's estimate.
        ceiling_usd: the governor's ceiling per action.
        confirmed_usd: what the caller confirmed (``confirm_usd=``), None if nothing.
        governor: the governor whose ceiling it is.
    """

    def __init__(
        self, estimated_usd: float, ceiling_usd: float, confirmed_usd: float | None, governor: Governor
    ) -> None:
        self.estimated_usd = estimated_usd
        self.ceiling_usd = ceiling_usd
        self.confirmed_usd = confirmed_usd
        self.governor = governor
        confirmed = "" if confirmed_usd is None else f" (confirmed: only ${confirmed_usd:,.4f})"
        super().__init__(
            f"spendstream stopped the call before it was made: its estimate of ${estimated_usd:,.4f} is above "
            f"the ceiling of ${ceiling_usd:,.4f} per action ({governor.describe()}){confirmed}. To go ahead, "
            f"track it with confirm_usd={estimated_usd:.4f} or more"
        )

    @property
    def reason(self) -> str:
        """Short, for the refused call's event (``error_type``)."""
        return f"{type(self).__name__}: estimate over the ceiling per action"


class CircuitOpen(CallRefused):
    """The call's tool or model failed too often lately; calls fail fast until a trial call succeeds.

    Attributes:
        breaker: ``tool:NAME`` or ``model:PROVIDER/MODEL``.
        failures: the failures that opened it.
        window_seconds: within how long they came.
        retry_in_seconds: when one trial call will go through (0: a trial is in flight now).
    """

    def __init__(self, breaker: str, failures: int, window_seconds: float, retry_in_seconds: float) -> None:
        self.breaker = breaker
        self.failures = failures
        self.window_seconds = window_seconds
        self.retry_in_seconds = retry_in_seconds
        when = (
            "a trial call is in flight; the breaker closes if it succeeds"
            if retry_in_seconds <= 0
            else f"one trial call goes through in {retry_in_seconds:,.1f} s"
        )
        super().__init__(
            f"circuit open for {breaker} after {failures} failures within {window_seconds:,.0f} s: "
            f"calls fail fast, not made; {when} (tracker.stats().breakers)"
        )
