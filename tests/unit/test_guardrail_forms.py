"""Every guardrail in each form a call is tracked in: sync and async, context manager and decorator.

Each case makes the calls that use up a limit, then one call that must be refused before its body
runs; the refused call of a governor, a ceiling or a hook is sent as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from producers import (
    CallRefused,
    CircuitBreakers,
    CircuitOpen,
    CostConfirmationRequired,
    Governor,
    SessionLimitExceeded,
    Stuck,
    Tracker,
)
from producers._track import TrackedCall
from schemas.config import PriceOverride
from tests.unit.test_track import KEY, Collected

FORMS = ("sync_with", "async_with", "sync_decorated", "async_decorated")
HOUSE = [PriceOverride(provider="house", model="large", input_per_mtok=10, output_per_mtok=0)]  # 1,000 tokens: $0.01


class Failed(Exception):
    pass


def tracked(tracker: Tracker, form: str, tokens: int = 0, fail: bool = False, **track: Any) -> list[str]:
    """One call in ``form`` that reports ``tokens`` input tokens (or raises); what its body ran."""
    ran: list[str] = []
    track.setdefault("provider", "house")
    track.setdefault("model", "large")

    def work() -> dict[str, Any]:
        ran.append("body")
        if fail:
            raise Failed("the dependency failed")
        return {"usage": {"input_tokens": tokens, "output_tokens": 0}}

    async def awork() -> dict[str, Any]:
        return work()

    if form == "sync_with":
        with tracker.track(**track) as call:
            call.record(work())
    elif form == "async_with":

        async def main() -> None:
            async with tracker.track(**track) as call:
                call.record(await awork())

        asyncio.run(main())
    elif form == "sync_decorated":
        tracker.track(**track)(work)()
    else:
        asyncio.run(tracker.track(**track)(awork)())
    return ran


GOVERNED: list[tuple[str, list[Governor], dict[str, Any], dict[str, Any], type[CallRefused], str]] = [
    # (case, governors, the call that uses the limit up, the call refused, error, error_type)
    ("tokens", [Governor(max_tokens=1500)], {"tokens": 1000}, {"estimated_tokens": 1000},
     SessionLimitExceeded, "SessionLimitExceeded: tokens per session"),
    ("tool_calls", [Governor(max_tool_calls=1)], {"kind": "tool", "tool_name": "grep"},
     {"kind": "tool", "tool_name": "grep"}, SessionLimitExceeded, "SessionLimitExceeded: tool calls per session"),
    ("cost", [Governor(max_cost_usd=0.015)], {"tokens": 1000}, {"estimated_usd": 0.01},
     SessionLimitExceeded, "SessionLimitExceeded: cost per session"),
    ("minutes", [Governor(max_minutes=0.03 / 60)], {}, {},
     SessionLimitExceeded, "SessionLimitExceeded: minutes per session"),
    ("request", [Governor(per="request", max_tokens=1500)], {"tokens": 1000, "trace_id": "req-1"},
     {"estimated_tokens": 1000, "trace_id": "req-1"}, SessionLimitExceeded, "SessionLimitExceeded: tokens per request"),
    ("user_day", [Governor(per="user_day", max_tokens=1500)], {"tokens": 1000, "session_id": "s-other"},
     {"estimated_tokens": 1000}, SessionLimitExceeded, "SessionLimitExceeded: tokens per user day"),
    ("ceiling", [Governor(per="action", max_cost_usd=1.0)], {"estimated_usd": 0.5}, {"estimated_usd": 2.0},
     CostConfirmationRequired, "CostConfirmationRequired: estimate over the ceiling per action"),
]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("case", "governors", "first", "refused", "error", "reason"), GOVERNED, ids=[g[0] for g in GOVERNED]
)
def test_each_governor_refuses_before_the_call(
    form: str,
    case: str,
    governors: list[Governor],
    first: dict[str, Any],
    refused: dict[str, Any],
    error: type[CallRefused],
    reason: str,
) -> None:
    sent = Collected()
    tracker = Tracker(sent, governors=governors, price_overrides=HOUSE, user_id_key=KEY, feature="support.chat")
    with tracker.attribute(session_id="s-1", user_id="alice@example.com"):
        assert tracked(tracker, form, **first) == ["body"]
        if case == "minutes":
            time.sleep(0.05)
        with pytest.raises(error):
            tracked(tracker, form, **refused)
    assert [(e.status, e.error_type) for e in sent.events] == [("success", None), ("cancelled", reason)]
    assert tracker.stats().refused == 1


@pytest.mark.parametrize("form", FORMS)
def test_a_confirmed_estimate_goes_through(form: str) -> None:
    tracker = Tracker(Collected(), governors=[Governor(per="action", max_cost_usd=1.0)])
    assert tracked(tracker, form, estimated_usd=2.0, confirm_usd=2.0) == ["body"]


@pytest.mark.parametrize("form", FORMS)
def test_the_breaker_opens_and_fails_fast(form: str) -> None:
    sent = Collected()
    tracker = Tracker(sent, breakers=CircuitBreakers(failures=2, cooldown_seconds=0.03))
    for _ in range(2):
        with pytest.raises(Failed):
            tracked(tracker, form, fail=True, kind="tool", tool_name="crm")
    with pytest.raises(CircuitOpen):
        tracked(tracker, form, kind="tool", tool_name="crm")
    time.sleep(0.04)
    assert tracked(tracker, form, kind="tool", tool_name="crm") == ["body"]  # the trial call: it closes
    assert tracker.stats().breakers["tool:crm"].position == "closed" and len(sent.events) == 3


@pytest.mark.parametrize("form", FORMS)
def test_the_stuck_hook_is_told_and_can_stop_the_call(form: str) -> None:
    sent = Collected()
    heard: list[TrackedCall] = []

    def on_stuck(stuck: Stuck) -> None:
        heard.append(stuck.call)
        raise Failed(stuck.reason)

    tracker = Tracker(sent, on_stuck=on_stuck)
    with tracker.attribute(session_id="s-1"):
        assert tracked(tracker, form, prompt_hash="p1") == ["body"]
        with pytest.raises(Failed, match="it sent the prompt p1 2 times"):
            tracked(tracker, form, prompt_hash="p1")
    assert len(heard) == 1 and heard[0].event_id == sent.events[-1].event_id
    assert [(e.status, e.error_type) for e in sent.events] == [("success", None), ("cancelled", "Failed")]
