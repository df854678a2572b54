"""Sessions on realistic shapes: a loop is repetition (``loop_detected``), size is ``session_budget``'s question."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from producers._args import args_hash
from schemas.alert import Alert
from schemas.call_event import CallEvent
from schemas.config import DetectorsConfig, LoopConfig, SessionBudgetConfig
from streams.detectors.engine import Detectors
from tests.demo_calls import priced

START = datetime(2026, 11, 2, 9, tzinfo=UTC)  # a Monday morning
TOOLS = ["read_file", "grep", "edit_file", "run_tests", "list_dir", "git_diff", "search_docs"]


class Traffic:
    """Calls of many sessions, each a sequence of (seconds from its start, fields)."""

    def __init__(self) -> None:
        self.calls: list[CallEvent] = []

    def add(self, at: datetime, **fields: Any) -> None:
        event = {"event_id": f"e{len(self.calls)}", "ts": at, "provider": "openai", "model": "gpt-4o-mini",
                 "feature": "code.assist", "agent_id": "coder", "cost_usd": 0.002, **fields}  # fmt: skip
        self.calls.append(CallEvent.model_validate(event))

    def tool(self, at: datetime, name: str, **fields: Any) -> None:
        self.add(at, kind="tool", tool_name=name, provider="internal", model=name, **fields)

    def alerts(self, config: DetectorsConfig | None = None) -> list[Alert]:
        detectors = Detectors(config or DetectorsConfig())
        ordered = sorted(self.calls, key=lambda call: call.ts)
        alerts: list[Alert] = []
        for start in range(0, len(ordered), 4000):
            alerts.extend(detectors.observe(priced(ordered[start : start + 4000]).calls.columns))
        return alerts


def coding_session(traffic: Traffic, rng: random.Random, at: datetime, session: str) -> None:
    """A healthy coding agent: 8-14 tool calls over varied tools, a model call between each."""
    tools: list[str] = []
    while len(tools) < rng.randint(8, 14):
        tool = rng.choice(TOOLS)
        tools += [tool] * (rng.randint(1, 4) if tool == "read_file" else 1)  # reads come in runs of files
    for tool in tools:
        traffic.add(at, session_id=session, input_tokens=rng.randint(2000, 9000), output_tokens=300)
        traffic.tool(at + timedelta(seconds=2), tool, session_id=session)
        at += timedelta(seconds=rng.randint(5, 40))


def rag_session(traffic: Traffic, rng: random.Random, at: datetime, session: str) -> None:
    """A large-context RAG call or two: 20k-60k prompt tokens, mostly cached."""
    for _ in range(rng.randint(1, 2)):
        tokens = rng.randint(20_000, 60_000)
        traffic.add(
            at, session_id=session, feature="docs.answer", agent_id=None, input_tokens=tokens,
            cache_read_tokens=int(tokens * 0.8), output_tokens=rng.randint(200, 900), cost_usd=0.01,
        )  # fmt: skip
        at += timedelta(seconds=rng.randint(10, 120))


def healthy_week(rng: random.Random) -> Traffic:
    traffic = Traffic()
    for day in range(7):
        for n in range(40 if day < 5 else 8):  # quiet weekends
            at = START + timedelta(days=day, hours=rng.uniform(0, 10))
            coding_session(traffic, rng, at, f"code-{day}-{n}")
            rag_session(traffic, rng, at + timedelta(minutes=3), f"rag-{day}-{n}")
    return traffic


@pytest.mark.parametrize("seed", [11, 21, 31])
def test_healthy_coding_and_rag_sessions_never_page(seed: int) -> None:
    """1,905 false alarms came from these shapes: a 30k-token call passed the session token cap."""
    traffic = healthy_week(random.Random(seed))
    assert [(a.kind, a.key) for a in traffic.alerts()] == []


def test_an_agent_repeating_one_tool_is_a_loop_and_named_in_the_message() -> None:
    traffic = healthy_week(random.Random(12))
    at = START + timedelta(days=7, hours=2)
    for n in range(30):
        traffic.tool(at + timedelta(seconds=10 * n), "run_tests", session_id="stuck-1")
    firing = [a for a in traffic.alerts() if a.status == "firing"]
    assert {(a.kind, a.dimension, a.key) for a in firing} == {("loop_detected", "session_id", "stuck-1")}
    assert "15 of its last 15 tool calls were run_tests" in firing[0].message
    assert [a.severity for a in firing] == ["warning", "critical"]  # 30 in a row: worse, said in its thread


def test_a_request_with_only_a_trace_id_is_watched_too() -> None:
    traffic = Traffic()
    for n in range(16):
        traffic.tool(START + timedelta(seconds=5 * n), "web_search", trace_id="t-loop", session_id=None)
    alerts = traffic.alerts()
    assert [(a.kind, a.dimension, a.key, a.status) for a in alerts] == [
        ("loop_detected", "trace_id", "t-loop", "firing")
    ]
    assert "request (trace) t-loop" in alerts[0].message


def test_the_same_tool_must_also_be_the_latest_run() -> None:
    traffic = Traffic()
    for n, tool in enumerate(["fetch"] * 9 + ["summarize"]):  # 9 of the last 10, but the agent moved on
        traffic.tool(START + timedelta(seconds=5 * n), tool, session_id="s-1")
    config = DetectorsConfig(loop_detected=LoopConfig(tool_window=10, min_run=3))
    assert traffic.alerts(config) == []


def test_retries_of_one_prompt_are_not_a_loop_but_repeated_first_attempts_are() -> None:
    retried = Traffic()
    for attempt in (1, 2, 3):
        retried.add(START + timedelta(seconds=attempt), session_id="s-r", prompt_hash="p1", attempt=attempt)
    assert retried.alerts() == []
    repeated = Traffic()
    for n in range(3):
        repeated.add(START + timedelta(seconds=n * 20), session_id="s-p", prompt_hash="p1")
    assert [(a.kind, a.key) for a in repeated.alerts()] == [("loop_detected", "s-p")]


def test_a_session_far_outside_its_features_history_is_one_incident_for_the_feature() -> None:
    rng = random.Random(13)
    traffic = healthy_week(rng)
    at = START + timedelta(days=7, hours=3)
    for n in range(3):  # three runaway-sized requests of the RAG feature at once: one cause
        for k in range(6):
            traffic.add(
                at + timedelta(seconds=20 * k + n), session_id=f"huge-{n}", feature="docs.answer", agent_id=None,
                input_tokens=90_000, output_tokens=2000, cost_usd=0.2,
            )  # fmt: skip
    brand_new = START + timedelta(days=7, hours=4)
    for k in range(6):  # a feature's first sessions: no history to be an outlier of
        traffic.add(brand_new + timedelta(seconds=k), session_id="new-1", feature="new.feature", input_tokens=90_000)
    firing = [a for a in traffic.alerts() if a.status == "firing" and a.kind in ("session_budget", "loop_detected")]
    assert [(a.kind, a.dimension, a.key) for a in firing] == [("session_budget", "feature", "docs.answer")]
    assert "3 live session(s) of docs.answer" in firing[0].message and "huge-" in firing[0].message


def test_a_configured_cap_pages_per_session_before_any_history() -> None:
    traffic = Traffic()
    for n in range(4):
        traffic.add(START + timedelta(seconds=n), session_id="s-big", input_tokens=6000, output_tokens=500)
    config = DetectorsConfig.model_validate(
        {"session_budget": {"caps": [{"agent_id": "coder", "max_tokens": 20_000, "max_minutes": 1}]}}
    )
    alerts = traffic.alerts(config)
    assert [(a.kind, a.dimension, a.key) for a in alerts] == [("session_budget", "session_id", "s-big")]
    assert "26,000 tokens (the cap of agent coder is 20,000 tokens)" in alerts[0].message
    assert traffic.alerts(DetectorsConfig(session_budget=SessionBudgetConfig(enabled=False))) == []


def test_calls_the_sdk_refused_are_neither_repetition_nor_size() -> None:
    traffic = Traffic()
    for n in range(20):  # a governor refused each of these before it was made: sent as cancelled
        traffic.tool(START + timedelta(seconds=n), "run_tests", session_id="s-gov", status="cancelled")
    config = DetectorsConfig.model_validate({"session_budget": {"caps": [{"agent_id": "coder", "max_tool_calls": 5}]}})
    assert traffic.alerts(config) == []


def call_of(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool call's fields as the SDK sends them: the arguments' args_hash, never the arguments."""
    return {"kind": "tool", "tool_name": tool, "provider": "internal", "model": tool, "args_hash": args_hash(args)}


