"""Budget state (topic ``spendstream.budgets``, compacted) and the kill switch: what the SDK's guard reads.

Each message is keyed by its scope: ``tenant_id=tenant_acme`` for a budget's key, ``kill:*`` for
the global kill switch, ``kill:agent_id=coder`` or ``kill:feature=sales.email_draft`` for one agent
or feature. A kill switch is lifted with a tombstone (no value), so compaction forgets it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.config import BudgetAction

GuardState = Literal["allow", "throttle", "downgrade", "deny"]
Period = Literal["daily", "monthly", "rolling_24h", "rolling_30d", "kill"]
KILL_PREFIX = "kill:"
KILL_DIMENSIONS = ("agent_id", "feature", "tool_name", "prompt_version", "tenant_id", "session_id")
"""What a kill switch can name besides everything (``kill:*``), as the SDK's guard checks it."""
WORKFLOW_TAG = "workflow"
"""The tag naming a call's workflow (the feature of its trace's root call): the SDK sets it on the calls under
a root; a root call without it is its own feature's."""
SEVERITY_ORDER: dict[str, int] = {"allow": 0, "throttle": 1, "downgrade": 2, "deny": 3}


def budget_scope(dimension: str, key: str) -> str:
    return f"{dimension}={key}"


def kill_scope(dimension: str | None = None, key: str | None = None) -> str:
    """``kill:*`` (everything), or ``kill:agent_id=X`` / ``kill:feature=Y``."""
    if dimension is None:
        return KILL_PREFIX + "*"
    return KILL_PREFIX + budget_scope(dimension, key or "")


class NextStep(BaseModel):
    """What the guard does once ``usd`` more is spent: the next threshold with an action reached."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    at_pct: int
    state: GuardState
    usd: float
    """What can still be spent before it."""
    throttle_seconds: float | None = None
    downgrade_to: str | None = None


class BudgetState(BaseModel):
    """What the guard does for calls in one scope, and why.

    Workers publish it without its ``None`` fields, so a guard from before a field existed still reads
    the states that do not need it; a guard ignores the fields it does not know.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    scope: str
    dimension: str
    key: str
    state: GuardState
    """What the guard does now."""
    action: BudgetAction
    """What the guard does past the limit (and for a call whose estimate would pass it), for a budget
    without thresholds; with thresholds, see ``next_state``."""
    reason: str
    period: Period
    """The period whose limit decides the state (``kill`` for the kill switch)."""
    spent_usd: float = 0.0
    limit_usd: float | None = None
    remaining_usd: float | None = None
    """What is left of the tightest limit (0 when over it); None for the kill switch."""
    period_end: AwareDatetime | None = None
    """When the period ends and the state no longer applies (None: until lifted, or a rolling period's
    next state is published)."""
    downgrade_to: str | None = None
    """The model to use past the limit (``action`` downgrade)."""
    throttle_seconds: float | None = None
    """The delay of each call past the limit (``action`` throttle). With thresholds: of the throttle in
    force, if any (a downgraded call may be throttled too)."""
    threshold_pct: int | None = None
    """With thresholds: the highest threshold reached, in percent of the limit (None: none yet)."""
    next: NextStep | None = None
    """With thresholds: the next threshold with an action, which a call whose estimate passes its
    ``usd`` is treated as having reached. None without thresholds (``action`` past ``remaining_usd``)
    or when no action is ahead."""
    updated_at: AwareDatetime
