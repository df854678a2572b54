"""Sessions of agents: ``loop_detected`` (one repeating itself) and ``session_budget`` (one too large).

A session is the calls sharing a ``session_id``, or, for calls that carry only a ``trace_id``, one
request. A loop is repetition, never size: more than ``same_tool_share`` of the last
``tool_window`` tool calls being one tool (the last ``min_run`` of them in a row), one prompt hash
sent ``prompt_repeats`` times, or one tool called with the same ``args_hash`` ``same_args_repeats``
times with no new tool call in between (retries aside from both: a call the session had not made
before is progress, so an agent that runs the tests after each new edit is no loop, one that makes
the same edit and runs the tests again is). Size is ``session_budget``'s question: a session
past the caps a team set for its feature or agent, or, where none are set, far outside its own
feature's recent sessions (``outlier_factor`` times their 99th percentile), once the feature has a
history; a healthy large-context call or a busy coding agent is normal for its feature and never
pages. An incident lasts until the session has been quiet for ``session_idle_minutes``; then it
resolves with what the session cost, and the session joins its feature's history.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from schemas.alert import AlertKind, Severity
from schemas.config import LoopConfig, SessionBudgetConfig, SessionCap
from sinks.clickhouse import sql_string
from streams.detectors import calls as c
from streams.detectors.findings import Finding, until
from streams.detectors.watchlist import Watchlist

SESSION = "session"
"""The column :meth:`SessionDetector.prepare` adds: the call's session id, or its trace id without one."""
SESSION_DIMENSION = "session_dimension"
"""The column :meth:`SessionDetector.prepare` adds: ``session_id`` or ``trace_id``, what :data:`SESSION` holds."""
HISTORY_LIMIT = 5000
"""Finished sessions kept per feature for its percentiles: the latest ones within ``history_days``."""
_METRICS = ("tokens", "tool calls", "cost")
_MOST_TOOL_CALLS = 4096
"""Distinct (tool, args hash) calls remembered per session; past it, counting starts over."""

SessionKey = tuple[str, str, str]
"""(data mode, dimension, id) of a session."""


@dataclass(slots=True)
class _Session:
    agent: str
    feature: str
    started: float
    last: float
    tools: deque[str] | None = None
    """The last tool calls' tool names, from the first tool call on."""
    prompts: Counter[str] | None = None
    """How often each prompt hash was sent (first attempts), from the first call with one on."""
    tool_args: dict[tuple[str, str], tuple[int, int]] | None = None
    """Per (tool name, args hash), from the first such call on (first attempts): how many times in a row it
    was called, no new tool call in between, and :attr:`progress` then."""
    progress: int = 0
    """How many tool calls (with an args hash) the session made that it had not made before."""
    run_tool: str = ""
    run: int = 0
    """The latest tool and how many of the latest tool calls were it, one after the other."""
    calls: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost: float = 0.0

    def metrics(self) -> tuple[float, float, float]:
        return float(self.tokens), float(self.tool_calls), self.cost


