"""Stuck detection in process: a session repeating one tool, one prompt or one tool call, seen before its next call.

More than ``same_tool_share`` of a session's last ``tool_window`` tool calls being one tool (by
default: 5 of the last 5), one ``prompt_hash`` sent ``prompt_repeats`` times, or one tool called
with the same ``args_hash`` ``args_repeats`` times with no new tool call in between (retries,
``attempt`` above 1, aside from both), calls the application's ``on_stuck`` hook with a
:class:`Stuck` before the call is made: the hook can inject a meta-prompt, switch strategy, or stop
the session by raising. A tool call the session has not made before (with those arguments) is
progress: an agent that runs the tests after each new edit repeats no call; one that makes the same
edit and runs the tests again does. The same pattern has to be seen afresh (another window of tool
calls, the prompt or the tool call as many times again) to call it again; a call that completes two
patterns at once is told once, as the tool call repeated. The stream's ``loop_detected`` stays the
fleet-wide view.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from producers._exceptions import SDKError
from producers._sessions import IDLE_SECONDS, IdleMap

if TYPE_CHECKING:
    from producers._track import TrackedCall

_MAX_PROMPTS = 1024  # distinct prompt hashes, and tool calls, kept per session; past it, counting starts over

Pattern = Literal["tool", "prompt", "args"]


@dataclass(frozen=True, slots=True)
class StuckRule:
    """When a session looks stuck (``Tracker(stuck=StuckRule(...))``; ``stuck=None`` turns it off).

    Args:
        tool_window: the last tool calls of a session looked at ...
        same_tool_share: ... of which more than this share being one tool is stuck.
        prompt_repeats: one ``prompt_hash`` sent this many times in a session is stuck.
        args_repeats: one tool called with the same ``args_hash`` this many times in a session, with no new
            tool call in between, is stuck.
    """

    tool_window: int = 5
    same_tool_share: float = 0.8
    prompt_repeats: int = 2
    args_repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("tool_window", "prompt_repeats", "args_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise SDKError(f"StuckRule {name}={value!r}: a whole number of at least 2")
        if not 0 < self.same_tool_share < 1:
            raise SDKError(f"StuckRule same_tool_share={self.same_tool_share!r}: a share between 0 and 1")


@dataclass(frozen=True, slots=True)
class Stuck:
    """What the ``on_stuck`` hook is told: which session repeats what, and the call about to be made."""

    session: str
    """The session id (the trace id for calls without one)."""
    pattern: Pattern
    """``tool``: one tool over and over; ``prompt``: one prompt sent again; ``args``: one tool called
    with the same arguments again."""
    repeated: str
    """The tool name (``tool``, ``args``) or the prompt hash (``prompt``)."""
    times: int
    """How many of the last ``window`` tool calls were that tool, or how often the prompt was sent or
    the tool called with those arguments."""
    window: int
    """The tool calls looked at (``tool``); the repeats that count as stuck (``prompt``, ``args``)."""
    call: TrackedCall
    """The call about to be made: its ``model``, ``event_id``, ``trace_id``; raise to stop it."""

    @property
    def reason(self) -> str:
        if self.pattern == "tool":
            return f"{self.times} of its last {self.window} tool calls were {self.repeated}"
        if self.pattern == "args":
            return f"it called {self.repeated} {self.times} times with the same arguments"
        return f"it sent the prompt {self.repeated} {self.times} times"


class _Recent:
    """A session's last tool calls, how often it sent each prompt, and how often it repeated each tool call."""

    __slots__ = ("calls", "progress", "prompts", "tools")

    def __init__(self) -> None:
        self.tools: deque[str] = deque()
        self.prompts: dict[str, int] = {}
        self.calls: dict[tuple[str, str], tuple[int, int]] = {}
        """Per (tool name, args hash): how many times in a row it was made, and :attr:`progress` then."""
        self.progress = 0
        """How many tool calls the session made that it had not made before (with those arguments)."""

    def repeat(self, tool_name: str, args_hash: str) -> int:
        """Count a tool call; how many times it was made with no new tool call in between (1: new, or after one)."""
        call = (tool_name, args_hash)
        before = self.calls.get(call)
        if before is None:
            if len(self.calls) >= _MAX_PROMPTS:
                self.calls.clear()
            self.progress += 1
            times = 1
        else:
            times = before[0] + 1 if before[1] == self.progress else 1
        self.calls[call] = (times, self.progress)
        return times


class StuckWatch:
    """What each session of one tracker did lately, to tell when it repeats itself."""

    def __init__(self, rule: StuckRule, idle_seconds: float = IDLE_SECONDS) -> None:
        self.rule = rule
        self._lock = threading.Lock()
        self._sessions: IdleMap[str, _Recent] = IdleMap(_Recent, idle_seconds)

    def observe(
        self, session: str, tool_name: str | None, prompt_hash: str | None, attempt: int, args_hash: str | None = None
    ) -> tuple[Pattern, str, int, int] | None:
        """Count a call about to be made; ``(pattern, repeated, times, window)`` when the session is stuck."""
        rule = self.rule
        with self._lock:
            recent = self._sessions.touch(session, time.monotonic())
            if prompt_hash is not None and attempt <= 1:
                prompts = recent.prompts
                times = prompts.get(prompt_hash, 0) + 1
                if times >= rule.prompt_repeats:
                    prompts.pop(prompt_hash, None)
                    return "prompt", prompt_hash, times, rule.prompt_repeats
                if times == 1 and len(prompts) >= _MAX_PROMPTS:
                    prompts.clear()
                prompts[prompt_hash] = times
            if tool_name is None:
                return None
            same_call: tuple[Pattern, str, int, int] | None = None
            if args_hash and attempt <= 1:  # "": none given
                times = recent.repeat(tool_name, args_hash)
                if times >= rule.args_repeats:
                    recent.calls[(tool_name, args_hash)] = (0, recent.progress)  # to be seen afresh
                    same_call = ("args", tool_name, times, rule.args_repeats)
            tools = recent.tools
            tools.append(tool_name)
            if len(tools) > rule.tool_window:
                tools.popleft()
            if len(tools) == rule.tool_window:
                tool, times = Counter(tools).most_common(1)[0]
                if times / rule.tool_window > rule.same_tool_share:
                    tools.clear()  # seen, whichever pattern is told: it must be seen afresh
                    return same_call or ("tool", tool, times, rule.tool_window)
        return same_call
