"""Realistic LLM traffic for the detectors' benchmark: weeks of it, seedable, messier than the demo.

    calls = Traffic(seed=1, start=datetime(2026, 9, 7, tzinfo=UTC), days=28).calls()

Each call is a dict, the JSON an application would send to ``llm.calls`` (``ts`` in epoch
milliseconds), in time order. What the traffic holds, so that a detector judged on it is judged on
the shapes real users make:

- Tenants in three time zones (US, Europe, Asia), their users drawn by a Zipf law (a few heavy
  users, a long tail) from a pool that grows with the traffic; a tenant onboarded mid-run.
- Business-hours peaks with a lunch dip, quiet nights and quiet weekends for office workloads; an
  evening peak, busier weekends for the consumer-facing one; swings from day to day (10%), now and
  then a tenant's team busy at twice its usual rate for an hour or two; steady growth
  (``growth`` a day).
- Workloads: a support agent (turns of a model call, tools, an answer; ``support.chat``), a
  large-context RAG feature (an embedding and one or two calls of 20k-60k prompt tokens, mostly
  cached; ``docs.answer``), a coding agent (8-14 tool calls over varied tools with runs of file
  reads, a model call between each; ``code.assist``), sales requests traced without sessions
  (``sales.email_draft``, ``sales.call_summary``), a high-volume cheap reranker
  (``search.rerank``), a nightly batch job at 02:00 UTC every day (``nightly.enrichment``), spend
  without a feature tag (internal scripts, a few percent), and a feature launched mid-run
  (``sales.forecast``, ramping up over three days).
- 1% errors; rate-limited and timed-out first attempts, retried; lognormal latency; a prompt
  rollout (``support.chat`` v7 to v8) that costs the same.

Models answer within what ``latency_p95``'s fixed thresholds assume of a healthy model (p95 5-11 s):
answers of 600 tokens and more from Sonnet-class models, as fast as they really are, have a p95
near 15 s and would page on their own.
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
STEP_MS = 10 * 60_000
"""Sessions are drawn per 10 minutes of each workload and tenant (a Poisson count, uniform start times)."""
START = datetime(2026, 9, 7, tzinfo=UTC)
"""A Monday at midnight."""


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float
    """Share of the traffic (of the tenants there from the start)."""
    utc_offset: int
    """Hours from UTC of the tenant's working day."""
    users: int
    """Users at the start; the pool grows with the traffic."""
    joins_day: float = 0.0
    """Days after the start when the tenant is onboarded (its traffic ramps up over three days)."""


TENANTS = (
    Tenant("tenant_acme", 0.26, -5, 120),
    Tenant("tenant_globex", 0.18, 1, 80),
    Tenant("tenant_initech", 0.14, -8, 60),
    Tenant("tenant_umbrella", 0.11, 1, 50),
    Tenant("tenant_hooli", 0.09, -8, 40),
    Tenant("tenant_stark", 0.08, -5, 40),
    Tenant("tenant_wayne", 0.06, 9, 30),
    Tenant("tenant_wonka", 0.04, 0, 20),
)
NEW_TENANT = Tenant("tenant_nakatomi", 0.06, 9, 30)
NEW_FEATURE = "sales.forecast"

# Share of the peak rate per local hour (0-23), interpolated.
_OFFICE = (0.04, 0.03, 0.03, 0.03, 0.04, 0.06, 0.15, 0.45, 0.8, 1.0, 1.0, 0.95,
           0.75, 0.9, 1.0, 1.0, 0.9, 0.65, 0.35, 0.22, 0.15, 0.1, 0.07, 0.05)  # fmt: skip
_OFFICE_WEEKEND = tuple(0.03 + 0.12 * max(0.0, math.sin(math.pi * (h - 8) / 12)) for h in range(24))
_CONSUMER = (0.35, 0.25, 0.18, 0.14, 0.12, 0.14, 0.22, 0.35, 0.45, 0.55, 0.6, 0.65,
             0.7, 0.68, 0.65, 0.65, 0.7, 0.8, 0.9, 1.0, 1.0, 0.95, 0.8, 0.55)  # fmt: skip


def shape(table: tuple[float, ...], hour: float) -> float:
    low = int(hour) % 24
    frac = hour - int(hour)
    return table[low] * (1 - frac) + table[(low + 1) % 24] * frac


