"""Circuit breakers per tool and per model: open after failures, fail fast, one trial call, close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from producers import CircuitBreakers, CircuitOpen, Governor, SDKError, Tracker
from tests.unit.test_track import Collected, httpx

FAST = CircuitBreakers(failures=3, window_seconds=60, cooldown_seconds=0.05)


@pytest.fixture
def sent() -> Collected:
    return Collected()


@pytest.fixture
def breaking(sent: Collected) -> Callable[..., Tracker]:
    def make(config: CircuitBreakers = FAST, **options: Any) -> Tracker:
        return Tracker(sent, breakers=config, feature="support.chat", **options)

    return make


def fail_tool(tracker: Tracker, name: str = "crm_lookup") -> None:
    with pytest.raises(ConnectionError), tracker.track(provider="internal", kind="tool", tool_name=name):
        raise ConnectionError("crm down")


def test_a_tool_breaker_opens_fails_fast_then_lets_one_trial_call_through(
    breaking: Callable[..., Tracker], sent: Collected
) -> None:
    tracker = breaking()
    for _ in range(3):
        fail_tool(tracker)
    made = []
    with pytest.raises(CircuitOpen) as fast, tracker.track(provider="internal", kind="tool", tool_name="crm_lookup"):
        made.append("crm_lookup")
    with tracker.track(provider="internal", kind="tool", tool_name="search"):  # another tool is not held back
        made.append("search")
    assert made == ["search"] and len(sent.events) == 4  # the fast failure is not sent
    assert (fast.value.breaker, fast.value.failures) == ("tool:crm_lookup", 3)
    assert 0 < fast.value.retry_in_seconds <= 0.05
    assert "circuit open for tool:crm_lookup after 3 failures within 60 s" in str(fast.value)
    stats = tracker.stats()
    assert stats.breakers["tool:crm_lookup"].position == "open" and stats.fast_failed == 1
    assert "tool:search" not in stats.breakers  # a healthy dependency has no breaker state

    time.sleep(0.06)
    assert tracker.stats().breakers["tool:crm_lookup"].position == "half_open"
    with (
        tracker.track(provider="internal", kind="tool", tool_name="crm_lookup"),  # the trial call
        pytest.raises(CircuitOpen, match="a trial call is in flight"),
        tracker.track(provider="internal", kind="tool", tool_name="crm_lookup"),
    ):
        pass
    state = tracker.stats().breakers["tool:crm_lookup"]
    assert (state.position, state.failures, state.opened, state.fast_failed) == ("closed", 0, 1, 2)
    with tracker.track(provider="internal", kind="tool", tool_name="crm_lookup"):
        pass


def test_a_failed_trial_opens_it_again(breaking: Callable[..., Tracker]) -> None:
    tracker = breaking()
    for _ in range(3):
        fail_tool(tracker)
    time.sleep(0.06)
    fail_tool(tracker)  # the trial fails
    with pytest.raises(CircuitOpen):
        fail_tool(tracker)
    assert tracker.stats().breakers["tool:crm_lookup"].opened == 2


def test_failures_spread_wider_than_the_window_do_not_open_it(breaking: Callable[..., Tracker]) -> None:
    tracker = breaking(CircuitBreakers(failures=2, window_seconds=0.05))
    fail_tool(tracker)
    time.sleep(0.07)
    fail_tool(tracker)
    fail_tool(tracker)  # two within the window now: open
    with pytest.raises(CircuitOpen):
        fail_tool(tracker)


def test_a_model_breaker_counts_provider_timeouts_async_decorated(breaking: Callable[..., Tracker]) -> None:
    tracker = breaking()
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")

    @tracker.track(provider="openai", model="gpt-4o")
    async def ask() -> None:
        raise openai.APITimeoutError(request=request)

    @tracker.track(provider="openai", model="gpt-4o-mini")
    async def ask_small() -> str:
        return "ok"

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(openai.APITimeoutError):
                await ask()
        with pytest.raises(CircuitOpen, match="model:openai/gpt-4o"):
            await ask()
        assert await ask_small() == "ok"  # another model is not held back
        for _ in range(3):
            async with tracker.track(provider="openai", model="gpt-4o-mini") as failed:
                failed.set(status="error", error_type="EmptyAnswer")  # failed without raising: counted too

    asyncio.run(main())
    breakers = tracker.stats().breakers
    assert [(key, state.position) for key, state in breakers.items()] == [
        ("model:openai/gpt-4o", "open"),
        ("model:openai/gpt-4o-mini", "open"),
    ]


def test_breakers_are_off_by_default_and_can_be_limited_to_tools(sent: Collected) -> None:
    tracker = Tracker(sent)
    for _ in range(10):
        fail_tool(tracker)
    assert tracker.stats().breakers == {} and tracker.stats().fast_failed == 0

    tools_only = Tracker(sent, breakers=CircuitBreakers(failures=1, models=False))
    for _ in range(3):
        with pytest.raises(ValueError), tools_only.track(provider="openai", model="gpt-4o"):
            raise ValueError("bad answer")
    fail_tool(tools_only)
    with pytest.raises(CircuitOpen):
        fail_tool(tools_only)
    assert list(tools_only.stats().breakers) == ["tool:crm_lookup"]
    with pytest.raises(SDKError, match="at least 1"):
        CircuitBreakers(failures=0)
    with pytest.raises(SDKError, match="above 0"):
        CircuitBreakers(cooldown_seconds=-1)


def test_a_call_the_breaker_fails_fast_is_not_counted_by_the_governors(breaking: Callable[..., Tracker]) -> None:
    tracker = breaking(governors=[Governor(max_tool_calls=4)])
    with tracker.attribute(session_id="s-1"):
        for _ in range(3):
            fail_tool(tracker)
        for _ in range(5):
            with pytest.raises(CircuitOpen):
                fail_tool(tracker)
        time.sleep(0.06)
        with tracker.track(provider="internal", kind="tool", tool_name="crm_lookup"):  # the 4th tool call made
            pass
    assert tracker.stats().refused == 0
