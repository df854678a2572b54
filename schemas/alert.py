"""The alert (topic ``spendstream.alerts``, table ``alerts``): what a detector found, and how to dig in."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

AlertKind = Literal[
    "spend_spike", "hourly_burn", "latency_p95", "loop_detected", "session_budget", "budget_threshold", "error_rate",
    "unpriced_model", "unattributed_spend", "prompt_version_regression", "tenant_concentration", "budget_forecast",
]  # fmt: skip
Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["firing", "resolved"]
DAY_WINDOW = "1d"
"""The window of the alerter's scheduled daily checks: a stream detector's window is never this."""
_ALERT_NAMESPACE = uuid.UUID("6f1d3c52-8f0e-4d61-9a57-2f1b1a7e9c10")


def alert_id_for(dedup_key: str) -> str:
    """The same condition always gets the same alert id, so raising it twice (a restart) stores it once."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, dedup_key))


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: str
    ts: AwareDatetime
    """When the condition was seen (event time)."""
    kind: AlertKind
    severity: Severity
    dimension: str
    """What was measured: ``model``, ``feature``, ``session_id``, ..."""
    key: str
    """Which one: the model name, the feature, the session."""
    value: float
    baseline: float | None = None
    threshold: float | None = None
    window: str
    """The window the value covers: ``1d``, ``5m``, ``session``."""
    message: str
    query: str
    """A SQL query that shows what caused the alert."""
    dedup_key: str
    """Alerts with the same key are one incident (grouped, held back by a cooldown)."""
    data_mode: Annotated[str, Field(pattern=r"^(real|test|demo)$")] = "real"
    status: AlertStatus = "firing"
    """``resolved``: the condition of the incident ``dedup_key`` has cleared."""