# (fixed seconds, seconds per output token, seconds per 1,000 uncached prompt tokens) per model
SPEED = {
    "claude-haiku-4-5": (0.4, 0.006, 0.02), "claude-sonnet-4-5": (0.7, 0.011, 0.04), "gpt-4.1": (0.5, 0.01, 0.03),
    "gpt-4.1-mini": (0.35, 0.006, 0.015), "gpt-4o": (0.45, 0.01, 0.03), "gpt-4o-mini": (0.3, 0.006, 0.015),
    "gemini-2.5-pro": (1.2, 0.008, 0.02), "gemini-2.0-flash": (0.25, 0.004, 0.01),
    "text-embedding-3-small": (0.08, 0.0, 0.005),
}  # fmt: skip
PROVIDER = {"claude": "anthropic", "gpt": "openai", "text": "openai", "gemini": "google"}
CODE_TOOLS = ("read_file", "grep", "edit_file", "run_tests", "list_dir", "git_diff", "search_docs")
SUPPORT_TOOLS = ("kb_search", "order_status", "ticket_lookup", "refund_policy")

Call = dict[str, object]
Session = Callable[["Traffic", int, Mapping[str, object]], list[Call]]
"""A workload's session: (traffic, start in epoch ms, the attribution fields) -> its calls."""


@dataclass(frozen=True)
class Workload:
    name: str
    session: Session
    peak_per_hour: float
    """Sessions (or requests) an hour at the peak of the day, all tenants together, at the start."""
    weekday: tuple[float, ...]
    weekend: tuple[float, ...]
    from_day: float = 0.0
    """Days after the start when it is launched (ramping up over three days)."""


