"""Budgets end to end: ``spendstream up`` counts spend per budget key, the SDK's guard stops the next call.

Real tansu broker, real chDB; calls are tracked with the SDK and priced by overrides, so every
amount is exact.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import orjson
import pytest
import yaml

from producers import BudgetExceededError, BudgetGuard, Emitter, Tracker
from producers._guard import FailMode
from schemas.budget import BudgetState
from schemas.config import SpendstreamConfig
from tests.conftest import UpProcess

pytestmark = pytest.mark.integration

PRICES = """
prices:
  overrides:
    - {provider: house, model: large, input_per_mtok: 10, output_per_mtok: 0}
    - {provider: house, model: small, input_per_mtok: 1, output_per_mtok: 0}
"""
BUDGETS = """
budgets:
  - {dimension: tenant_id, key: tenant_acme, daily_usd: %s, action: deny}
  - {dimension: agent_id, key: "*", daily_usd: 0.02, action: downgrade, downgrade_to: small}
"""
CENT = 1000  # input tokens of house/large that cost exactly $0.01


def config(tmp_path: Path, tenant_daily_usd: float) -> Path:
    path = tmp_path / f"spendstream-{tenant_daily_usd}.yaml"
    path.write_text(PRICES + BUDGETS % tenant_daily_usd)
    return path


def guarded_sdk(
    broker: str, prefix: str, feature: str, fail: FailMode = "open"
) -> tuple[Emitter, BudgetGuard, Tracker]:
    """The SDK as an application sets it up: an emitter, a guard that has read the budgets, a tracker."""
    emitter = Emitter(broker, topic=prefix + "llm.calls")
    overrides = SpendstreamConfig.model_validate(yaml.safe_load(PRICES)).prices.overrides
    guard = BudgetGuard(broker, topic=prefix + "spendstream.budgets", fail=fail, price_overrides=overrides)
    assert guard.wait_ready(30)
    return emitter, guard, Tracker(emitter, guard=guard, feature=feature)


def cent_call(tracker: Tracker, **keys: str) -> str | None:
    """One $0.01 call on house/large; returns the model the guard let it use."""
    with tracker.attribute(**keys), tracker.track(provider="house", model="large") as call:
        call.usage(input_tokens=CENT)
        return call.model


def wait_state(
    guard: BudgetGuard, scope: str, state: str, spent: float | None = None, timeout: float = 30
) -> BudgetState:
    """The guard's state of ``scope`` once it is ``state`` (having spent ``spent``, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = guard.state(scope)
        if found is not None and found.state == state and (spent is None or abs(found.spent_usd - spent) < 1e-9):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{scope} did not become {state} (spent {spent}) within {timeout}s: {guard.state(scope)}")


def cli(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args], env=up.env, capture_output=True, text=True, timeout=60
    )