@dataclass(slots=True)
class _History:
    """A feature's finished sessions: (ended at, tokens, tool calls, cost), newest last."""

    sessions: deque[tuple[float, float, float, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    _p99: tuple[float, float, float] | None = None
    _p99_of: int = -1

    def add(self, ended: float, metrics: tuple[float, float, float]) -> None:
        self.sessions.append((ended, *metrics))

    def p99(self, now: float, days: float) -> tuple[int, tuple[float, float, float]]:
        """How many sessions ended within ``days`` before ``now``, and their 99th percentiles (cached)."""
        oldest = now - days * 86_400
        while self.sessions and self.sessions[0][0] < oldest:
            self.sessions.popleft()
        count = len(self.sessions)
        if self._p99 is None or abs(count - self._p99_of) > max(10, self._p99_of // 20):
            self._p99 = (
                _percentile(sorted(s[1] for s in self.sessions), 0.99),
                _percentile(sorted(s[2] for s in self.sessions), 0.99),
                _percentile(sorted(s[3] for s in self.sessions), 0.99),
            )
            self._p99_of = count
        return count, self._p99


def _percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class SessionMinute:
    """One event-time minute of calls with a session, as :meth:`SessionDetector.prepare` counted them."""

    sessions: list[c.Row]
    """(data mode, dimension, session, first agent, first feature, first and last ts, calls, tool calls, tokens,
    cost)"""
    tools: list[c.Row]
    """(data mode, dimension, session, tool name) of each tool call, in time order."""
    prompts: list[c.Row]
    """(data mode, dimension, session, prompt hash) of each first attempt with a prompt hash."""
    tool_args: list[c.Row] = field(default_factory=list)
    """(data mode, dimension, session, tool name, args hash) of each first attempt of a tool call with an args hash."""


class SessionDetector:
    def __init__(self, loops: LoopConfig, budget: SessionBudgetConfig) -> None:
        self._loops = loops
        self._budget = budget
        self._caps_by_feature: dict[str, list[SessionCap]] = {}
        self._caps_by_agent: dict[str, list[SessionCap]] = {}
        for cap in budget.caps:
            if cap.feature is not None:
                self._caps_by_feature.setdefault(cap.feature, []).append(cap)
            if cap.agent_id is not None:
                self._caps_by_agent.setdefault(cap.agent_id, []).append(cap)
        self._sessions: dict[SessionKey, _Session] = {}
        self._history: dict[tuple[str, str], _History] = {}
        self._due: Watchlist[SessionKey] = Watchlist()
        self._outliers: dict[tuple[str, str], dict[SessionKey, tuple[float, str, int]]] = {}
        """Per (data mode, feature): its live outlier sessions, (how many times the p99, example, history size)."""
        self._outliers_changed: set[tuple[str, str]] = set()
        self._open: set[tuple[AlertKind, SessionKey]] = set()
        """Incidents this detector raised that are still open: held open while the session lasts."""
        self._swept: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self._loops.enabled or self._budget.enabled

    @property
    def idle_seconds(self) -> float:
        return self._loops.session_idle_minutes * 60

    def prepare(self, calls: pa.Table) -> dict[int, SessionMinute]:
        """Per minute of calls (``calls.in_time_order``): its sessions' counts, tool calls, prompt and args hashes."""
        if not self.enabled:
            return {}
        # a call the SDK refused before making it (status cancelled) was never made: no repetition, no size
        calls = calls.filter(pc.not_equal(calls.column("status"), "cancelled"))
        has_session = pc.not_equal(calls.column("session_id"), "")
        calls = (
            calls.append_column(SESSION, pc.if_else(has_session, calls.column("session_id"), calls.column("trace_id")))
            .append_column(SESSION_DIMENSION, pc.if_else(has_session, "session_id", "trace_id"))
            .append_column("tool", pc.equal(calls.column("kind"), "tool"))  # a sum of booleans counts them
        )
        calls = calls.filter(pc.not_equal(calls.column(SESSION), ""))
        session = ["data_mode", SESSION_DIMENSION, SESSION]
        sessions = c.per_minute(calls, session, [
            ("agent_id", "first"), ("feature", "first"), (c.AT, "min"), (c.AT, "max"),
            ([], "count_all"), ("tool", "sum"), (c.TOKENS, "sum"), ("cost_usd", "sum"),
        ])  # fmt: skip
        tools = c.rows_per_minute(calls.filter(calls.column("tool")), [*session, "tool_name"])
        first_attempt = pc.equal(calls.column("attempt"), 1)
        first_attempts = pc.and_(pc.not_equal(calls.column("prompt_hash"), ""), first_attempt)
        prompts = c.rows_per_minute(calls.filter(first_attempts), [*session, "prompt_hash"])
        hashed = pc.and_(pc.and_(calls.column("tool"), pc.not_equal(calls.column("args_hash"), "")), first_attempt)
        tool_args = c.rows_per_minute(calls.filter(hashed), [*session, "tool_name", "args_hash"])
        return {
            minute: SessionMinute(groups, tools.get(minute, []), prompts.get(minute, []), tool_args.get(minute, []))
            for minute, groups in sessions.items()
        }

    def observe(self, minute: int, calls: SessionMinute) -> None:
        """Count one event-time minute's calls (from :meth:`prepare`) into their sessions."""
        sessions = self._sessions
        for mode, dimension, session_id, agent, feature, first, last, count, tools, tokens, cost in calls.sessions:
            key = (mode, dimension, session_id)
            session = sessions.get(key)
            if session is None:
                session = sessions[key] = _Session(agent, feature, first, last)
            elif last > session.last:
                session.last = last
            session.calls += count
            session.tool_calls += tools
            session.tokens += tokens
            session.cost += cost or 0.0
            self._due.touch(key)
        window = self._loops.tool_window
        for mode, dimension, session_id, tool_name in calls.tools:  # in time order
            session = sessions[(mode, dimension, session_id)]
            if session.tools is None:
                session.tools = deque(maxlen=window)
            session.tools.append(tool_name)
            if tool_name == session.run_tool:
                session.run += 1
            else:
                session.run_tool, session.run = tool_name, 1
        for mode, dimension, session_id, prompt_hash in calls.prompts:
            session = sessions[(mode, dimension, session_id)]
            if session.prompts is None:
                session.prompts = Counter()
            session.prompts[prompt_hash] += 1
        for mode, dimension, session_id, tool_name, args_hash in calls.tool_args:  # in time order
            session = sessions[(mode, dimension, session_id)]
            if session.tool_args is None:
                session.tool_args = {}
            call = (tool_name, args_hash)
            before = session.tool_args.get(call)
            if before is None:  # a call it never made: progress, whatever it repeated before starts afresh
                if len(session.tool_args) >= _MOST_TOOL_CALLS:
                    session.tool_args.clear()
                session.progress += 1
                times = 1
            else:
                times = before[0] + 1 if before[1] == session.progress else 1
            session.tool_args[call] = (times, session.progress)

    def add_history(self, data_mode: str, feature: str, ended: float, metrics: tuple[float, float, float]) -> None:
        """A finished session of ``feature`` (tokens, tool calls, cost): warm-up, or a session going quiet."""
        self._history.setdefault((data_mode, feature), _History()).add(ended, metrics)

    def check(self, now_of: dict[str, float]) -> list[Finding]:
        findings = []
        idle = self.idle_seconds
        for key in self._due.due():
            session = self._sessions.get(key)
            now = now_of.get(key[0])
            if session is None or now is None:
                continue
            ended = now - session.last >= idle
            for finding in (self._loop(key, session, now, ended), self._size(key, session, now, ended)):
                if finding is not None:
                    findings.append(finding)
                    if finding.watched:
                        self._due.watch(key)
        self._forget_ended(now_of, idle)
        findings.extend(self._outlier_findings(now_of))
        return findings

    def _loop(self, key: SessionKey, session: _Session, now: float, ended: bool) -> Finding | None:
        cfg = self._loops
        if not cfg.enabled:
            return None
        reasons: list[str] = []
        blatant = False
        if session.tools is not None and len(session.tools) == cfg.tool_window:
            tool, times = Counter(session.tools).most_common(1)[0]
            repeated = times / cfg.tool_window > cfg.same_tool_share
            if repeated and session.run_tool == tool and session.run >= cfg.min_run:
                reasons.append(f"{times} of its last {cfg.tool_window} tool calls were {tool}")
                blatant = session.run >= 2 * cfg.tool_window
        if session.prompts:
            prompt, times = session.prompts.most_common(1)[0]
            if times >= cfg.prompt_repeats:
                reasons.append(f"the same prompt ({prompt[:12]}) was sent {times} times")
                blatant = blatant or times >= 3 * cfg.prompt_repeats
        if session.tool_args:
            (tool, _), (times, _) = max(session.tool_args.items(), key=lambda call: call[1][0])
            if times >= cfg.same_args_repeats:
                reasons.append(f"it called {tool} {times} times with the same arguments")
                blatant = blatant or times >= 3 * cfg.same_args_repeats
        # critical from the start when the repetition is already blatant: an escalation would wait in Slack
        severity: Severity = "critical" if blatant or len(reasons) >= 2 else "warning"
        return self._conclude("loop_detected", key, session, now, ended, reasons, severity, None)

    def _size(self, key: SessionKey, session: _Session, now: float, ended: bool) -> Finding | None:
        """Against the caps a team set: a finding for the session. Without caps, an outlier is counted
        into its feature's incident instead (:meth:`_outlier_findings`): one cause, one incident."""
        cfg = self._budget
        if not cfg.enabled:
            return None
        caps = self._caps_by_feature.get(session.feature, []) + self._caps_by_agent.get(session.agent, [])
        if not caps:
            self._count_outlier(key, session, now, ended)
            return None
        reasons: list[str] = []
        worst = 0.0
        minutes = (session.last - session.started) / 60
        for cap in caps:
            owner = f"feature {cap.feature}" if cap.feature is not None else f"agent {cap.agent_id}"
            for label, value, limit in (
                ("tokens", session.tokens, cap.max_tokens), ("tool calls", session.tool_calls, cap.max_tool_calls),
                ("cost", session.cost, cap.max_cost_usd), ("minutes", minutes, cap.max_minutes),
            ):  # fmt: skip
                if limit is not None and value > limit:
                    reasons.append(f"{_shown(label, value)} (the cap of {owner} is {_shown(label, limit)})")
                    worst = max(worst, value / limit)
        severity: Severity = "critical" if worst > 2 else "warning"
        return self._conclude("session_budget", key, session, now, ended, reasons, severity, worst or None)

    def _count_outlier(self, key: SessionKey, session: _Session, now: float, ended: bool) -> None:
        """Whether a live session is far outside its feature's recent sessions (a loop's session is the
        loop's incident, not this one), kept per feature until the session ends."""
        cfg = self._budget
        feature = (key[0], session.feature)
        outliers = self._outliers.setdefault(feature, {})
        before = key in outliers
        outliers.pop(key, None)
        history = self._history.get(feature)
        if not ended and ("loop_detected", key) not in self._open and history is not None:
            count, p99s = history.p99(now, cfg.history_days)
            if count >= cfg.min_history_sessions:
                worst: tuple[float, str] | None = None
                for label, value, p99 in zip(_METRICS, session.metrics(), p99s, strict=True):
                    if p99 > 0 and value > cfg.outlier_factor * p99 and (worst is None or value / p99 > worst[0]):
                        worst = (value / p99, f"{_shown(label, value)} ({value / p99:,.1f}x; p99 {_shown(label, p99)})")
                if worst is not None:
                    outliers[key] = (worst[0], f"{key[2]}: {worst[1]}", count)
        if before or key in outliers:
            self._outliers_changed.add(feature)
        if not outliers:
            del self._outliers[feature]

    def _outlier_findings(self, now_of: dict[str, float]) -> list[Finding]:
        """One finding per feature whose set of outlier sessions changed: firing while it has any."""
        findings = []
        for data_mode, feature in sorted(self._outliers_changed):
            now = now_of.get(data_mode)
            if now is None:
                continue
            outliers = self._outliers.get((data_mode, feature), {})
            worst = sorted(outliers.values(), reverse=True)
            history = worst[0][2] if worst else 0
            severity: Severity | None = None
            if worst:
                severity = "critical" if worst[0][0] > 2 * self._budget.outlier_factor else "warning"
            examples = "; ".join(example for _, example, _ in worst[:3])
            message = (
                f"{len(worst)} live session(s) of {feature} are far larger than its last {history:,} sessions "
                f"(over {self._budget.outlier_factor:g}x their 99th percentile); the largest: {examples}."
                if worst
                else f"no session of {feature} is far larger than its recent sessions any more."
            )
            findings.append(
                Finding(
                    kind="session_budget",
                    data_mode=data_mode,
                    dimension="feature",
                    key=feature,
                    severity=severity,
                    value=float(len(worst)),
                    baseline=None,
                    threshold=None,
                    window="session",
                    message=message,
                    query=(
                        "SELECT if(session_id != '', session_id, trace_id) AS session, min(ts) AS started, "
                        "sum(input_tokens + output_tokens) AS tokens, countIf(kind = 'tool') AS tool_calls, "
                        f"sum(cost_usd) AS cost FROM llm_calls WHERE feature = {sql_string(feature)} "
                        f"AND data_mode = {sql_string(data_mode)} AND ts > {until(now)} - INTERVAL 1 DAY "
                        "GROUP BY session ORDER BY tokens DESC LIMIT 20"
                    ),
                    at=now,
                )
            )
        self._outliers_changed.clear()
        return findings

    def _conclude(
        self,
        kind: AlertKind,
        key: SessionKey,
        session: _Session,
        now: float,
        ended: bool,
        reasons: list[str],
        severity: Severity,
        ratio: float | None,
    ) -> Finding | None:
        """The finding of one kind for a session: firing while ``reasons`` hold, held open (sustained) while
        an incident of it is open, resolved when the session ends; ``None`` when there is nothing to say."""
        incident = (kind, key)
        if ended:
            self._open.discard(incident)
            return self._finding(kind, key, session, now, None, False, reasons, ratio)
        if reasons:
            self._open.add(incident)
            return self._finding(kind, key, session, now, severity, True, reasons, ratio)
        if incident in self._open:
            return self._finding(kind, key, session, now, None, True, reasons, ratio)
        return None

    def _finding(
        self,
        kind: AlertKind,
        key: SessionKey,
        session: _Session,
        now: float,
        severity: Severity | None,
        sustained: bool,
        reasons: list[str],
        ratio: float | None,
    ) -> Finding:
        data_mode, dimension, session_id = key
        who = f"agent {session.agent}" if session.agent else "a session"
        noun = "session" if dimension == "session_id" else "request (trace)"
        tools = ""
        if session.tools:
            tool, times = Counter(session.tools).most_common(1)[0]
            tools = f" ({tool} {times} of the last {len(session.tools)})"
        summary = (
            f"{session.calls} calls, {session.tool_calls} tool calls{tools}, {session.tokens:,} tokens, "
            f"${session.cost:,.2f}"
        )
        if severity is None:
            message = f"{noun} {session_id} of {who} ({session.feature}) went quiet: {summary} in all."
        else:
            what = "looks stuck in a loop" if kind == "loop_detected" else "is far larger than its sessions should be"
            message = f"{who} {what} in {noun} {session_id} ({session.feature}): " + "; ".join(reasons)
            message += f". So far: {summary}."
        return Finding(
            kind=kind, data_mode=data_mode, dimension=dimension, key=session_id,
            severity=severity, sustained=sustained, value=round(session.cost, 4),
            baseline=None, threshold=round(ratio, 2) if ratio else None, window="session", message=message,
            query=(
                "SELECT ts, agent_id, kind, if(kind = 'tool', tool_name, model) AS what, prompt_hash, args_hash, "
                "attempt, input_tokens + output_tokens AS tokens, cost_usd, status FROM llm_calls "
                f"WHERE {dimension} = {sql_string(session_id)} AND data_mode = {sql_string(data_mode)} ORDER BY ts"
            ),
            at=now,
        )  # fmt: skip

    def _forget_ended(self, now_of: dict[str, float], idle: float) -> None:
        """Once a minute of event time, move sessions quiet for longer than the idle time (and not firing)
        to their feature's history."""
        for data_mode, now in now_of.items():
            minute = int(now // 60)
            if self._swept.get(data_mode) == minute:
                continue
            self._swept[data_mode] = minute
            ended = [k for k, s in self._sessions.items() if k[0] == data_mode and now - s.last >= idle]
            for key in ended:
                if not self._due.is_pending(key):
                    session = self._sessions.pop(key)
                    self.add_history(data_mode, session.feature, session.last, session.metrics())
                    feature = (data_mode, session.feature)
                    outliers = self._outliers.get(feature)
                    if outliers is not None and outliers.pop(key, None) is not None:
                        self._outliers_changed.add(feature)
                        if not outliers:
                            del self._outliers[feature]


def _shown(label: str, value: float) -> str:
    if label == "cost":
        return f"${value:,.2f}"
    if label == "minutes":
        return f"{value:,.1f} minutes"
    return f"{value:,.0f} {label}"
