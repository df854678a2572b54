"""``loop_detected``: one session behaving like a runaway agent.

Per session: the last tool calls (one tool over and over), how often each prompt hash came back,
and the session's tool calls, tokens and cost against their caps. An incident lasts until the
session has been quiet for ``session_idle_minutes``; then it resolves with what the session cost.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from schemas.alert import Severity
from schemas.config import LoopConfig
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import Finding
from streams.detectors.watchlist import Watchlist


@dataclass(slots=True)
class _Session:
    agent: str
    feature: str
    started: float
    last: float
    tools: deque[str] | None = None
    """The last tool calls' tool names, from the first tool call on."""
    prompts: Counter[str] | None = None
    """How often each prompt hash was sent, from the first call with one on."""
    calls: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class _Minute:
    """One event-time minute of calls with a session, as :meth:`LoopDetector.prepare` counted them."""

    sessions: list[c.Row]
    """(data mode, session, first agent, first feature, first and last ts, calls, tool calls, tokens, cost)"""
    tools: list[c.Row]
    """(data mode, session, tool name) of each tool call, in time order."""
    prompts: list[c.Row]
    """(data mode, session, prompt hash) of each call with a prompt hash."""


class LoopDetector:
    def __init__(self, config: LoopConfig) -> None:
        self._config = config
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._due: Watchlist[tuple[str, str]] = Watchlist()
        self._swept: dict[str, int] = {}

    def prepare(self, calls: pa.Table) -> dict[int, _Minute]:
        """Per minute of calls (``calls.in_time_order``): its sessions' counts, tool calls and prompt hashes."""
        if not self._config.enabled:
            return {}
        calls = calls.filter(pc.not_equal(calls.column("session_id"), ""))
        calls = calls.append_column("tool", pc.equal(calls.column("kind"), "tool"))  # a sum of booleans counts them
        session = ["data_mode", "session_id"]
        sessions = c.per_minute(calls, session, [
            ("agent_id", "first"), ("feature", "first"), (c.AT, "min"), (c.AT, "max"),
            ([], "count_all"), ("tool", "sum"), (c.TOKENS, "sum"), ("cost_usd", "sum"),
        ])  # fmt: skip
        tools = c.rows_per_minute(calls.filter(calls.column("tool")), [*session, "tool_name"])
        prompts = c.rows_per_minute(
            calls.filter(pc.not_equal(calls.column("prompt_hash"), "")), [*session, "prompt_hash"]
        )
        return {
            minute: _Minute(groups, tools.get(minute, []), prompts.get(minute, []))
            for minute, groups in sessions.items()
        }

    def observe(self, minute: int, calls: _Minute) -> None:
        """Count one event-time minute's calls (from :meth:`prepare`) into their sessions."""
        sessions = self._sessions
        for data_mode, session_id, agent, feature, first, last, count, tool_calls, tokens, cost in calls.sessions:
            key = (data_mode, session_id)
            session = sessions.get(key)
            if session is None:
                session = sessions[key] = _Session(agent, feature, first, last)
            elif last > session.last:
                session.last = last
            session.calls += count
            session.tool_calls += tool_calls
            session.tokens += tokens
            session.cost += cost or 0.0
            self._due.touch(key)
        window = self._config.tool_window
        for data_mode, session_id, tool_name in calls.tools:  # in time order
            session = sessions[(data_mode, session_id)]
            if session.tools is None:
                session.tools = deque(maxlen=window)
            session.tools.append(tool_name)
        for data_mode, session_id, prompt_hash in calls.prompts:
            session = sessions[(data_mode, session_id)]
            if session.prompts is None:
                session.prompts = Counter()
            session.prompts[prompt_hash] += 1

    def check(self, now_of: dict[str, float]) -> list[Finding]:
        findings = []
        idle = self._config.session_idle_minutes * 60
        for key in self._due.due():
            session = self._sessions.get(key)
            now = now_of.get(key[0])
            if session is None or now is None:
                continue
            ended = now - session.last >= idle
            finding = self._finding(key, session, now, ended)
            if finding is not None:
                findings.append(finding)
                if finding.watched:
                    self._due.watch(key)
        self._forget_ended(now_of, idle)
        return findings

    def _finding(self, key: tuple[str, str], session: _Session, now: float, ended: bool) -> Finding | None:
        cfg = self._config
        reasons: list[str] = []
        doubled = False
        if session.tools is not None and len(session.tools) == cfg.tool_window:
            tool, times = Counter(session.tools).most_common(1)[0]
            if times / cfg.tool_window > cfg.same_tool_share:
                reasons.append(f"{times} of its last {cfg.tool_window} tool calls were {tool}")
        if session.prompts:
            prompt, times = session.prompts.most_common(1)[0]
            if times >= cfg.prompt_repeats:
                reasons.append(f"the same prompt ({prompt[:12]}) was sent {times} times")
        for label, value, cap in (("tool calls", session.tool_calls, cfg.max_tool_calls),
                                  ("tokens", session.tokens, cfg.max_tokens),
                                  ("cost", session.cost, cfg.max_cost_usd)):  # fmt: skip
            if value > cap:
                shown = f"${value:,.2f} (cap ${cap:g})" if label == "cost" else f"{value:,} {label} (cap {cap:,})"
                reasons.append(shown)
                doubled = doubled or value > 2 * cap
        severity: Severity | None = None
        if reasons and not ended:
            severity = "critical" if doubled or len(reasons) >= 3 else "warning"
        elif not ended:
            return None
        data_mode, session_id = key
        who = f"agent {session.agent}" if session.agent else "a session"
        summary = (
            f"{session.calls} calls, {session.tool_calls} tool calls, {session.tokens:,} tokens, ${session.cost:,.2f}"
        )
        if ended:
            message = f"session {session_id} of {who} ({session.feature}) went quiet: {summary} in all."
        else:
            message = (
                f"{who} looks stuck in a loop in session {session_id} ({session.feature}): "
                + "; ".join(reasons)
                + f". So far: {summary}."
            )
        return Finding(
            kind="loop_detected", data_mode=data_mode, dimension="session_id", key=session_id,
            severity=severity, sustained=not ended, value=round(session.cost, 4), baseline=None,
            threshold=cfg.max_cost_usd,
            window="session", message=message,
            query=(
                "SELECT ts, agent_id, kind, if(kind = 'tool', tool_name, model) AS what, prompt_hash, "
                "input_tokens + output_tokens AS tokens, cost_usd, status FROM llm_calls "
                f"WHERE session_id = {sql_string(session_id)} AND data_mode = {sql_string(data_mode)} "
                "ORDER BY ts"
            ),
            at=now,
        )  # fmt: skip

    def _forget_ended(self, now_of: dict[str, float], idle: float) -> None:
        """Once a minute of event time, drop sessions quiet for longer than the idle time (and not firing)."""
        for data_mode, now in now_of.items():
            minute = int(now // 60)
            if self._swept.get(data_mode) == minute:
                continue
            self._swept[data_mode] = minute
            ended = [k for k, s in self._sessions.items() if k[0] == data_mode and now - s.last >= idle]
            for key in ended:
                if not self._due.is_pending(key):
                    del self._sessions[key]