def test_a_tenant_past_its_budget_is_alerted_then_denied_and_allowed_again_when_the_budget_is_raised(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    up = start_up(SPENDSTREAM_CONFIG=str(config(tmp_path, 0.05)), SPENDSTREAM_TOPIC_PREFIX=prefix)
    emitter, guard, tracker = guarded_sdk(broker, prefix, "sales.email_draft", fail="closed")

    for _ in range(4):
        cent_call(tracker, tenant_id="tenant_acme")
    emitter.flush()
    wait_state(guard, "tenant_id=tenant_acme", "allow", spent=0.04)
    # $0.01 left: a call estimated at $0.02 is refused before it is made, a $0.01 one goes
    estimate = guard.estimate_usd("house", "large", input_tokens=2 * CENT, max_output_tokens=500)
    assert estimate == pytest.approx(0.02)
    with (
        pytest.raises(BudgetExceededError) as too_big,
        tracker.track(provider="house", model="large", tenant_id="tenant_acme", estimated_usd=estimate),
    ):
        pass
    assert "this call's estimate ($0.0200) would pass the limit" in str(too_big.value)
    cent_call(tracker, tenant_id="tenant_acme")  # $0.05: the whole daily budget
    emitter.flush()
    denied = wait_state(guard, "tenant_id=tenant_acme", "deny")

    with pytest.raises(BudgetExceededError) as refused:
        cent_call(tracker, tenant_id="tenant_acme")
    assert "tenant_id tenant_acme: $0.05 of the daily budget of $0.05" in str(refused.value)
    assert refused.value.decision.remaining_usd == 0 and denied.spent_usd == pytest.approx(0.05)
    cent_call(tracker, tenant_id="tenant_globex")  # another tenant is not held back
    thresholds = up.wait_for(
        "SELECT groupArray(toUInt32(threshold / baseline * 100)) FROM "
        "(SELECT * FROM alerts FINAL WHERE kind = 'budget_threshold' AND key = 'tenant_acme' ORDER BY threshold)",
        [70, 100],
    )
    assert thresholds == [70, 100]  # one alert per threshold crossed, 120% not reached

    # a call stored twice (a producer retry) and a late call of yesterday do not count today
    again = {"event_id": "acme-retry", "ts": datetime.now(UTC).isoformat(), "provider": "house", "model": "large",
             "input_tokens": CENT, "tenant_id": "tenant_acme"}  # fmt: skip
    late = {**again, "event_id": "acme-late", "ts": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
    for event in (again, again, late):
        emitter.emit_raw(orjson.dumps(event))
    emitter.flush()
    assert up.wait_for("SELECT count() FROM llm_calls WHERE tenant_id = 'tenant_acme'", 7) == 7
    wait_state(guard, "tenant_id=tenant_acme", "deny", spent=0.06)
    time.sleep(2)
    assert guard.state("tenant_id=tenant_acme").spent_usd == pytest.approx(0.06)  # type: ignore[union-attr]

    # restarted with the same budget: the total comes back from ClickHouse, still denied
    up.stop()
    restarted = start_up(home=up.home, SPENDSTREAM_CONFIG=str(config(tmp_path, 0.05)), SPENDSTREAM_TOPIC_PREFIX=prefix)
    # an application without the guard spends one more cent: counted on top of the warmed-up total
    emitter.emit_raw(orjson.dumps({**again, "event_id": "acme-unguarded"}))
    emitter.flush()
    wait_state(guard, "tenant_id=tenant_acme", "deny", spent=0.07)
    restarted.stop()

    # the budget raised to $1: allowed again, with what is left
    start_up(home=up.home, SPENDSTREAM_CONFIG=str(config(tmp_path, 1.0)), SPENDSTREAM_TOPIC_PREFIX=prefix)
    allowed = wait_state(guard, "tenant_id=tenant_acme", "allow", spent=0.07, timeout=60)
    assert allowed.remaining_usd == pytest.approx(0.93)
    assert cent_call(tracker, tenant_id="tenant_acme") == "large"
    emitter.close()
    guard.close()


def test_downgrade_names_the_cheaper_model_and_the_kill_switch_stops_the_agents_it_names(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    up = start_up(SPENDSTREAM_CONFIG=str(config(tmp_path, 10)), SPENDSTREAM_TOPIC_PREFIX=prefix)
    emitter, guard, tracker = guarded_sdk(broker, prefix, "eng.code_review")

    assert [cent_call(tracker, agent_id="coder") for _ in range(2)] == ["large", "large"]  # $0.02 of $0.02
    emitter.flush()
    wait_state(guard, "agent_id=coder", "downgrade")
    assert cent_call(tracker, agent_id="coder") == "small"
    assert cent_call(tracker, agent_id="reviewer") == "large"  # each agent has its own $0.02

    killed = cli(up, "kill", "--agent", "reviewer", "--reason", "stuck in a loop")
    assert killed.returncode == 0, killed.stderr
    wait_state(guard, "kill:agent_id=reviewer", "deny", timeout=10)  # seconds, not a restart
    with pytest.raises(BudgetExceededError) as refused:
        cent_call(tracker, agent_id="reviewer")
    assert "kill switch on calls of agent_id reviewer: stuck in a loop" in str(refused.value)
    assert cent_call(tracker, agent_id="planner") == "large"

    assert cli(up, "kill", "--all", "--reason", "incident 42").returncode == 0
    wait_state(guard, "kill:*", "deny", timeout=10)
    with pytest.raises(BudgetExceededError):
        cent_call(tracker, agent_id="planner")

    assert cli(up, "unkill", "--all").returncode == 0
    assert cli(up, "unkill", "--agent", "reviewer").returncode == 0
    deadline = time.monotonic() + 10
    while guard.state("kill:*") is not None or guard.state("kill:agent_id=reviewer") is not None:
        assert time.monotonic() < deadline, "the kill switches were not lifted"
        time.sleep(0.1)
    assert cent_call(tracker, agent_id="reviewer") == "large"
    listed = cli(up, "budgets")
    assert listed.returncode == 0 and "agent_id=coder" in listed.stdout and "downgrade" in listed.stdout
    assert "month-end forecast of every real call: $" in listed.stdout  # read from ClickHouse through `up`
    assert cli(up, "kill", "--agent", "a", "--feature", "b", "--reason", "x").returncode == 2
    emitter.close()
    guard.close()


def test_a_guard_without_brokers_fails_in_the_direction_it_was_told() -> None:
    closed = BudgetGuard("127.0.0.1:1", fail="closed")
    opened = BudgetGuard("127.0.0.1:1", fail="open")
    try:
        assert closed.check(tenant_id="tenant_acme").action == "deny"
        assert opened.check(tenant_id="tenant_acme").action == "allow"
        assert "fail open" in opened.check().reason
        assert (closed.stats().failed_closed, opened.stats().failed_open) == (1, 2)
    finally:
        closed.close()
        opened.close()


def test_two_workers_never_each_think_there_is_room_left(
    start_up: Callable[..., UpProcess], broker: str, tmp_path: Path
) -> None:
    """Calls of one tenant stored by two workers: the budget's owner counts them all, each once."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    budget = tmp_path / "spendstream.yaml"
    budget.write_text(
        PRICES + "budgets:\n  - {dimension: tenant_id, key: tenant_acme, daily_usd: 0.15, action: deny}\n"
    )
    workers = [
        start_up(home=tmp_path / name, SPENDSTREAM_CONFIG=str(budget), SPENDSTREAM_TOPIC_PREFIX=prefix)
        for name in ("worker-a", "worker-b")
    ]
    guard = BudgetGuard(broker, topic=prefix + "spendstream.budgets")
    assert guard.wait_ready(30)
    time.sleep(15)  # both workers joined the group and took their partitions
    emitter = Emitter(broker, topic=prefix + "llm.calls")
    for n in range(20):  # $0.20 in all; each worker alone stores about half, under the $0.15
        event = {"event_id": f"two-{n}", "ts": datetime.now(UTC).isoformat(), "provider": "house", "model": "large",
                 "input_tokens": CENT, "tenant_id": "tenant_acme", "session_id": f"s-{n}"}  # fmt: skip
        emitter.emit_raw(orjson.dumps(event), f"s-{n}")
    emitter.close()

    denied = wait_state(guard, "tenant_id=tenant_acme", "deny", spent=0.20, timeout=60)

    stored = [cast(int, w.scalar("SELECT count() FROM llm_calls")) for w in workers]  # spends follow storage
    assert sum(stored) == 20 and min(stored) > 0  # the calls were split between the workers
    assert denied.reason.startswith("tenant_id tenant_acme: $0.20 of the daily budget of $0.15")
    guard.close()


def test_unkill_of_a_kill_switch_that_is_not_set_says_so_and_lists_the_active_ones(
    start_up: Callable[..., UpProcess],
) -> None:
    up = start_up()
    none_yet = cli(up, "unkill", "--agent", "nosuch")
    assert none_yet.returncode == 1 and "lifted" not in none_yet.stdout, none_yet
    assert "no kill switch on agent_id nosuch" in none_yet.stderr and "no kill switch is active" in none_yet.stderr
    assert cli(up, "kill", "--agent", "reviewer", "--reason", "stuck in a loop").returncode == 0

    typo = cli(up, "unkill", "--agent", "reviewr")
    assert typo.returncode == 1 and "lifted" not in typo.stdout, typo
    assert "no kill switch on agent_id reviewr" in typo.stderr
    assert "kill:agent_id=reviewer" in typo.stderr and "stuck in a loop" in typo.stderr
    everything = cli(up, "unkill", "--all")
    assert everything.returncode == 1 and "no kill switch on every call" in everything.stderr, everything

    lifted = cli(up, "unkill", "--agent", "reviewer")
    assert lifted.returncode == 0 and lifted.stdout == "lifted: kill:agent_id=reviewer\n", lifted
    again = cli(up, "unkill", "--agent", "reviewer")
    assert again.returncode == 1 and "no kill switch is active" in again.stderr, again
