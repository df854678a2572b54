"""The guard without brokers: what it read holds, ``fail`` decides only what it knows nothing about."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from producers import BudgetExceededError, BudgetGuard, CostConfirmationRequired, Governor, Tracker
from producers._guard import FailMode
from schemas.budget import budget_scope, kill_scope
from spendstream.kill_switch import kill_state
from tests.unit.test_track import Collected


@pytest.fixture(scope="module")
def unreachable() -> Iterator[Callable[[FailMode], BudgetGuard]]:
    """Guards whose brokers never answer (one per fail mode, emptied for each test); the states they
    'read' are given to them as their reader thread would."""
    guards: dict[str, BudgetGuard] = {}

    def make(fail: FailMode) -> BudgetGuard:
        guard = guards.get(fail)
        if guard is None:
            guard = guards[fail] = BudgetGuard("127.0.0.1:1", fail=fail)
        for scope in [state.scope for state in guard.states()]:
            guard._apply(scope.encode(), None)
        guard._counts = dict.fromkeys(guard._counts, 0)
        return guard

    yield make
    for guard in guards.values():
        guard.close()


def read(guard: BudgetGuard, dimension: str | None, key: str | None) -> None:
    """The guard reads a kill switch from the topic (its reader thread's own step)."""
    state = kill_state(dimension, key, "incident 7")
    guard._apply(state.scope.encode(), state.model_dump_json().encode())


def test_a_kill_read_before_holds_whatever_fail_says(unreachable: Callable[[FailMode], BudgetGuard]) -> None:
    for fail in ("open", "closed"):
        guard = unreachable(fail)  # type: ignore[arg-type]
        read(guard, "agent_id", "coder")
        killed = guard.check(agent_id="coder", tenant_id="acme")
        assert killed.action == "deny" and killed.scope == "kill:agent_id=coder"
        assert killed.reason.startswith("kill switch on calls of agent_id coder: incident 7 (read before")
        unknown = guard.check(agent_id="reviewer", tenant_id="acme")
        assert unknown.action == ("allow" if fail == "open" else "deny") and f"fail {fail}" in unknown.reason
        stats = guard.stats()
        assert (stats.held, stats.failed_open + stats.failed_closed, stats.ready) == (1, 1, False)

        guard._apply(kill_scope("agent_id", "coder").encode(), None)  # lifted: a tombstone read
        assert guard.check(agent_id="coder").action == ("allow" if fail == "open" else "deny")


def test_a_downgrade_read_before_still_applies_when_failing_open(
    unreachable: Callable[[FailMode], BudgetGuard],
) -> None:
    guard = unreachable("open")
    state = kill_state("agent_id", "x", "x").model_copy(
        update={"scope": budget_scope("agent_id", "coder"), "state": "downgrade", "action": "downgrade",
                "downgrade_to": "gpt-4o-mini", "reason": "agent_id coder: $2 of $2", "period": "daily"}
    )  # fmt: skip
    guard._apply(state.scope.encode(), state.model_dump_json().encode())
    assert guard.check(model="gpt-4o", agent_id="coder").model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("dimension", "fields"),
    [
        (None, {}),
        ("agent_id", {"agent_id": "coder"}),
        ("feature", {"feature": "sales.email_draft"}),
        ("tool_name", {"tool_name": "send_email"}),
        ("prompt_version", {"prompt_version": "v7"}),
        ("tenant_id", {"tenant_id": "tenant_acme"}),
        ("session_id", {"session_id": "s-runaway"}),
    ],
)
def test_a_kill_names_everything_or_an_agent_feature_tool_prompt_version_tenant_or_session(
    unreachable: Callable[[FailMode], BudgetGuard], dimension: str | None, fields: dict[str, str]
) -> None:
    guard = unreachable("open")
    sent = Collected()
    tracker = Tracker(sent, guard=guard, feature="support.chat")
    read(guard, dimension, fields.get(dimension or ""))
    with (
        pytest.raises(BudgetExceededError, match="kill switch on"),
        tracker.track(provider="openai", model="gpt-4o", **fields),
    ):
        pytest.fail("the call was made")
    if dimension is not None:
        with tracker.track(provider="openai", model="gpt-4o", **{k: f"other-{v}" for k, v in fields.items()}):
            pass
    assert len(sent.events) == (0 if dimension is None else 1)  # a denied call is not sent


def test_a_ceiling_per_action_refuses_whatever_the_budgets_say(
    unreachable: Callable[[FailMode], BudgetGuard],
) -> None:
    guard = unreachable("open")
    roomy = kill_state("tenant_id", "acme", "x").model_copy(
        update={"scope": budget_scope("tenant_id", "acme"), "state": "allow", "action": "deny", "period": "daily",
                "reason": "tenant_id acme: $1 of $500", "limit_usd": 500.0, "remaining_usd": 499.0}
    )  # fmt: skip
    guard._apply(roomy.scope.encode(), roomy.model_dump_json().encode())
    assert guard.check(tenant_id="acme", estimated_usd=3.0).action == "allow"  # the budget has room
    tracker = Tracker(Collected(), guard=guard, governors=[Governor(per="action", max_cost_usd=1.0)])
    with (
        pytest.raises(CostConfirmationRequired),
        tracker.track(provider="openai", model="o3", tenant_id="acme", estimated_usd=3.0),
    ):
        pytest.fail("the call was made")
    with tracker.track(provider="openai", model="o3", tenant_id="acme", estimated_usd=3.0, confirm_usd=3.0) as call:
        pass
    assert call.decision is not None and call.decision.action == "allow"
