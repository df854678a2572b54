"""Stuck detection: a session repeating one tool or one prompt calls the on_stuck hook before its next call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from producers import SDKError, Stuck, StuckRule, Tracker
from tests.unit.test_track import Collected


class StopAgent(Exception):
    """What an application's hook raises to stop a stuck session."""


@pytest.fixture
def sent() -> Collected:
    return Collected()


def tool(tracker: Tracker, name: str, **fields: Any) -> None:
    with tracker.track(provider="internal", kind="tool", tool_name=name, **fields):
        pass


def test_the_hook_hears_of_one_tool_repeated_before_the_call_that_repeats_it(sent: Collected) -> None:
    seen: list[tuple[str, str, str, int, int, int]] = []

    def on_stuck(stuck: Stuck) -> None:
        seen.append((stuck.session, stuck.pattern, stuck.repeated, stuck.times, stuck.window, len(sent.events)))
        stuck.call.set(tags={"stuck": "yes"})  # the hook sees the call about to be made

    tracker = Tracker(sent, on_stuck=on_stuck)
    with tracker.attribute(session_id="s-1"):
        for name in ["grep", "read_file", "read_file", "read_file", "read_file"]:  # 4 of 5: not more than 80%
            tool(tracker, name)
        assert seen == []
        tool(tracker, "read_file")  # the last 5 with this one: read_file 5 times
        for _ in range(4):
            tool(tracker, "read_file")
        tool(tracker, "read_file")  # 5 more since it was heard: heard again
    for _ in range(4):
        tool(tracker, "read_file", session_id="s-2")  # another session starts afresh

    assert seen == [("s-1", "tool", "read_file", 5, 5, 5), ("s-1", "tool", "read_file", 5, 5, 10)]
    assert sent.events[5].tags == {"stuck": "yes"} and sent.events[5].status == "success"
    assert tracker.stats().stuck == 2 and tracker.stats().refused == 0


def test_the_same_prompt_twice_is_stuck_and_retries_aside(sent: Collected) -> None:
    seen: list[Stuck] = []
    tracker = Tracker(sent, on_stuck=seen.append)
    with tracker.track(provider="openai", model="gpt-4o") as root:  # no session id: the trace is the session
        for attempt in (1, 2, 3):  # a retry sends the same prompt again: not stuck
            with tracker.track(provider="openai", model="gpt-4o", prompt_hash="p-draft", attempt=attempt):
                pass
        with tracker.track(provider="openai", model="gpt-4o", prompt_hash="p-draft"):
            pass
    assert [(s.session, s.pattern, s.repeated, s.times) for s in seen] == [(root.trace_id, "prompt", "p-draft", 2)]
    assert seen[0].reason == "it sent the prompt p-draft 2 times"


def test_by_default_it_is_logged_and_counted(sent: Collected, caplog: pytest.LogCaptureFixture) -> None:
    tracker = Tracker(sent)
    with caplog.at_level(logging.WARNING, "spendstream.producers"), tracker.attribute(session_id="s-loop"):
        for _ in range(5):
            tool(tracker, "run_tests")
    assert tracker.stats().stuck == 1 and len(sent.events) == 5
    assert "session s-loop looks stuck: 5 of its last 5 tool calls were run_tests; the call goes ahead" in caplog.text


def test_a_hook_that_raises_stops_the_call_and_its_event_says_why_async_decorated(sent: Collected) -> None:
    def on_stuck(stuck: Stuck) -> None:
        raise StopAgent(stuck.reason)

    tracker = Tracker(sent, on_stuck=on_stuck, stuck=StuckRule(tool_window=3, same_tool_share=0.6))
    ran = []

    @tracker.track(provider="internal", kind="tool", tool_name="order_status")
    async def order_status() -> None:
        ran.append(1)

    async def agent() -> None:
        with tracker.attribute(session_id="s-async"):
            await order_status()
            await order_status()
            with pytest.raises(StopAgent, match="3 of its last 3 tool calls were order_status"):
                await order_status()
            async with tracker.track(provider="internal", kind="tool", tool_name="order_status"):
                pass  # heard afresh only after 3 more

    asyncio.run(agent())
    assert len(ran) == 2
    assert [(e.status, e.error_type) for e in sent.events] == [
        ("success", None),
        ("success", None),
        ("cancelled", "StopAgent"),
        ("success", None),
    ]
    assert tracker.stats().refused == 1 and tracker.stats().stuck == 1


def test_it_can_be_turned_off_and_its_rule_is_checked(sent: Collected) -> None:
    tracker = Tracker(sent, stuck=None, on_stuck=lambda stuck: pytest.fail("called"))
    with tracker.attribute(session_id="s-1"):
        for _ in range(10):
            tool(tracker, "read_file", prompt_hash="same")
    assert tracker.stats().stuck == 0
    with pytest.raises(SDKError, match="at least 2"):
        StuckRule(tool_window=1)
    with pytest.raises(SDKError, match="between 0 and 1"):
        StuckRule(same_tool_share=1.0)


