"""Governors: caps per session, request and user's day, and the ceiling per action, enforced before the call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from producers import CallRefused, CostConfirmationRequired, Governor, SDKError, SessionLimitExceeded, Tracker
from producers._sessions import IdleMap
from schemas.config import PriceOverride, SessionCap
from tests.unit.test_track import KEY, Collected

HOUSE = [PriceOverride(provider="house", model="large", input_per_mtok=10, output_per_mtok=0)]  # 1,000 tokens: $0.01


@pytest.fixture
def sent() -> Collected:
    return Collected()


@pytest.fixture
def governed(sent: Collected) -> Callable[..., Tracker]:
    """A tracker with these governors, for the feature ``support.chat``."""

    def make(*governors: Governor, **options: Any) -> Tracker:
        return Tracker(sent, governors=governors, user_id_key=KEY, feature="support.chat", **options)

    return make


def call(tracker: Tracker, tokens: int = 1000, **fields: Any) -> None:
    """One house/large model call that used ``tokens`` input tokens ($0.01 per 1,000)."""
    with tracker.track(provider="house", model="large", **fields) as tracked:
        tracked.usage(input_tokens=tokens)


def test_a_governor_that_names_no_limit_takes_the_practice_defaults() -> None:
    assert Governor() == Governor(per="session", max_tokens=20_000, max_tool_calls=15, max_cost_usd=0.50, max_minutes=2)
    assert Governor(per="request", feature="rag").max_tool_calls == 15
    assert Governor(max_tokens=50_000).max_tool_calls is None  # a limit named: only the limits named
    cap = SessionCap(feature="eng.code_review", max_tool_calls=40, max_minutes=10)
    assert Governor.from_cap(cap) == Governor(feature="eng.code_review", max_tool_calls=40, max_minutes=10)
    for wrong, match in [
        ({"per": "user_day"}, "no default limit"),
        ({"per": "action"}, "no default limit"),
        ({"per": "action", "max_cost_usd": 1, "max_tokens": 10}, "one limit, max_cost_usd"),
        ({"per": "user_day", "max_minutes": 5}, "cannot cap minutes"),
        ({"feature": "a", "agent_id": "b"}, "not both"),
        ({"max_tokens": 0}, "above 0"),
        ({"per": "week"}, "use one of"),
    ]:
        with pytest.raises(SDKError, match=match):
            Governor(**wrong)


def test_without_governors_nothing_is_capped(sent: Collected) -> None:
    tracker = Tracker(sent)
    with tracker.attribute(session_id="s-big"):
        call(tracker, tokens=60_000)  # a large-context call is normal for some features
        for n in range(30):
            with tracker.track(provider="internal", kind="tool", tool_name=f"read_file_{n % 7}"):
                pass
    assert len(sent.events) == 31 and tracker.stats().refused == 0


def test_a_session_is_stopped_before_the_call_that_would_pass_its_token_cap(
    governed: Callable[..., Tracker], sent: Collected
) -> None:
    tracker = governed(Governor(max_tokens=2_500))
    made = []
    with tracker.attribute(session_id="s-1"):
        call(tracker)
        call(tracker)
        with (
            pytest.raises(SessionLimitExceeded) as refused,
            tracker.track(provider="house", model="large", estimated_tokens=1000),
        ):
            made.append("the call")
        call(tracker, tokens=500)  # without an estimate: allowed while under the cap (2,500 exactly)
        with pytest.raises(SessionLimitExceeded, match="has used 2,500 tokens of its cap of 2,500 tokens"):
            call(tracker)
    call(tracker, session_id="s-2")  # another session has its own

    assert made == []
    exc = refused.value
    assert (exc.limit, exc.per, exc.key) == ("tokens", "session", "s-1")
    assert (exc.used, exc.requested, exc.cap) == (2000, 1000, 2500)
    assert str(exc).startswith(
        "spendstream stopped the call before it was made: session s-1 has used 2,000 tokens, and this call's "
        "1,000 tokens would pass its cap of 2,500 tokens (Governor(per='session')). End the session here, "
        "or raise the governor's max_tokens"
    )
    assert isinstance(exc, CallRefused)
    statuses = [(e.status, e.error_type, e.input_tokens) for e in sent.events]
    assert statuses == [
        ("success", None, 1000),
        ("success", None, 1000),
        ("cancelled", "SessionLimitExceeded: tokens per session", 0),
        ("success", None, 500),
        ("cancelled", "SessionLimitExceeded: tokens per session", 0),
        ("success", None, 1000),
    ]
    assert sent.events[2].session_id == "s-1" and sent.events[2].feature == "support.chat"
    assert tracker.stats().refused == 2 and tracker.stats().tracked == 6


def test_tool_calls_are_capped_per_session_async_decorated(governed: Callable[..., Tracker], sent: Collected) -> None:
    tracker = governed(Governor(max_tool_calls=3))

    @tracker.track(provider="internal", kind="tool", tool_name="search")
    async def search(query: str) -> str:
        return query

    async def session() -> list[str]:
        found = []
        with tracker.attribute(session_id="s-tools"):
            for n in range(3):
                found.append(await search(f"q{n}"))
                async with tracker.track(provider="house", model="large"):  # model calls are not tool calls
                    pass
            with pytest.raises(SessionLimitExceeded) as refused:
                await search("q3")
        assert refused.value.limit == "tool_calls" and "has made 3 tool calls" in str(refused.value)
        return found

    assert asyncio.run(session()) == ["q0", "q1", "q2"]
    assert sent.events[-1].status == "cancelled" and sent.events[-1].tool_name == "search"
    assert sent.events[-1].error_type == "SessionLimitExceeded: tool calls per session"


def test_cost_is_counted_from_usage_priced_stated_costs_and_estimates(
    governed: Callable[..., Tracker], sent: Collected
) -> None:
    tracker = governed(Governor(max_cost_usd=0.035), price_overrides=HOUSE)

    async def session() -> None:
        with tracker.attribute(session_id="s-cost"):
            async with tracker.track(provider="house", model="large") as priced:
                priced.usage(input_tokens=1000)  # $0.01, priced as the pipeline would
            async with tracker.track(provider="paid_api", kind="tool", tool_name="enrich") as stated:
                stated.set(cost_usd=0.015)  # a paid tool states its cost
            async with tracker.track(provider="house", model="unknown-model", estimated_usd=0.005):
                pass  # unpriced: its estimate counts
            with pytest.raises(SessionLimitExceeded) as refused:
                async with tracker.track(provider="house", model="large", estimated_usd=0.01):
                    pass
            assert (refused.value.limit, refused.value.used) == ("cost_usd", pytest.approx(0.03))
            assert "has used $0.0300, and this call's $0.0100 would pass its cap of $0.0350" in str(refused.value)
            async with tracker.track(provider="house", model="large", estimated_usd=0.004) as small:
                small.usage(input_tokens=500)  # $0.005: over the estimate, counted as used
            with pytest.raises(SessionLimitExceeded, match=r"has used \$0.0350 of its cap of \$0.0350"):
                async with tracker.track(provider="house", model="large"):
                    pass

    asyncio.run(session())
    assert [e.status for e in sent.events] == ["success"] * 3 + ["cancelled", "success", "cancelled"]


def test_the_wall_clock_runs_from_the_sessions_first_call(governed: Callable[..., Tracker]) -> None:
    tracker = governed(Governor(max_minutes=0.05 / 60))  # 50 ms
    with tracker.attribute(session_id="s-slow"):
        call(tracker)
        time.sleep(0.07)
        with pytest.raises(SessionLimitExceeded, match=r"session s-slow has run 0.00 minutes, past its cap") as refused:
            call(tracker)
    assert refused.value.limit == "minutes" and refused.value.used > refused.value.cap


def test_a_request_is_its_trace_and_a_session_without_id_is_its_trace(
    governed: Callable[..., Tracker], sent: Collected
) -> None:
    tracker = governed(Governor(per="request", max_tool_calls=2), Governor(max_tokens=1500))

    def tool() -> None:
        with tracker.track(provider="internal", kind="tool", tool_name="lookup"):
            pass

    with tracker.track(provider="house", model="large") as root:
        tool()
        tool()
        with pytest.raises(SessionLimitExceeded) as refused:
            tool()
        call(tracker)
        with pytest.raises(SessionLimitExceeded, match=f"session {root.trace_id} has used 1,000 tokens"):
            call(tracker, estimated_tokens=600)  # no session_id: the trace is the session
    assert (refused.value.per, refused.value.key) == ("request", root.trace_id)
    with tracker.track(provider="house", model="large"):  # a new request
        tool()


def test_a_users_day_is_capped_across_sessions_without_naming_the_user(governed: Callable[..., Tracker]) -> None:
    tracker = governed(Governor(per="user_day", max_tokens=1500))
    with tracker.attribute(user_id="alice@example.com", session_id="s-a"):
        call(tracker)
    with (
        tracker.attribute(user_id="alice@example.com", session_id="s-b"),
        pytest.raises(SessionLimitExceeded) as refused,
    ):
        call(tracker, estimated_tokens=1000)
    with tracker.attribute(user_id="bob@example.com", session_id="s-c"):
        call(tracker, estimated_tokens=1000)
    call(tracker, session_id="s-d")  # no user: not governed per user
    assert refused.value.per == "user_day" and refused.value.key == "alice@example.com"
    assert "alice" not in str(refused.value) and "this user's day (UTC) has used 1,000 tokens" in str(refused.value)
    assert refused.value.reason == "SessionLimitExceeded: tokens per user day"


def test_a_features_or_agents_own_governor_replaces_the_global_one(governed: Callable[..., Tracker]) -> None:
    tracker = governed(
        Governor(),  # every session: the defaults (20,000 tokens)
        Governor(feature="rag.answer", max_tokens=200_000),  # a large-context feature
        Governor(agent_id="coder", max_tool_calls=1),
    )
    call(tracker, feature="rag.answer", session_id="s-rag", estimated_tokens=60_000)
    with pytest.raises(SessionLimitExceeded, match=r"Governor\(per='session'\)"):
        call(tracker, session_id="s-chat", estimated_tokens=60_000)
    # feature rag.answer and agent coder: held to both
    with tracker.attribute(feature="rag.answer", agent_id="coder", session_id="s-both"):
        with tracker.track(provider="internal", kind="tool", tool_name="grep"):
            pass
        with (
            pytest.raises(SessionLimitExceeded, match=r"agent_id='coder'"),
            tracker.track(provider="internal", kind="tool", tool_name="grep"),
        ):
            pass
        with pytest.raises(SessionLimitExceeded, match=r"feature='rag.answer'"):
            call(tracker, estimated_tokens=250_000)


def test_calls_in_flight_hold_what_they_may_use(governed: Callable[..., Tracker]) -> None:
    tracker = governed(Governor(max_tokens=1500))
    with tracker.attribute(session_id="s-parallel"):
        with tracker.track(provider="house", model="large", estimated_tokens=1000) as first:
            with pytest.raises(SessionLimitExceeded, match="has used 1,000 tokens"):
                call(tracker, estimated_tokens=1000)
            first.usage(input_tokens=400)  # it used less than it held
        call(tracker, estimated_tokens=1000)  # 400 + 1,000


def test_an_estimate_above_the_ceiling_per_action_needs_confirming(
    governed: Callable[..., Tracker], sent: Collected
) -> None:
    tracker = governed(Governor(per="action", max_cost_usd=1.00))

    @tracker.track(provider="openai", model="o3", estimated_usd=3.20)
    def deep_research() -> str:
        return "report"

    @tracker.track(provider="openai", model="o3", estimated_usd=3.20, confirm_usd=5.00)
    def confirmed_research() -> str:
        return "report"

    with pytest.raises(CostConfirmationRequired) as refused:
        deep_research()
    assert str(refused.value).endswith(
        "its estimate of $3.2000 is above the ceiling of $1.0000 per action (Governor(per='action')). "
        "To go ahead, track it with confirm_usd=3.2000 or more"
    )
    assert confirmed_research() == "report"
    with pytest.raises(CostConfirmationRequired, match=r"confirmed: only \$2.0000"):
        call(tracker, estimated_usd=3.20, confirm_usd=2.00)
    call(tracker, estimated_usd=0.90)
    call(tracker)  # no estimate: nothing to gate
    assert [(e.status, e.error_type) for e in sent.events] == [
        ("cancelled", "CostConfirmationRequired: estimate over the ceiling per action"),
        ("success", None),
        ("cancelled", "CostConfirmationRequired: estimate over the ceiling per action"),
        ("success", None),
        ("success", None),
    ]


def test_a_quiet_session_is_forgotten_and_memory_is_bounded() -> None:
    sessions: IdleMap[str, list[int]] = IdleMap(list, idle_seconds=10, max_keys=3)
    sessions.touch("a", 0).append(1)
    assert sessions.touch("a", 5) == [1]
    assert sessions.touch("a", 16) == []  # quiet for 11 s: a new session
    for key in "bcd":
        sessions.touch(key, 17)
    assert list(sessions) == ["b", "c", "d"]  # past max_keys, the least recently used goes
    sessions.touch("e", 30)  # b, c and d have been quiet for 13 s
    assert list(sessions) == ["e"]


def test_a_refused_call_keeps_its_place_in_the_trace(governed: Callable[..., Tracker], sent: Collected) -> None:
    tracker = governed(Governor(per="request", max_tool_calls=1))
    with tracker.track(provider="house", model="large", agent_id="coordinator") as root:
        with tracker.track(provider="internal", kind="tool", tool_name="lookup", agent_id="researcher"):
            pass
        with (
            pytest.raises(SessionLimitExceeded),
            tracker.track(provider="internal", kind="tool", tool_name="lookup", agent_id="researcher"),
        ):
            pass
    refused = next(e for e in sent.events if e.status == "cancelled")
    assert (refused.trace_id, refused.parent_id, refused.agent_id) == (root.trace_id, root.event_id, "researcher")
    assert (refused.kind, refused.tool_name, refused.latency_ms) == ("tool", "lookup", 0)
