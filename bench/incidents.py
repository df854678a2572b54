"""The incidents the detectors' benchmark injects into quiet traffic, each labelled with the alert that must catch it.

Every incident is one cause, with the alert a person subscribed to it would expect (kind, dimension,
key), when it starts (its first call: the clock of time-to-detect) and when it ends. Some add calls
(a runaway client, a loop, a tenant's bulk job), some alter calls the quiet traffic already has (a
model slowing down, rate limits, a prompt version that triples tokens): an altered call keeps its
``event_id`` and replaces the quiet one. They are spread over the evaluated days, a day or more
apart where they touch the same spend, at times of day and week that matter: a burn at night, a
spike on a Saturday.
"""

from __future__ import annotations

import bisect
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.traffic import DAY_MS, HOUR_MS, Call, Tenant, Traffic


@dataclass
class Incident:
    name: str
    """The type of incident (one of each)."""
    kind: str
    dimension: str
    key: str
    """The alert that must catch it."""
    start_ms: int
    end_ms: int
    calls: list[Call] = field(default_factory=list)
    """Calls it adds."""
    altered: dict[str, Call] = field(default_factory=dict)
    """Calls of the quiet traffic it alters, by ``event_id``."""

    def add(self, calls: list[Call]) -> None:
        self.calls.extend(calls)
        if calls:
            self.start_ms = min(self.start_ms, min(int(c["ts"]) for c in calls))  # type: ignore[call-overload]