def test_one_tool_with_the_same_arguments_three_times_is_stuck_and_retries_aside(sent: Collected) -> None:
    seen: list[Stuck] = []
    tracker = Tracker(sent, on_stuck=seen.append, stuck=StuckRule(tool_window=20))
    with tracker.attribute(session_id="s-args"):
        for page in range(10):  # one tool, other arguments each time: a healthy agent paging through results
            tool(tracker, "search", args={"query": "refund policy", "page": page})
        assert seen == []
        tool(tracker, "write_file", args={"path": "a.py", "lines": [1, 50]})  # another tool: not the same call
        tool(tracker, "read_file", args={"path": "a.py", "lines": [1, 50]})
        for attempt in (2, 3):  # a retry of the same call is no repeat
            tool(tracker, "read_file", args={"path": "a.py", "lines": [1, 50]}, attempt=attempt)
        tool(tracker, "read_file", args={"lines": [1, 50], "path": "a.py"})  # another key order: the same call
        assert seen == []
        tool(tracker, "read_file", args={"path": "a.py", "lines": [1, 50]})  # the third time
        for _ in range(3):
            tool(tracker, "read_file", args={"path": "a.py", "lines": [1, 50]})  # told again after 3 more

    assert [(s.session, s.pattern, s.repeated, s.times, s.window) for s in seen] == [
        ("s-args", "args", "read_file", 3, 3),
        ("s-args", "args", "read_file", 3, 3),
    ]
    assert seen[0].reason == "it called read_file 3 times with the same arguments"
    assert seen[0].call.event_id == sent.events[15].event_id and len(sent.events) == 19
    assert tracker.stats().stuck == 2


def test_the_same_arguments_rule_is_configurable_and_a_hook_that_raises_stops_the_call(sent: Collected) -> None:
    def on_stuck(stuck: Stuck) -> None:
        raise StopAgent(stuck.reason)

    tracker = Tracker(sent, on_stuck=on_stuck, stuck=StuckRule(args_repeats=2))
    with tracker.attribute(session_id="s-2"):
        tool(tracker, "order_status", args_hash="ab12")  # a hash made elsewhere counts alike
        with pytest.raises(StopAgent, match="it called order_status 2 times with the same arguments"):
            tool(tracker, "order_status", args_hash="ab12")
    assert [(e.status, e.error_type, e.args_hash) for e in sent.events] == [
        ("success", None, "ab12"),
        ("cancelled", "StopAgent", "ab12"),
    ]
    with pytest.raises(SDKError, match="StuckRule args_repeats=1: a whole number of at least 2"):
        StuckRule(args_repeats=1)


def test_a_call_that_completes_two_patterns_is_told_once_as_the_same_call(sent: Collected) -> None:
    seen: list[Stuck] = []
    tracker = Tracker(sent, on_stuck=seen.append, stuck=StuckRule(tool_window=3, args_repeats=3))
    with tracker.attribute(session_id="s-3"):
        for _ in range(4):  # the third call: 3 of the last 3 tool calls, and the same call 3 times
            tool(tracker, "run_tests", args={})
    assert [(s.pattern, s.repeated, s.times) for s in seen] == [("args", "run_tests", 3)]


def test_an_empty_args_hash_is_no_hash_and_never_the_same_call(sent: Collected) -> None:
    seen: list[Stuck] = []
    tracker = Tracker(sent, on_stuck=seen.append, stuck=StuckRule(tool_window=20))
    with tracker.attribute(session_id="s-empty"):
        for _ in range(6):
            tool(tracker, "search", args_hash="")  # the contract's "not given"
    assert seen == [] and [e.args_hash for e in sent.events] == [""] * 6


def test_the_same_call_after_progress_is_no_repeat_but_a_cycle_of_the_same_calls_is(sent: Collected) -> None:
    # a coding agent runs the tests after each edit: the same call, each time after a call it never made
    seen: list[Stuck] = []
    tracker = Tracker(sent, on_stuck=seen.append, stuck=StuckRule(tool_window=50))
    with tracker.attribute(session_id="s-edits"):
        for n in range(6):
            tool(tracker, "run_tests", args={})
            tool(tracker, "edit_file", args={"path": "a.py", "patch": f"fix {n}"})
        assert seen == []
    with tracker.attribute(session_id="s-cycle"):  # the same edit and the same tests, over and over
        for _ in range(3):
            tool(tracker, "run_tests", args={})
            tool(tracker, "edit_file", args={"path": "a.py", "patch": "fix 0"})
    assert [(s.session, s.repeated, s.times) for s in seen] == [("s-cycle", "edit_file", 3)]
