"""The outcome event (``llm.outcomes``): what a trace or session achieved, for cost per outcome."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.call_event import DataMode, Id

Outcome = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.:-]{1,64}$")]


class OutcomeEvent(BaseModel):
    """A business outcome (a booked meeting, a closed ticket) joined to the calls that produced it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    ts: AwareDatetime
    outcome: Outcome
    """What happened, as a lowercase label: ``meeting_booked``, ``ticket_closed``."""
    value: Annotated[float, Field(ge=-1e12, le=1e12)] = 1.0
    """How much it was worth (a count, or a revenue amount)."""
    trace_id: Id | None = None
    session_id: Id | None = None
    feature: Id | None = None
    tenant_id: Id | None = None
    data_mode: DataMode = "real"
    """``real`` outcomes count in finance queries; ``test`` and ``demo`` ones are kept apart."""

    @model_validator(mode="after")
    def _joinable(self) -> OutcomeEvent:
        if self.trace_id is None and self.session_id is None:
            raise ValueError("an outcome needs trace_id or session_id to join it to its calls")
        return self