class Quiet:
    """The quiet traffic's calls, in time order."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self._times = [int(call["ts"]) for call in calls]  # type: ignore[call-overload]

    def between(self, start: int, end: int) -> list[Call]:
        """The calls in ``[start, end)``."""
        return self.calls[bisect.bisect_left(self._times, start) : bisect.bisect_left(self._times, end)]


Builder = Callable[[Traffic, Quiet, int], Incident]
"""(traffic, its quiet calls, the incident's start in epoch ms) -> the incident."""


def _tenant(traffic: Traffic, name: str) -> Tenant:
    return next(t for t in traffic.tenants if t.name == name)


def _every(traffic: Traffic, start: int, end: int, per_hour: float) -> list[int]:
    """Start times of a steady stream of sessions: ``per_hour`` on average, Poisson arrivals."""
    at, times = start, list[int]()
    while True:
        at += int(traffic.rng.expovariate(per_hour) * HOUR_MS)
        if at >= end:
            return times
        times.append(at)


def feature_spike(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A retry bug re-summarizes every call: ``sales.call_summary`` at five times its peak rate for eight hours."""
    incident = Incident("spend spike of a feature", "spend_spike", "feature", "sales.call_summary",
                        start, start + 8 * HOUR_MS)  # fmt: skip
    weights = [t.weight for t in traffic.tenants[:8]]
    for at in _every(traffic, start, incident.end_ms, 80):
        tenant = traffic.rng.choices(traffic.tenants[:8], weights)[0]
        incident.add(traffic.call_summary(at, traffic.attribution("sales.call_summary", tenant, at)))
    return incident


def hourly_burn(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A client integration of tenant_globex stuck re-asking the docs: 200 RAG sessions an hour for 90 minutes."""
    incident = Incident("hourly burn of a feature", "hourly_burn", "feature", "docs.answer",
                        start, start + 90 * 60_000)  # fmt: skip
    common = {"tenant_id": "tenant_globex", "user_id": "u-globex-integration", "feature": "docs.answer"}
    for at in _every(traffic, start, incident.end_ms, 200):
        incident.add(traffic.rag(at, common))
    return incident


def night_burn(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """Scheduled CI agents of tenant_stark run at 03:00 UTC: code.assist at 20 sessions an hour for two hours,
    less than its afternoon peak, several times its night."""
    incident = Incident("burn at night", "hourly_burn", "feature", "code.assist", start, start + 2 * HOUR_MS)
    tenant = _tenant(traffic, "tenant_stark")
    for at in _every(traffic, start, incident.end_ms, 20):
        incident.add(traffic.coding(at, traffic.attribution("code.assist", tenant, at)))
    return incident


def weekend_spike(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """tenant_umbrella imports its archive through the docs on a Saturday: about five times a weekend day's
    spend, less than a weekday's (under twice a flat daily average)."""
    incident = Incident("spend spike on a weekend", "spend_spike", "feature", "docs.answer",
                        start, start + 16 * HOUR_MS)  # fmt: skip
    tenant = _tenant(traffic, "tenant_umbrella")
    for at in _every(traffic, start, incident.end_ms, 25):
        incident.add(traffic.rag(at, traffic.attribution("docs.answer", tenant, at)))
    return incident


def tool_loop(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A coding agent stuck on a failing test: run_tests 30 times, a model call between each."""
    session = f"stuck-{traffic.id()[:12]}"
    incident = Incident("an agent repeating one tool 30 times", "loop_detected", "session_id", session,
                        start, start + HOUR_MS)  # fmt: skip
    calls: list[Call] = []
    trace = {**traffic.attribution("code.assist", _tenant(traffic, "tenant_acme"), start), "team": "devex",
             "agent_id": "coder", "prompt_version": "v12", "session_id": session, "trace_id": traffic.id()}  # fmt: skip
    at = start
    for n in range(33):
        at = traffic.llm(calls, at, trace, "claude-sonnet-4-5", 9000 + 300 * n, 200, cached=8000)
        at = traffic.tool(calls, at, trace, "read_file" if n < 3 else "run_tests", seconds=traffic.rng.uniform(5, 20))
    incident.add(calls)
    return incident


def prompt_loop(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A support bot asking for the order status with the same prompt, turn after turn."""
    session = f"repeat-{traffic.id()[:12]}"
    incident = Incident("the same prompt repeating", "loop_detected", "session_id", session, start, start + HOUR_MS)
    calls: list[Call] = []
    common = {**traffic.attribution("support.chat", _tenant(traffic, "tenant_hooli"), start), "team": "support",
              "agent_id": "support_bot", "prompt_version": "v8", "session_id": session}  # fmt: skip
    at = start
    for turn in range(8):
        trace = {**common, "trace_id": traffic.id()}
        at = traffic.llm(calls, at, trace, "claude-haiku-4-5", 1500 + 400 * turn, 90, prompt_hash="ph-order-status")
        at = traffic.tool(calls, at, trace, "order_status")
        at += int(traffic.rng.uniform(2, 8) * 1000)
    incident.add(calls)
    return incident


def latency_collapse(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """claude-haiku-4-5 answers in 35-55 s for 25 minutes."""
    incident = Incident("a latency collapse of a model", "latency_p95", "model", "claude-haiku-4-5",
                        start, start + 25 * 60_000)  # fmt: skip
    for call in quiet.between(start, incident.end_ms):
        if call["model"] == "claude-haiku-4-5" and call.get("status", "success") == "success":
            incident.altered[str(call["event_id"])] = {**call, "latency_ms": round(traffic.rng.uniform(35e3, 55e3), 1)}
    return incident


def rate_limit_storm(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """claude-sonnet-4-5 rate-limits 60% of the first attempts for 20 minutes; the SDKs retry each one to
    three times with backoff until one goes through."""
    incident = Incident("a rate-limit storm on one model", "error_rate", "model", "claude-sonnet-4-5",
                        start, start + 20 * 60_000)  # fmt: skip
    for call in quiet.between(start, incident.end_ms):
        if call["model"] != "claude-sonnet-4-5" or call.get("attempt", 1) != 1 or traffic.rng.random() >= 0.6:
            continue
        at = int(call["ts"])  # type: ignore[call-overload]
        attempts = traffic.rng.randint(1, 3)
        for attempt in range(1, attempts + 1):
            failed = {**call, "event_id": traffic.id(), "ts": at, "status": "rate_limited", "attempt": attempt,
                      "error_type": "rate_limited", "latency_ms": 120.0, "input_tokens": 0, "output_tokens": 0,
                      "cache_read_tokens": 0}  # fmt: skip
            failed.pop("ttft_ms", None)
            incident.add([failed])
            at += 1000 * 2**attempt
        incident.altered[str(call["event_id"])] = {**call, "ts": at, "attempt": attempts + 1}
    return incident


def prompt_regression(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """sales.email_draft rolls out v5 to half of its requests: it pastes the whole thread, three times the tokens."""
    incident = Incident("a prompt version that triples tokens", "prompt_version_regression", "prompt_version",
                        "sales.email_draft@v5", start, start + 6 * HOUR_MS)  # fmt: skip
    for call in quiet.between(start, traffic.end_ms):
        if call.get("feature") == "sales.email_draft" and zlib.crc32(str(call["trace_id"]).encode()) % 2:
            altered = {**call, "prompt_version": "v5"}
            if call.get("kind", "llm") == "llm":
                altered["input_tokens"] = 3 * int(call.get("input_tokens", 0))  # type: ignore[call-overload]
            incident.altered[str(call["event_id"])] = altered
    return incident


def tenant_takeover(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """tenant_wonka (4% of spend) moves its whole engineering org onto the coding agent in one day."""
    incident = Incident("a tenant suddenly taking most of the spend", "tenant_concentration", "tenant_id",
                        "tenant_wonka", start, start + 14 * HOUR_MS)  # fmt: skip
    tenant = _tenant(traffic, "tenant_wonka")
    for at in _every(traffic, start, incident.end_ms, 90):
        incident.add(traffic.coding(at, traffic.attribution("code.assist", tenant, at)))
    return incident


def session_outlier(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """One docs session of 40 calls of 50-60k tokens, each a different question: no loop, far beyond its p99."""
    incident = Incident("a session far larger than its feature's normal", "session_budget", "feature", "docs.answer",
                        start, start + 2 * HOUR_MS)  # fmt: skip
    calls: list[Call] = []
    common = {**traffic.attribution("docs.answer", _tenant(traffic, "tenant_initech"), start), "team": "knowledge",
              "prompt_version": "v3", "session_id": traffic.id()}  # fmt: skip
    at = start
    for _ in range(40):
        trace = {**common, "trace_id": traffic.id()}
        context = traffic.rng.randint(50_000, 60_000)
        at = traffic.llm(calls, at, trace, "claude-sonnet-4-5", context, 400, cached=int(context * 0.8))
        at += int(traffic.rng.uniform(5, 30) * 1000)
    incident.add(calls)
    return incident


def unattributed_surge(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A new service ships without a feature tag: 250 gpt-4o calls an hour for eight hours."""
    incident = Incident("an unattributed spend surge", "unattributed_spend", "feature", "unattributed",
                        start, start + 8 * HOUR_MS)  # fmt: skip
    common = {"team": "growth", "tenant_id": "tenant_acme", "user_id": "svc-lead-scorer"}
    for at in _every(traffic, start, incident.end_ms, 250):
        calls: list[Call] = []
        traffic.llm(calls, at, {**common, "trace_id": traffic.id()}, "gpt-4o", traffic.rng.randint(6000, 10_000), 600)
        incident.add(calls)
    return incident


def unpriced_model(traffic: Traffic, quiet: Quiet, start: int) -> Incident:
    """A team tries its fine-tuned model, self-hosted: no price is known for it."""
    incident = Incident("an unpriced model", "unpriced_model", "model", "selfhost/llama-3.3-70b-ft",
                        start, start + 4 * HOUR_MS)  # fmt: skip
    tenant = _tenant(traffic, "tenant_globex")
    for at in _every(traffic, start, incident.end_ms, 30):
        calls: list[Call] = []
        common = {**traffic.attribution("support.chat", tenant, at), "team": "support", "trace_id": traffic.id()}
        traffic.llm(calls, at, common, "llama-3.3-70b-ft", 2000, 200, provider="selfhost")
        incident.add(calls)
    return incident


Planned = tuple[Builder, float, float]
"""An incident's builder, the evaluated day it happens on (0: the first) and its hour (UTC)."""
SCHEDULE: tuple[Planned, ...] = (
    # (builder, day of the evaluated days, hour UTC); the evaluated days start on a Monday
    (latency_collapse, 1, 14),
    (tool_loop, 1, 20),
    (feature_spike, 2, 13),
    (rate_limit_storm, 3, 15),
    (night_burn, 4, 3),
    (weekend_spike, 5, 8),
    (prompt_loop, 6, 10),
    (tenant_takeover, 7, 6),
    (session_outlier, 8, 10),
    (unattributed_surge, 9, 12),
    (unpriced_model, 9, 16),
    (prompt_regression, 10, 11),
    (hourly_burn, 11, 15),
)
"""When each incident happens. Spend incidents of one key are days apart: the first one's spend is in the
second's baseline, as it would be."""


def inject(
    traffic: Traffic, quiet: Quiet, first_day_ms: int, days: int, schedule: Sequence[Planned] = SCHEDULE
) -> list[Incident]:
    """The incidents of ``schedule`` that fit in ``days`` evaluated days from ``first_day_ms``, in its order."""
    traffic.rng = random.Random(traffic.seed * 7919)  # the incidents do not depend on how long the history was
    found = []
    for builder, day, hour in schedule:
        start = first_day_ms + int(day * DAY_MS + hour * HOUR_MS)
        if day < days:
            found.append(builder(traffic, quiet, start))
    return found
