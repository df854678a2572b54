"""The SDK's guardrails through ``spendstream up``: a session stopped at its token cap before the call
that would pass it (the refusal stored as a cancelled call), and a kill that outlives the broker.

``up`` runs its own embedded broker here, so stopping ``up`` is a broker outage for the SDK.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from producers import BudgetExceededError, BudgetGuard, Emitter, Governor, SessionLimitExceeded, Tracker
from tests.conftest import EmbeddedUpProcess
from tests.unit.test_track import Collected

pytestmark = pytest.mark.integration


def cli(up: EmbeddedUpProcess, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


def test_a_session_stops_at_its_token_cap_and_a_kill_outlives_the_broker(
    start_embedded_up: Callable[..., EmbeddedUpProcess],
) -> None:
    up = start_embedded_up()
    emitter = Emitter(up.bootstrap)
    guard = BudgetGuard(up.bootstrap, fail="open")
    assert guard.wait_ready(30)
    tracker = Tracker(
        emitter, guard=guard, governors=[Governor(feature="support.chat", max_tokens=2_500)], feature="support.chat"
    )
    session = f"s-{uuid.uuid4().hex[:8]}"

    with tracker.attribute(session_id=session):
        for _ in range(2):
            with tracker.track(provider="openai", model="gpt-4o-mini") as call:
                call.usage(input_tokens=900, output_tokens=100)
        with (
            pytest.raises(SessionLimitExceeded, match="has used 2,000 tokens, and this call's 1,000 tokens would pass"),
            tracker.track(provider="openai", model="gpt-4o-mini", estimated_tokens=1000),
        ):
            pytest.fail("the call that would pass the cap was made")
    assert emitter.flush(10) == 0
    stored = up.wait_for(
        "SELECT groupArray((status, error_type, input_tokens + output_tokens)) FROM "
        # the refusal and the call before it may share a millisecond: the refusal last
        f"(SELECT * FROM llm_calls FINAL WHERE session_id = '{session}' ORDER BY status = 'cancelled', ts)",
        [("success", "", 1000), ("success", "", 1000), ("cancelled", "SessionLimitExceeded: tokens per session", 0)],
    )
    assert stored == [
        ("success", "", 1000),
        ("success", "", 1000),
        ("cancelled", "SessionLimitExceeded: tokens per session", 0),
    ]
    emitter.close()

    cli(up, "kill", "--session", "s-runaway", "--reason", "loops on order_status")
    cli(up, "kill", "--tool", "send_email", "--reason", "mail provider incident")
    wait_until(lambda: guard.state("kill:tool_name=send_email") is not None, "the guard read the kills")

    up.stop()  # the broker goes with it
    wait_until(lambda: not guard.stats().ready, "the guard noticed the broker is gone")
    after = Tracker(Collected(), guard=guard, feature="support.chat")
    with (
        pytest.raises(BudgetExceededError) as held,
        after.track(provider="openai", model="gpt-4o", session_id="s-runaway"),
    ):
        pytest.fail("a killed session's call was made")
    assert "kill switch on calls of session_id s-runaway: loops on order_status (read before it lost" in str(held.value)
    with (
        pytest.raises(BudgetExceededError, match="send_email: mail provider incident"),
        after.track(provider="internal", kind="tool", tool_name="send_email", session_id="s-ok"),
    ):
        pytest.fail("a killed tool's call was made")
    with after.track(provider="openai", model="gpt-4o", session_id="s-ok") as allowed:
        pass  # nothing read limits it: fail open
    assert allowed.decision is not None and "allowed (fail open)" in allowed.decision.reason
    stats = guard.stats()
    assert (stats.held, stats.failed_open) == (2, 1)
    guard.close()
