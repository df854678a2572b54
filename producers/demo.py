"""Realistic demo traffic: a sales copilot, a support agent with tools, a coordinator with sub-agents.

Every event has ``data_mode = "demo"``, so it never mixes with real spend. The generator is
deterministic for a seed: :func:`requests_between` yields the calls and outcomes of all requests
that started in a time range, at event time, so seven days of history and live traffic come from
the same code.

- Sales copilot: features ``sales.email_draft``, ``sales.proposal_summary``, ``sales.crm_followup``
  and ``sales.pipeline_risk_brief``, each request staged retrieval -> draft -> rewrite -> score
  across OpenAI, Anthropic and Google models, with prompt versions; some drafts book a meeting.
- Support agent: sessions of a few turns, each a model call with tool calls under it; most
  sessions close their ticket.
- Coordinator: ``eng.code_review`` requests where a coordinator delegates to a code agent, which
  delegates to a syntax analyzer and runs a linter tool.

Retries (a rate-limited or timed-out first attempt) and errors happen at realistic rates.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import orjson

from producers._pseudonym import pseudonymize
from producers.demo_incidents import (
    LOOP_SESSION,
    LOOP_TOOL,
    REGRESSED_FEATURE,
    REGRESSED_VERSION,
    SPIKE_FEATURE,
    DemoIncidents,
)
from schemas.call_event import CallEvent
from schemas.outcome_event import OutcomeEvent

DEMO_USER_KEY = b"spendstream-demo-user-id-key-000"

TENANTS = ("tenant_acme", "tenant_globex", "tenant_initech", "tenant_umbrella", "tenant_hooli")
TENANT_WEIGHTS = (0.35, 0.25, 0.2, 0.12, 0.08)
SALES_FEATURES = ("sales.email_draft", "sales.proposal_summary", "sales.crm_followup", "sales.pipeline_risk_brief")
SALES_WEIGHTS = (0.45, 0.2, 0.25, 0.1)
PROMPT_VERSIONS = {
    "sales.email_draft": ("v3", "v4"),
    "sales.proposal_summary": ("v1",),
    "sales.crm_followup": ("v2", "v3"),
    "sales.pipeline_risk_brief": ("v1",),
    "support.ticket_reply": ("v7",),
    "eng.code_review": ("v2",),
}
DRAFT_MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro"))
SUPPORT_TOOLS = ("kb_search", "ticket_lookup", "refund_policy", "order_status")

# requests per hour at the daily peak, per workload (scaled by ``scale``)
PEAK_PER_HOUR = {"sales": 210.0, "support": 75.0, "coordinator": 24.0}
# seconds per generated token, and a fixed overhead, per model family
SPEED = {"gpt-4o": (0.008, 0.35), "gpt-4o-mini": (0.006, 0.25), "claude-sonnet-4-5": (0.008, 0.5),
         "claude-haiku-4-5": (0.005, 0.3), "gemini-2.5-pro": (0.007, 0.6), "gemini-2.0-flash": (0.004, 0.2),
         "text-embedding-3-small": (0.0, 0.08)}  # fmt: skip


def diurnal(ts: datetime) -> float:
    """Share of the peak rate at this hour (UTC): quiet at night, busiest mid-afternoon, calmer on weekends."""
    hour = ts.hour + ts.minute / 60
    level = 0.12 + 0.88 * max(0.0, math.sin(math.pi * (hour - 6) / 16)) ** 1.5 if 6 <= hour <= 22 else 0.12
    return level * (0.6 if ts.weekday() >= 5 else 1.0)


@dataclass
class Request:
    """The events of one request, in time order: calls first, outcomes after."""

    calls: list[CallEvent] = field(default_factory=list)
    outcomes: list[OutcomeEvent] = field(default_factory=list)


class DemoTraffic:
    """Generates the demo's requests. ``scale`` multiplies the request rate."""

    def __init__(
        self, seed: int = 7, scale: float = 1.0, incidents: DemoIncidents | None = None, now: datetime | None = None
    ) -> None:
        self._now = now or datetime.now(UTC)
        """Where the history ends: prompt rollouts are placed relative to it."""
        self._rng = random.Random(seed)
        self._scale = scale
        self._incidents = incidents
        self._users = {t: [pseudonymize(f"{t}-user-{i}", DEMO_USER_KEY) for i in range(12)] for t in TENANTS}

    def requests_between(self, start: datetime, end: datetime) -> Iterator[Request]:
        """Every request that starts in ``[start, end)``, in start order (one Poisson process per workload)."""
        minute = start
        while minute < end:
            step_end = min(minute + timedelta(minutes=1), end)
            share = (step_end - minute).total_seconds() / 3600 * diurnal(minute) * self._scale
            starts: list[tuple[datetime, str]] = []
            for workload, peak in PEAK_PER_HOUR.items():
                for _ in range(self._poisson(peak * share)):
                    offset = self._rng.random() * (step_end - minute).total_seconds()
                    starts.append((minute + timedelta(seconds=offset), workload))
            if self._incidents is not None:
                starts.extend((at, "spike") for at in self._incidents.spike_starts(minute, step_end))
                if minute <= self._incidents.loop_start < step_end:
                    starts.append((self._incidents.loop_start, "loop"))
            for at, workload in sorted(starts):
                yield self._request(workload, at)
            minute = step_end

    # -- workloads ---------------------------------------------------------------------------------

    def _request(self, workload: str, at: datetime) -> Request:
        if workload == "sales":
            return self._sales(at)
        if workload == "support":
            return self._support(at)
        if workload == "loop":
            return self._runaway_session(at)
        if workload == "spike":
            return self._pipeline_rerun(at)
        return self._coordinator(at)

    def _sales(self, at: datetime) -> Request:
        rng = self._rng
        feature = rng.choices(SALES_FEATURES, SALES_WEIGHTS)[0]
        tenant = rng.choices(TENANTS, TENANT_WEIGHTS)[0]
        common = {
            "feature": feature,
            "prompt_version": self._version(feature, at),
            "tenant_id": tenant,
            "user_id": rng.choice(self._users[tenant]),
            "team": "sales-eng",
            "agent_id": "sales_copilot",
        }
        request = Request()
        trace = self._id()
        context = rng.randint(1500, 6000)
        draft_out = rng.randint(250, 900)
        if common["prompt_version"] == REGRESSED_VERSION and feature == REGRESSED_FEATURE:
            context = int(context * 2.5)  # the regression: the new prompt pastes the whole account history
        at, root = self._call(request, at, trace, None, "openai", "text-embedding-3-small", context, 0, common)
        at = self._tool(request, at, trace, root, "crm_search", common)
        provider, model = DRAFT_MODELS[zlib.crc32(f"{tenant}/{feature}".encode()) % len(DRAFT_MODELS)]
        at, _ = self._call(request, at, trace, root, provider, model, context + 800, draft_out, common, stream=True)
        at, _ = self._call(request, at, trace, root, "openai", "gpt-4o-mini", draft_out + 400, draft_out, common)
        at, _ = self._call(request, at, trace, root, "google", "gemini-2.0-flash", draft_out + 300, 20, common)
        if feature in ("sales.email_draft", "sales.crm_followup") and rng.random() < 0.08:
            outcome = "meeting_booked" if feature == "sales.email_draft" else "reply_received"
            request.outcomes.append(self._outcome(at + timedelta(minutes=rng.randint(5, 240)), outcome, trace, common))
        return request

    def _support(self, at: datetime) -> Request:
        rng = self._rng
        tenant = rng.choices(TENANTS, TENANT_WEIGHTS)[0]
        session = self._id()
        common = {
            "feature": "support.ticket_reply",
            "prompt_version": "v7",
            "tenant_id": tenant,
            "user_id": rng.choice(self._users[tenant]),
            "team": "support",
            "agent_id": "support_agent",
            "session_id": session,
        }
        request = Request()
        history = rng.randint(400, 900)
        # at most three turns: a session resends its history, and four long turns could pass the
        # loop detector's token cap; the demo's ordinary sessions must stay quiet
        for _ in range(rng.randint(2, 3)):
            trace = self._id()
            model = "claude-haiku-4-5" if rng.random() < 0.7 else "gpt-4o-mini"
            provider = "anthropic" if model.startswith("claude") else "openai"
            at, root = self._call(request, at, trace, None, provider, model, history, rng.randint(60, 200), common)
            for tool in rng.sample(SUPPORT_TOOLS, rng.randint(1, 3)):
                at = self._tool(request, at, trace, root, tool, common)
            out = rng.randint(120, 400)
            at, _ = self._call(request, at, trace, root, provider, model, history + 300, out, common, stream=True)
            history += 300 + out
            at += timedelta(seconds=rng.uniform(20, 180))  # the customer writes back
        if rng.random() < 0.6:
            request.outcomes.append(self._outcome(at, "ticket_closed", None, common))
        return request

    def _coordinator(self, at: datetime) -> Request:
        rng = self._rng
        tenant = rng.choices(TENANTS, TENANT_WEIGHTS)[0]
        common = {"feature": "eng.code_review", "prompt_version": "v2", "tenant_id": tenant, "team": "platform"}
        request = Request()
        trace = self._id()
        plan = {**common, "agent_id": "coordinator"}
        at, root = self._call(request, at, trace, None, "openai", "gpt-4o", 3000, 400, plan)
        for _ in range(rng.randint(1, 3)):
            coder = {**common, "agent_id": "code_agent"}
            at, code = self._call(request, at, trace, root, "anthropic", "claude-sonnet-4-5", 9000, 700, coder)
            analyzer = {**common, "agent_id": "syntax_analyzer"}
            at, check = self._call(request, at, trace, code, "openai", "gpt-4o-mini", 2500, 200, analyzer)
            at = self._tool(request, at, trace, check, "run_linter", analyzer)
        self._call(request, at, trace, root, "openai", "gpt-4o", 5000, 600, plan)
        return request

    # -- incidents ---------------------------------------------------------------------------------

    def _runaway_session(self, at: datetime) -> Request:
        """A support agent that keeps asking for the order status with the same prompt, 24 times."""
        rng = self._rng
        tenant = "tenant_globex"
        common = {
            "feature": "support.ticket_reply", "prompt_version": "v7", "tenant_id": tenant,
            "user_id": self._users[tenant][3], "team": "support", "agent_id": "support_agent",
            "session_id": LOOP_SESSION,
        }  # fmt: skip
        request = Request()
        history = 700
        for turn in range(24):
            trace = self._id()
            looping = {**common, "prompt_hash": "ph_order_status_retry"} if turn else common
            at, root = self._call(request, at, trace, None, "anthropic", "claude-haiku-4-5", history, 80, looping)
            at = self._tool(request, at, trace, root, LOOP_TOOL, common)
            history += 450
            at += timedelta(seconds=rng.uniform(1, 3))
        return request

    def _pipeline_rerun(self, at: datetime) -> Request:
        """One risk brief of a whole pipeline re-run by one user: 40k tokens of context on gpt-4o."""
        tenant = "tenant_initech"
        common = {
            "feature": SPIKE_FEATURE, "prompt_version": "v1", "tenant_id": tenant,
            "user_id": self._users[tenant][0], "team": "sales-eng", "agent_id": "sales_copilot",
        }  # fmt: skip
        request = Request()
        trace = self._id()
        at, root = self._call(request, at, trace, None, "openai", "text-embedding-3-small", 40_000, 0, common)
        at, _ = self._call(request, at, trace, root, "openai", "gpt-4o", 40_000, 500, common, stream=True)
        return request

    # -- events ------------------------------------------------------------------------------------

    def _call(
        self,
        request: Request,
        at: datetime,
        trace: str,
        parent: str | None,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        common: dict[str, str],
        *,
        stream: bool = False,
    ) -> tuple[datetime, str]:
        """Add one model call (with a failed first attempt now and then); return when it ended and its id."""
        rng = self._rng
        input_tokens = max(1, int(input_tokens * rng.uniform(0.8, 1.2)))
        output_tokens = int(output_tokens * rng.uniform(0.7, 1.3))
        per_token, overhead = SPEED.get(model, (0.01, 0.4))
        attempt = 1
        if rng.random() < 0.03:
            status = rng.choice(("rate_limited", "timeout"))
            failed_ms = 30_000.0 if status == "timeout" else rng.uniform(80, 300)
            request.calls.append(
                self._event(at, trace, parent, provider, model, common, input_tokens=0, output_tokens=0,
                            latency_ms=failed_ms, status=status, error_type=status, attempt=1)
            )  # fmt: skip
            at += timedelta(milliseconds=failed_ms + 500)
            attempt = 2
        status = "error" if rng.random() < 0.01 else "success"
        if status == "error":
            output_tokens = 0
        latency_ms = (overhead + per_token * output_tokens) * 1000 * rng.uniform(0.8, 1.4)
        if self._incidents is not None and self._incidents.is_slow(model, at):
            latency_ms = rng.uniform(35_000, 55_000)  # the provider's latency collapse
        cached = int(input_tokens * rng.uniform(0.3, 0.8)) if input_tokens > 2000 and rng.random() < 0.5 else 0
        ttft_ms = round(min(latency_ms, overhead * 1000 * rng.uniform(0.8, 1.2)), 1) if stream else None
        event = self._event(
            at, trace, parent, provider, model, common,
            input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached,
            latency_ms=round(latency_ms, 1), ttft_ms=ttft_ms,
            status=status, error_type="server_error" if status == "error" else None, attempt=attempt,
        )  # fmt: skip
        request.calls.append(event)
        return at + timedelta(milliseconds=latency_ms), event.event_id

    def _tool(
        self, request: Request, at: datetime, trace: str, parent: str, tool: str, common: dict[str, str]
    ) -> datetime:
        latency_ms = self._rng.uniform(40, 400)
        request.calls.append(
            self._event(at, trace, parent, "internal", tool, common, kind="tool", tool_name=tool,
                        latency_ms=round(latency_ms, 1), cost_usd=0.0002)
        )  # fmt: skip
        return at + timedelta(milliseconds=latency_ms)

    def _event(
        self,
        at: datetime,
        trace: str,
        parent: str | None,
        provider: str,
        model: str,
        common: dict[str, str],
        **usage: object,
    ) -> CallEvent:
        fields = {
            **common,
            **usage,
            "event_id": self._id(),
            "ts": at,
            "provider": provider,
            "model": model,
            "trace_id": trace,
            "parent_id": parent,
            "environment": "prod",
            "data_mode": "demo",
        }
        return CallEvent.model_validate({k: v for k, v in fields.items() if v is not None})

    def _outcome(self, at: datetime, outcome: str, trace: str | None, common: dict[str, str]) -> OutcomeEvent:
        return OutcomeEvent(
            event_id=self._id(),
            ts=min(at, datetime.now(UTC)),
            outcome=outcome,
            trace_id=trace,
            session_id=common.get("session_id"),
            feature=common["feature"],
            tenant_id=common["tenant_id"],
            data_mode="demo",
        )

    def _version(self, feature: str, at: datetime) -> str:
        versions = PROMPT_VERSIONS[feature]
        # the newer version rolls out to half the traffic over the last three days
        rollout = at > self._now - timedelta(days=3)
        if feature == REGRESSED_FEATURE and self._incidents is not None:
            rollout = at >= self._incidents.rollout
            versions = (versions[0], REGRESSED_VERSION)
        if len(versions) == 1:
            return versions[0]
        return versions[-1] if rollout and self._rng.random() < 0.5 else versions[0]

    def _id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _poisson(self, mean: float) -> int:
        # Knuth's method: means here are small (a few per minute)
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self._rng.random()
            if p <= limit:
                return k
            k += 1