def test_one_tool_with_the_same_arguments_is_a_loop_named_with_its_count_and_critical_at_three_times() -> None:
    traffic = healthy_week(random.Random(14))
    at = START + timedelta(days=7, hours=2)
    for n in range(9):  # a model call between each: the agent asks again and gets the same answer
        traffic.add(at + timedelta(seconds=20 * n), session_id="same-args", input_tokens=3000, output_tokens=200)
        traffic.add(at + timedelta(seconds=20 * n + 5), session_id="same-args", **call_of("search_docs", {"q": "sso"}))
    firing = [a for a in traffic.alerts() if a.status == "firing"]
    assert {(a.kind, a.dimension, a.key) for a in firing} == {("loop_detected", "session_id", "same-args")}
    assert "it called search_docs 3 times with the same arguments" in firing[0].message
    assert [a.severity for a in firing] == ["warning", "critical"]  # 9 times: three times the threshold
    assert "it called search_docs 9 times with the same arguments" in firing[1].message
    assert "args_hash" in firing[0].query


def test_one_tool_with_other_arguments_each_time_retries_and_progress_in_between_are_no_loop() -> None:
    traffic = Traffic()
    for n in range(10):  # paging through results
        traffic.add(START + timedelta(seconds=10 * n), session_id="paging", **call_of("search_docs", {"page": n}))
    for attempt in (1, 2, 3):  # a retry sends the same call again
        traffic.add(START + timedelta(seconds=attempt), session_id="retried", attempt=attempt,
                    **call_of("fetch_order", {"id": "A-1"}))  # fmt: skip
    for n in range(6):  # a coding agent runs the tests after each new edit
        traffic.add(START + timedelta(seconds=30 * n), session_id="edits", **call_of("run_tests", {}))
        traffic.add(START + timedelta(seconds=30 * n + 10), session_id="edits",
                    **call_of("edit_file", {"path": "a.py", "patch": f"fix {n}"}))  # fmt: skip
    assert traffic.alerts() == []
    cycle = Traffic()
    for n in range(3):  # the same edit and the same tests, over and over: a loop on the third cycle
        cycle.add(START + timedelta(seconds=30 * n), session_id="cycle", **call_of("run_tests", {}))
        cycle.add(START + timedelta(seconds=30 * n + 10), session_id="cycle",
                  **call_of("edit_file", {"path": "a.py", "patch": "fix 0"}))  # fmt: skip
    alerts = cycle.alerts()
    assert [(a.kind, a.key) for a in alerts] == [("loop_detected", "cycle")]
    assert "it called edit_file 3 times with the same arguments" in alerts[0].message


def test_the_same_arguments_rule_is_configured_in_loop_detected() -> None:
    traffic = Traffic()
    for n in range(4):
        traffic.add(START + timedelta(seconds=10 * n), session_id="s-4", **call_of("lookup", {"k": 1}))
    assert traffic.alerts(DetectorsConfig(loop_detected=LoopConfig(same_args_repeats=5))) == []
    assert [a.severity for a in traffic.alerts(DetectorsConfig(loop_detected=LoopConfig(same_args_repeats=4)))] == [
        "warning"
    ]
    with pytest.raises(ValidationError, match="same_args_repeats"):
        LoopConfig(same_args_repeats=1)
