"""Seeded traffic for detector ownership tests: three quiet days, then a spend spike, a looping session, an
error storm and a latency collapse in the last half hour. A few thousand events, each incident blatant in
one minute, so its severity does not depend on how calls were batched."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

FEATURES = ("sales.email_draft", "support.triage", "docs.answer", "eng.code_review")
MODELS = ("gpt-4o", "gpt-4o-mini")
SPIKE_FEATURE = "sales.email_draft"
LOOP_SESSION = "loop-session-1"
STORM_MODEL = "claude-sonnet-4"
SLOW_MODEL = "gemini-2.0-flash"
CONFIG = """
detectors:
  spend_spike: {min_excess_usd: 2}
  hourly_burn: {min_excess_usd: 1}
"""


def events(seed: int = 11, now: datetime | None = None) -> list[dict[str, Any]]:
    """The calls, in time order of ``ts`` (epoch ms)."""
    rng = random.Random(seed)
    end = (now or datetime.now(UTC)).replace(second=0, microsecond=0) - timedelta(minutes=2)
    start = end - timedelta(days=3)
    calls: list[dict[str, Any]] = []
    n = 0

    def call(at: datetime, **fields: Any) -> None:
        nonlocal n
        n += 1
        calls.append({
            "event_id": f"own-{seed}-{n}", "ts": int(at.timestamp() * 1000), "provider": "openai",
            "model": rng.choice(MODELS), "feature": rng.choice(FEATURES), "input_tokens": 1000,
            "output_tokens": 200, "cost_usd": round(rng.uniform(0.01, 0.03), 4), "latency_ms": rng.uniform(400, 2500),
            "tenant_id": f"tenant_{rng.randrange(6)}", "user_id": f"u_{rng.randrange(40):02d}",
            "session_id": f"s-{rng.randrange(10**9)}", "status": "success", **fields,
        })  # fmt: skip

    at = start
    while at < end - timedelta(minutes=30):  # quiet days: a few calls every 10 minutes
        for _ in range(rng.randint(3, 5)):
            call(at + timedelta(seconds=rng.randrange(600)))
        at += timedelta(minutes=10)
    incident = end - timedelta(minutes=20)
    spiker = {"feature": SPIKE_FEATURE, "model": "gpt-4o", "tenant_id": "tenant_0", "user_id": "u_00"}
    for k in range(240):  # a spike: $120 within a minute (the feature spends ~$3 a day)
        call(incident + timedelta(seconds=k / 4), cost_usd=0.5, **spiker)
    for k in range(40):  # one agent calling one tool with one prompt 40 times within a minute
        call(incident + timedelta(minutes=2, seconds=k), kind="tool", provider="internal", model="search",
             tool_name="search", prompt_hash="a1b2c3d4e5f6", session_id=LOOP_SESSION, feature="support.triage",
             cost_usd=0.0)  # fmt: skip
    for k in range(80):  # a storm: four in five calls to one model fail within a minute
        call(incident + timedelta(minutes=4, seconds=k / 2), provider="anthropic", model=STORM_MODEL,
             feature="eng.code_review", status="error" if k % 5 else "success", error_type="overloaded",
             cost_usd=0.001)  # fmt: skip
    for k in range(40):  # a latency collapse: one model's calls take 45 s
        call(incident + timedelta(minutes=6, seconds=k), provider="google", model=SLOW_MODEL, feature="docs.answer",
             latency_ms=45_000.0, cost_usd=0.001)  # fmt: skip
    calls.sort(key=lambda c: c["ts"])
    return calls


def encoded(calls: list[dict[str, Any]]) -> list[tuple[bytes, str]]:
    """(value, key) of each call as the SDK sends it: keyed by session."""
    return [(orjson.dumps(c), c["session_id"]) for c in calls]