class DemoEmitter(Protocol):
    """What the runner sends through: an :class:`~producers.Emitter`."""

    def emit(self, event: CallEvent) -> None: ...

    def emit_raw(self, value: bytes, key: str | None = None) -> None: ...


@dataclass
class DemoProgress:
    calls: int = 0
    outcomes: int = 0
    requests: int = 0
    phase: str = "history"
    at: datetime | None = None


class DemoRunner:
    """Sends demo traffic: ``days`` of history at event time, then live traffic until stopped.

    Events are sent when their time has come: in live mode a request's later calls wait for their
    timestamp, as they would in production.
    """

    def __init__(self, traffic: DemoTraffic, calls: DemoEmitter, outcomes: DemoEmitter) -> None:
        self._traffic = traffic
        self._calls = calls
        self._outcomes = outcomes
        self._pending: list[tuple[datetime, int, CallEvent | OutcomeEvent]] = []
        self._sequence = 0
        self.progress = DemoProgress()

    def history(self, days: float, on_progress: Callable[[DemoProgress], None] | None = None) -> None:
        """Send every request of the last ``days`` days whose events are in the past by now."""
        now = datetime.now(UTC)
        start = now - timedelta(days=days)
        hour = start
        while hour < now:
            end = min(hour + timedelta(hours=1), now)
            for request in self._traffic.requests_between(hour, end):
                self._queue(request)
            self.progress.at = end
            self._send_due(end)
            if on_progress is not None:
                on_progress(self.progress)
            hour = end

    def live(
        self,
        duration: float | None,
        on_progress: Callable[[DemoProgress], None] | None = None,
        tick: float = 1.0,
    ) -> None:
        """Generate and send traffic in real time for ``duration`` seconds (None: until interrupted)."""
        self.progress.phase = "live"
        stop_at = None if duration is None else time.monotonic() + duration
        last = datetime.now(UTC)
        while stop_at is None or time.monotonic() < stop_at:
            time.sleep(tick)
            now = datetime.now(UTC)
            for request in self._traffic.requests_between(last, now):
                self._queue(request)
            last = now
            self.progress.at = now
            self._send_due(now)
            if on_progress is not None:
                on_progress(self.progress)

    def _queue(self, request: Request) -> None:
        self.progress.requests += 1
        events: list[CallEvent | OutcomeEvent] = [*request.calls, *request.outcomes]
        for event in events:
            self._sequence += 1
            heapq.heappush(self._pending, (event.ts, self._sequence, event))

    def _send_due(self, now: datetime) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, event = heapq.heappop(pending)
            if isinstance(event, CallEvent):
                self._calls.emit(event)
                self.progress.calls += 1
            else:
                self._outcomes.emit_raw(
                    orjson.dumps(event.model_dump(mode="json", exclude_none=True)),
                    event.session_id or event.trace_id,
                )
                self.progress.outcomes += 1