class Traffic:
    """The calls of ``days`` days from ``start``; the same for the same seed.

    ``scale`` multiplies every rate; ``growth`` is the volume's growth per day.
    """

    def __init__(
        self,
        seed: int = 1,
        start: datetime = START,
        days: float = 28.0,
        *,
        scale: float = 1.0,
        growth: float = 0.012,
        launch_day: float | None = None,
        onboard_day: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.start_ms = int(start.timestamp() * 1000)
        self.end_ms = self.start_ms + int(days * DAY_MS)
        self.days = days
        self.scale = scale
        self.growth = growth
        self._sequence = 0
        self.tenants = (*TENANTS, Tenant(**{**NEW_TENANT.__dict__, "joins_day": onboard_day or days * 0.6}))
        launch = launch_day if launch_day is not None else days * 0.7
        self.workloads = (
            Workload("support.chat", Traffic.support, 60, _OFFICE, _OFFICE_WEEKEND),
            Workload("docs.answer", Traffic.rag, 40, _OFFICE, _OFFICE_WEEKEND),
            Workload("code.assist", Traffic.coding, 22, _OFFICE, tuple(0.5 * v for v in _OFFICE_WEEKEND)),
            Workload("sales.email_draft", Traffic.email_draft, 30, _OFFICE, _OFFICE_WEEKEND),
            Workload("sales.call_summary", Traffic.call_summary, 15, _OFFICE, _OFFICE_WEEKEND),
            Workload("search.rerank", Traffic.rerank, 150, _CONSUMER, tuple(1.15 * v for v in _CONSUMER)),
            Workload("unattributed", Traffic.script, 8, _OFFICE, tuple(0.3 * v for v in _OFFICE_WEEKEND)),
            Workload(NEW_FEATURE, Traffic.forecast, 6, _OFFICE, _OFFICE_WEEKEND, from_day=launch),
        )
        # a user pool per tenant, drawn by Zipf weights (cumulative), long enough for the growth
        self._user_weights = [math.fsum(1 / (rank + 1) ** 1.1 for rank in range(n + 1)) for n in range(2000)]
        self._day_swing = {
            (w.name, day): math.exp(self.rng.gauss(0, 0.1)) for w in self.workloads for day in range(int(days) + 2)
        }
        self._busy: dict[tuple[str, str, int], tuple[int, int]] = {}
        """(workload, tenant, day) -> an hour or two (start, end in ms) when a team is twice as busy."""
        for w in self.workloads:
            for t in self.tenants:
                for day in range(int(days) + 1):
                    if self.rng.random() < 0.06:
                        at = self.start_ms + day * DAY_MS + int((9 + 8 * self.rng.random() - t.utc_offset) * HOUR_MS)
                        self._busy[(w.name, t.name, day)] = (at, at + int(self.rng.uniform(1, 2) * HOUR_MS))

    # -- the traffic -------------------------------------------------------------------------------

    def calls(self) -> list[Call]:
        """Every call of every session that starts in the range (and the nightly jobs), in time order."""
        found: list[Call] = []
        for session in self.sessions():
            found.extend(session)
        found.sort(key=lambda call: call["ts"])  # type: ignore[arg-type,return-value]
        return found

    def sessions(self) -> Iterator[list[Call]]:
        rng = self.rng
        for step in range(self.start_ms, self.end_ms, STEP_MS):
            day = (step - self.start_ms) // DAY_MS
            if (step - self.start_ms) % DAY_MS == 2 * HOUR_MS:
                yield self.nightly_job(step + int(rng.uniform(-3, 8) * 60_000))
            volume = self.scale * (1 + self.growth) ** ((step - self.start_ms) / DAY_MS) * STEP_MS / HOUR_MS
            for workload in self.workloads:
                ramp = self._ramp(step, workload.from_day)
                if ramp <= 0:
                    continue
                swing = self._day_swing[(workload.name, day)]
                for tenant in self.tenants:
                    joined = self._ramp(step, tenant.joins_day)
                    if joined <= 0:
                        continue
                    local = (step + tenant.utc_offset * HOUR_MS) / HOUR_MS
                    weekend = datetime.fromtimestamp(local * 3600, UTC).weekday() >= 5
                    rate = shape(workload.weekend if weekend else workload.weekday, local % 24)
                    busy = self._busy.get((workload.name, tenant.name, day))
                    if busy is not None and busy[0] <= step < busy[1]:
                        rate *= 2
                    mean = workload.peak_per_hour * tenant.weight * rate * swing * volume * ramp * joined
                    for _ in range(self._poisson(mean)):
                        at = step + int(rng.random() * STEP_MS)
                        yield workload.session(self, at, self.attribution(workload.name, tenant, at))

    def attribution(self, workload: str, tenant: Tenant, at: int) -> dict[str, object]:
        common: dict[str, object] = {"tenant_id": tenant.name, "user_id": self.user(tenant, at)}
        if workload != "unattributed":
            common["feature"] = workload
        return common

    def user(self, tenant: Tenant, at: int) -> str:
        """A user of the tenant, by Zipf weight among the pool it has at ``at`` (new users keep arriving)."""
        grown = (1 + self.growth) ** ((at - self.start_ms) / DAY_MS)
        pool = min(len(self._user_weights), int(tenant.users * grown))
        rank = bisect.bisect_left(self._user_weights, self.rng.random() * self._user_weights[pool - 1])
        return f"u-{tenant.name.removeprefix('tenant_')}-{rank:04d}"

    def _ramp(self, at: int, from_day: float) -> float:
        """0 before ``from_day``, then up to 1 over three days."""
        if from_day <= 0:
            return 1.0
        days = (at - self.start_ms) / DAY_MS - from_day
        return 0.0 if days < 0 else min(1.0, 0.15 + days / 3)

    # -- workloads ---------------------------------------------------------------------------------

    def support(self, at: int, common: Mapping[str, object]) -> list[Call]:
        """A support chat: 2-4 turns of a model call, 0-2 tools, an answer; the customer writes back."""
        rng = self.rng
        calls: list[Call] = []
        rollout = self.start_ms + int(self.days * 0.45 * DAY_MS)  # v8 rolls out over a day, same cost
        version = "v8" if at > rollout + rng.random() * DAY_MS else "v7"
        model = "claude-haiku-4-5" if rng.random() < 0.85 else "gpt-4.1-mini"
        session = {**common, "team": "support", "agent_id": "support_bot", "prompt_version": version,
                   "session_id": self.id()}  # fmt: skip
        history = rng.randint(1200, 3000)
        asked, repeated = "", False
        for _ in range(rng.randint(2, 4)):
            trace = {**session, "trace_id": self.id()}
            # now and then a customer sends the same question twice (a double click): not yet a loop
            if asked and not repeated and rng.random() < 0.03:
                repeated = True
            else:
                asked = f"ph{rng.getrandbits(64):016x}"
            at = self.llm(calls, at, trace, model, history, rng.randint(60, 200), prompt_hash=asked)
            for tool in rng.sample(SUPPORT_TOOLS, rng.choice((0, 1, 1, 2))):
                at = self.tool(calls, at, trace, tool)
            out = rng.randint(80, 320)
            at = self.llm(calls, at, trace, model, history + 400, out, stream=True)
            history += 400 + out
            at += int(rng.uniform(15, 240) * 1000)
        return calls

    def rag(self, at: int, common: Mapping[str, object]) -> list[Call]:
        """A question to the docs: an embedding, then one or two calls of 20k-60k prompt tokens, mostly cached."""
        rng = self.rng
        calls: list[Call] = []
        session = {**common, "team": "knowledge", "prompt_version": "v3", "session_id": self.id()}
        model = "claude-sonnet-4-5" if rng.random() < 0.7 else "gemini-2.5-pro"
        for _ in range(1 if rng.random() < 0.6 else 2):
            trace = {**session, "trace_id": self.id()}
            at = self.llm(calls, at, trace, "text-embedding-3-small", rng.randint(15, 60), 0)
            context = int(rng.uniform(20_000, 60_000))
            cached = int(context * rng.uniform(0.7, 0.95))
            at = self.llm(calls, at, trace, model, context, rng.randint(150, 450), cached=cached, stream=True)
            at += int(rng.uniform(10, 120) * 1000)
        return calls

    def coding(self, at: int, common: Mapping[str, object]) -> list[Call]:
        """A healthy coding agent: 8-14 tool calls over varied tools (reads in runs), a model call before each."""
        rng = self.rng
        calls: list[Call] = []
        trace = {**common, "team": "devex", "agent_id": "coder", "prompt_version": "v12", "session_id": self.id(),
                 "trace_id": self.id()}  # fmt: skip
        tools: list[str] = []
        wanted = rng.randint(8, 14)
        while len(tools) < wanted:
            tool = rng.choice([t for t in CODE_TOOLS if not tools or t != tools[-1]])
            tools += [tool] * (rng.randint(2, 5) if tool == "read_file" else 1)
        context = rng.randint(5000, 9000)
        for tool in tools[: wanted + 2]:
            out = rng.randint(100, 450)
            at = self.llm(calls, at, trace, "claude-sonnet-4-5", context, out, cached=int(context * 0.8))
            at = self.tool(calls, at, trace, tool, seconds=rng.uniform(5, 40) if tool == "run_tests" else None)
            context += out + rng.randint(300, 2500)  # the tool's result joins the context
        return calls

    def email_draft(self, at: int, common: Mapping[str, object]) -> list[Call]:
        rng = self.rng
        calls: list[Call] = []
        trace = {**common, "team": "sales-eng", "agent_id": "sales_copilot", "prompt_version": "v4",
                 "trace_id": self.id()}  # fmt: skip
        context = rng.randint(2500, 8000)
        at = self.llm(calls, at, trace, "text-embedding-3-small", rng.randint(20, 80), 0)
        at = self.tool(calls, at, trace, "crm_search")
        draft = rng.randint(200, 500)
        at = self.llm(calls, at, trace, "gpt-4o", context, draft, stream=True)
        self.llm(calls, at, trace, "gpt-4o-mini", draft + 400, draft)
        return calls

    def call_summary(self, at: int, common: Mapping[str, object]) -> list[Call]:
        calls: list[Call] = []
        trace = {**common, "team": "sales-eng", "agent_id": "sales_copilot", "prompt_version": "v2",
                 "trace_id": self.id()}  # fmt: skip
        self.llm(calls, at, trace, "gpt-4.1", self.rng.randint(6000, 20_000), self.rng.randint(200, 600))
        return calls

    def rerank(self, at: int, common: Mapping[str, object]) -> list[Call]:
        calls: list[Call] = []
        trace = {**common, "team": "search", "trace_id": self.id()}
        self.llm(calls, at, trace, "gemini-2.0-flash", self.rng.randint(800, 3000), self.rng.randint(10, 60))
        return calls

    def script(self, at: int, common: Mapping[str, object]) -> list[Call]:
        """An engineer's script or notebook: no feature tag."""
        calls: list[Call] = []
        trace = {**common, "team": "platform", "trace_id": self.id()}
        model = self.rng.choice(("gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"))
        for _ in range(self.rng.randint(1, 4)):
            at = self.llm(calls, at, trace, model, self.rng.randint(1000, 6000), self.rng.randint(100, 600))
        return calls

    def forecast(self, at: int, common: Mapping[str, object]) -> list[Call]:
        """The feature launched mid-run: a pipeline forecast on claude-sonnet-4-5 with a long context."""
        calls: list[Call] = []
        trace = {**common, "team": "sales-eng", "agent_id": "forecaster", "prompt_version": "v1",
                 "trace_id": self.id()}  # fmt: skip
        at = self.tool(calls, at, trace, "crm_export")
        self.llm(calls, at, trace, "claude-sonnet-4-5", self.rng.randint(15_000, 30_000), self.rng.randint(250, 500))
        return calls

    def nightly_job(self, at: int) -> list[Call]:
        """The enrichment batch job: every night from 02:00 UTC, 700-1,000 records (growing), two at a time."""
        rng = self.rng
        grown = (1 + self.growth) ** ((at - self.start_ms) / DAY_MS)
        calls: list[Call] = []
        job = {"feature": "nightly.enrichment", "team": "data", "agent_id": "enrichment_job",
               "user_id": "svc-enrichment", "prompt_version": "v5", "trace_id": self.id()}  # fmt: skip
        lanes = [at] * 2
        for _ in range(int(rng.randint(700, 1000) * grown * self.scale)):
            lane = min(range(2), key=lanes.__getitem__)
            lanes[lane] = self.llm(calls, lanes[lane], job, "gpt-4.1", rng.randint(1500, 4000), rng.randint(150, 400))
        return calls

    # -- calls -------------------------------------------------------------------------------------

    def llm(
        self,
        calls: list[Call],
        at: int,
        common: Mapping[str, object],
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cached: int = 0,
        stream: bool = False,
        prompt_hash: str = "",
        provider: str = "",
        latency: Callable[[float], float] | None = None,
    ) -> int:
        """Add a model call (a failed first attempt now and then, retried); return when it ended (epoch ms)."""
        rng = self.rng
        provider = provider or PROVIDER.get(model.split("-")[0], "openai")
        extra: Call = {"prompt_hash": prompt_hash} if prompt_hash else {}
        draw = rng.random()
        attempt = 1
        if draw < 0.009:  # rate limited or timed out, then retried
            status = "rate_limited" if draw < 0.006 else "timeout"
            failed = rng.uniform(80, 400) if status == "rate_limited" else 60_000.0
            calls.append(self.event(at, common, provider, model, status=status, error_type=status,
                                    latency_ms=round(failed, 1), **extra))  # fmt: skip
            at += int(failed + rng.uniform(500, 4000))
            attempt = 2
        fixed, per_token, per_kilo = SPEED.get(model, (0.5, 0.01, 0.02))
        if draw > 0.99:  # an error: nothing generated, nothing billed
            calls.append(self.event(at, common, provider, model, status="error", error_type="server_error",
                                    latency_ms=round(fixed * 1000 * rng.uniform(0.5, 3), 1), attempt=attempt,
                                    **extra))  # fmt: skip
            return at + 1000
        seconds = (fixed + per_token * output_tokens + per_kilo * (input_tokens - cached) / 1000) * rng.lognormvariate(
            0, 0.25
        )
        if latency is not None:
            seconds = latency(seconds)
        event = self.event(
            at, common, provider, model, input_tokens=input_tokens, output_tokens=output_tokens,
            cache_read_tokens=cached, latency_ms=round(seconds * 1000, 1), attempt=attempt, **extra,
        )  # fmt: skip
        if stream:
            event["ttft_ms"] = round(min(seconds, fixed * rng.lognormvariate(0, 0.3)) * 1000, 1)
        calls.append(event)
        return at + int(seconds * 1000)

    def tool(
        self, calls: list[Call], at: int, common: Mapping[str, object], name: str, *, seconds: float | None = None
    ) -> int:
        """Add a tool call (the caller states its cost: nothing, or a paid search); return when it ended."""
        seconds = seconds if seconds is not None else self.rng.lognormvariate(-1.6, 0.8)
        cost = 0.005 if name in ("web_search", "crm_export") else 0.0
        calls.append(self.event(at, common, "internal", name, kind="tool", tool_name=name, cost_usd=cost,
                                latency_ms=round(seconds * 1000, 1)))  # fmt: skip
        return at + int(seconds * 1000)

    def event(self, at: int, common: Mapping[str, object], provider: str, model: str, **usage: object) -> Call:
        return {"event_id": self.id(), "ts": at, "provider": provider, "model": model, **common, **usage}

    def id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def partition_of(self, call: Call, partitions: int) -> int:
        """The partition the SDK's emitter would send a call to: by session, else trace, else event id."""
        key = call.get("session_id") or call.get("trace_id") or call["event_id"]
        return zlib.crc32(str(key).encode()) % partitions

    def _poisson(self, mean: float) -> int:
        if mean > 30:
            return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1
