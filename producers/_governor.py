"""Governors: caps on what a session, a request or a user's day may use, enforced before each call.

A :class:`Governor` caps tokens, tool calls, cost and wall-clock minutes ``per`` session (or, for
calls without a ``session_id``, per trace), per request (trace) or per user per UTC day, for every
call or for one feature or agent; ``per="action"`` is a ceiling on one call's estimated cost that
the caller can pass only by confirming it (``confirm_usd=``). Nothing is governed unless the
application says so: a governor that names no limit takes the practice's four (20,000 tokens, 15
tool calls, $0.50 and 2 minutes per session).

The tracker asks :class:`Governance` before each call, in process and without a network call. A
call is refused when what it adds would pass a cap: its estimate when the caller gives one
(``estimated_tokens``, ``estimated_usd``), one tool call for a tool call, and, without an estimate,
a model call is refused once a cap is reached. What a call is estimated to use is held while it
runs ("used" in a refusal counts it), so parallel calls cannot all pass the last of a cap. Usage is
counted when a call ends (its tokens, and its cost: the one it states, else priced from its usage,
else its estimate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from producers._exceptions import CostConfirmationRequired, SDKError, SessionLimitExceeded
from producers._sessions import IDLE_SECONDS, IdleMap

if TYPE_CHECKING:
    from schemas.config import SessionCap

Per = Literal["session", "request", "user_day", "action"]
PERS: tuple[Per, ...] = ("session", "request", "user_day", "action")

DEFAULT_MAX_TOKENS = 20_000
DEFAULT_MAX_TOOL_CALLS = 15
DEFAULT_MAX_COST_USD = 0.50
DEFAULT_MAX_MINUTES = 2.0


@dataclass(frozen=True, slots=True)
class Governor:
    """Caps per session, request or user's day, for every call or for one feature or agent.

    ``Governor()`` alone caps every session at the practice's defaults (20,000 tokens, 15 tool
    calls, $0.50, 2 minutes). A governor naming a feature or an agent governs that feature's or
    agent's calls in place of the governors naming neither (as a key's own budget wins over ``*``);
    a call whose feature and agent each have one is held to both.

    Args:
        per: ``session`` (the ``session_id``; the trace for calls without one), ``request`` (the
            trace), ``user_day`` (the ``user_id``, per UTC day, in this process) or ``action`` (one
            call: ``max_cost_usd`` is a ceiling on its ``estimated_usd`` that ``confirm_usd=`` lifts).
        feature: govern only the calls of this feature.
        agent_id: govern only the calls of this agent.
        max_tokens: input plus output tokens.
        max_tool_calls: tool calls (``kind="tool"``).
        max_cost_usd: dollars: what calls stated, else their usage priced, else their estimates.
        max_minutes: wall clock from the first call (of the session or request) to this one.
    """

    per: Per = "session"
    feature: str | None = None
    agent_id: str | None = None
    max_tokens: int | None = None
    max_tool_calls: int | None = None
    max_cost_usd: float | None = None
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.per not in PERS:
            raise SDKError(f"Governor per={self.per!r}: use one of {', '.join(PERS)}")
        if self.feature is not None and self.agent_id is not None:
            raise SDKError(
                "a Governor names a feature or an agent_id, not both: make one of each "
                "(a call is held to both its feature's and its agent's)"
            )
        for name in ("max_tokens", "max_tool_calls", "max_cost_usd", "max_minutes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise SDKError(f"Governor {name}={value!r}: a limit is a number above 0 (None for no limit)")
        limits = (self.max_tokens, self.max_tool_calls, self.max_cost_usd, self.max_minutes)
        if all(limit is None for limit in limits):
            if self.per in ("user_day", "action"):
                raise SDKError(f"a Governor per {self.per} has no default limit: name one (max_cost_usd=...)")
            for name, default in (
                ("max_tokens", DEFAULT_MAX_TOKENS), ("max_tool_calls", DEFAULT_MAX_TOOL_CALLS),
                ("max_cost_usd", DEFAULT_MAX_COST_USD), ("max_minutes", DEFAULT_MAX_MINUTES),
            ):  # fmt: skip
                object.__setattr__(self, name, default)
        if self.per == "action" and (self.max_tokens, self.max_tool_calls, self.max_minutes) != (None, None, None):
            raise SDKError("a Governor per action has one limit, max_cost_usd: the most one call may be estimated at")
        if self.per == "user_day" and self.max_minutes is not None:
            raise SDKError("a Governor per user_day cannot cap minutes: cap tokens, tool calls or cost")

    @classmethod
    def from_cap(cls, cap: SessionCap, per: Per = "session") -> Governor:
        """The SDK's side of a cap in the config file (``detectors.session_budget.caps``): the stream
        alerts on a session past it, the tracker stops the call that would pass it."""
        return cls(
            per=per, feature=cap.feature, agent_id=cap.agent_id, max_tokens=cap.max_tokens,
            max_tool_calls=cap.max_tool_calls, max_cost_usd=cap.max_cost_usd, max_minutes=cap.max_minutes,
        )  # fmt: skip

    def describe(self) -> str:
        """``Governor(per='session', feature='support.chat')``: which governor, without its limits."""
        if self.feature is not None:
            return f"Governor(per={self.per!r}, feature={self.feature!r})"
        if self.agent_id is not None:
            return f"Governor(per={self.per!r}, agent_id={self.agent_id!r})"
        return f"Governor(per={self.per!r})"


@dataclass(slots=True)
class CallPlan:
    """What the governors know of a call before it is made."""

    kind: str
    feature: str | None
    agent_id: str | None
    session: str
    """The session id, or the trace id for a call without one."""
    trace_id: str
    user_id: str | None
    estimated_tokens: int | None
    estimated_usd: float | None
    confirm_usd: float | None


@dataclass(slots=True)
class _Use:
    """What one session (request, user's day) has used under one governor."""

    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    held_tokens: int = 0
    """Tokens held for calls admitted and still running."""
    held_usd: float = 0.0


@dataclass(slots=True)
class Admission:
    """What an admitted call holds: settled when it ends, released if it is not made after all."""

    uses: list[_Use]
    tokens: int
    usd: float
    tool: bool
    needs_cost: bool
    """A governor of the call caps cost: the tracker prices the call when it ends."""


_Rules = tuple[dict[str, list[tuple[int, Governor]]], dict[str, list[tuple[int, Governor]]], list[tuple[int, Governor]]]
_Governing = tuple[tuple[tuple[Per, int, Governor], ...], tuple[Governor, ...]]


class Governance:
    """The governors of one tracker and what each session, request and user's day has used under them."""

    def __init__(self, governors: Sequence[Governor], idle_seconds: float = IDLE_SECONDS) -> None:
        self.governors = tuple(governors)
        for governor in self.governors:
            if not isinstance(governor, Governor):
                raise SDKError(f"governors takes Governor objects, not {type(governor).__name__}")
        self._rules: dict[Per, _Rules] = {}
        for index, governor in enumerate(self.governors):
            by_feature, by_agent, everywhere = self._rules.setdefault(governor.per, ({}, {}, []))
            if governor.feature is not None:
                by_feature.setdefault(governor.feature, []).append((index, governor))
            elif governor.agent_id is not None:
                by_agent.setdefault(governor.agent_id, []).append((index, governor))
            else:
                everywhere.append((index, governor))
        self._governing: dict[tuple[str | None, str | None], _Governing] = {}
        self._lock = threading.Lock()
        self._uses: IdleMap[tuple[int, str], _Use] = IdleMap(_Use, idle_seconds)
        self._day = -1
        self._days: dict[tuple[int, str], _Use] = {}

    def _governing_of(self, feature: str | None, agent_id: str | None) -> _Governing:
        """The governors of a feature's and agent's calls: caps by ``per``, and ceilings per action."""
        found = self._governing.get((feature, agent_id))
        if found is None:
            caps: list[tuple[Per, int, Governor]] = []
            ceilings: list[Governor] = []
            for per, (by_feature, by_agent, everywhere) in self._rules.items():
                own = by_feature.get(feature or "", []) + by_agent.get(agent_id or "", [])
                for index, governor in own or everywhere:
                    if per == "action":
                        ceilings.append(governor)
                    else:
                        caps.append((per, index, governor))
            if len(self._governing) > 10_000:  # bounded whatever names callers make up
                self._governing.clear()
            found = self._governing[(feature, agent_id)] = (tuple(caps), tuple(ceilings))
        return found

    def admit(self, plan: CallPlan) -> Admission | None:
        """Hold what the call may use, or refuse it; None when no governor governs it.

        Raises:
            SessionLimitExceeded: the call would pass a cap.
            CostConfirmationRequired: its estimate is above a ceiling per action, not confirmed.
        """
        caps, ceilings = self._governing_of(plan.feature, plan.agent_id)
        if not caps and not ceilings:
            return None
        now = time.monotonic()
        tool = plan.kind == "tool"
        llm = plan.kind == "llm"
        tokens = plan.estimated_tokens or 0
        usd = plan.estimated_usd or 0.0
        held: list[_Use] = []
        needs_cost = False
        with self._lock:
            for per, index, governor in caps:
                key = plan.session if per == "session" else plan.trace_id if per == "request" else plan.user_id
                if key is None:
                    continue
                use = self._use(per, index, key, now)
                _check(governor, per, key, use, plan, tokens, usd, llm, now)
                held.append(use)
                needs_cost = needs_cost or governor.max_cost_usd is not None
            for governor in ceilings:
                ceiling = governor.max_cost_usd
                estimate = plan.estimated_usd
                unconfirmed = plan.confirm_usd is None or (estimate is not None and plan.confirm_usd < estimate)
                if ceiling is not None and estimate is not None and estimate > ceiling and unconfirmed:
                    raise CostConfirmationRequired(estimate, ceiling, plan.confirm_usd, governor)
            if not held:
                return None
            for use in held:
                use.held_tokens += tokens
                use.held_usd += usd
                use.tool_calls += tool
        return Admission(held, tokens, usd, tool, needs_cost)

    def settle(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        """The call ended having used ``tokens`` and ``cost_usd``."""
        with self._lock:
            for use in admission.uses:
                use.held_tokens -= admission.tokens
                use.held_usd -= admission.usd
                use.tokens += tokens
                use.cost_usd += cost_usd

    def release(self, admission: Admission) -> None:
        """The call was not made after all (refused by something else): it used nothing."""
        with self._lock:
            for use in admission.uses:
                use.held_tokens -= admission.tokens
                use.held_usd -= admission.usd
                use.tool_calls -= admission.tool

    def _use(self, per: Per, index: int, key: str, now: float) -> _Use:
        if per != "user_day":
            return self._uses.touch((index, key), now)
        today = int(time.time() // 86_400)  # the UTC day
        if today != self._day:
            self._day = today
            self._days.clear()
        use = self._days.get((index, key))
        if use is None:
            use = self._days[(index, key)] = _Use(now)
        return use


def _check(
    governor: Governor, per: Per, key: str, use: _Use, plan: CallPlan, tokens: int, usd: float, llm: bool, now: float
) -> None:
    """Raise if the call would pass one of ``governor``'s caps: wall clock, tool calls, tokens, cost."""
    if governor.max_minutes is not None:
        minutes = (now - use.started) / 60
        if minutes > governor.max_minutes:
            raise SessionLimitExceeded("minutes", per, key, minutes, 0, governor.max_minutes, governor)
    if governor.max_tool_calls is not None and plan.kind == "tool" and use.tool_calls + 1 > governor.max_tool_calls:
        raise SessionLimitExceeded("tool_calls", per, key, use.tool_calls, 1, governor.max_tool_calls, governor)
    # without an estimate a model call uses something: refused once the cap is reached
    if governor.max_tokens is not None:
        used_tokens = use.tokens + use.held_tokens
        if used_tokens + tokens > governor.max_tokens or (not tokens and llm and used_tokens >= governor.max_tokens):
            raise SessionLimitExceeded("tokens", per, key, used_tokens, tokens, governor.max_tokens, governor)
    if governor.max_cost_usd is not None:
        spent = use.cost_usd + use.held_usd
        if spent + usd > governor.max_cost_usd or (not usd and llm and spent >= governor.max_cost_usd):
            raise SessionLimitExceeded("cost_usd", per, key, spent, usd, governor.max_cost_usd, governor)
