"""Findings and incidents: a detector says whether a condition holds; incidents turn that into alerts.

A condition that starts holding opens an incident and raises a ``firing`` alert. While it holds,
an alert is raised again only when its severity rises, or when ``repeat`` seconds of event time
have passed and the value has grown by a quarter; when it clears, a ``resolved`` alert closes the
incident. An open incident stays open while the condition holds at a relaxed level (``sustained``,
80% of the thresholds), so a value hovering at its threshold does not flap. Alert ids follow from
the incident (the minute it opened) and its sequence number, so a replay of the same calls raises
the same alerts, and the ``alerts`` table stores them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from schemas.alert import Alert, AlertKind, Severity, alert_id_for

_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """What a detector measured for one key, and whether the condition holds (``severity`` not None)."""

    kind: AlertKind
    data_mode: str
    dimension: str
    key: str
    severity: Severity | None
    value: float
    baseline: float | None
    threshold: float | None
    window: str
    message: str
    query: str
    at: float
    """Event time (epoch seconds) of the measurement."""
    sustained: bool = False
    """The condition holds at the relaxed level that keeps an open incident open."""
    detail: str = ""
    """Distinguishes conditions of one key (``ttft`` against ``latency``)."""

    @property
    def watched(self) -> bool:
        """Whether the detector must evaluate this key again even if no call touches it."""
        return self.severity is not None or self.sustained

    @property
    def dedup_key(self) -> str:
        suffix = f":{self.detail}" if self.detail else ""
        return f"{self.kind}:{self.data_mode}:{self.dimension}:{self.key}{suffix}"


RELAXED = 0.8
"""An open incident stays open while its value passes this share of the thresholds."""
GROWN = 1.25
"""A reminder of a firing incident is raised only when its value grew by a quarter since the last alert."""


@dataclass(slots=True)
class _Incident:
    opened: float
    severity: Severity
    raised: float
    value: float
    sequence: int


def severity_of(firing: bool, critical: bool) -> Severity | None:
    """None when the condition does not hold; else critical or warning."""
    if not firing:
        return None
    return "critical" if critical else "warning"


def until(at: float) -> str:
    """A SQL expression of the time ``at`` (epoch seconds), for drill-down queries that end there."""
    return f"toDateTime({int(at) + 1}, 'UTC')"


class Incidents:
    """The open incidents, by dedup key."""

    def __init__(self, repeat_seconds: float) -> None:
        self._repeat = repeat_seconds
        self._open: dict[str, _Incident] = {}

    def __len__(self) -> int:
        return len(self._open)

    def restore(self, dedup_key: str, severity: str, at: float, value: float) -> None:
        """Keep an incident open that the ``alerts`` table has as firing (a restarted worker)."""
        if severity in _RANK and dedup_key not in self._open:
            self._open[dedup_key] = _Incident(at, cast(Severity, severity), at, value, 1000)

    def update(self, finding: Finding) -> Alert | None:
        """The alert ``finding`` raises, if any."""
        key = finding.dedup_key
        incident = self._open.get(key)
        if finding.severity is None:
            if incident is None or finding.sustained:
                return None
            del self._open[key]
            incident.sequence += 1
            return _alert(finding, incident, "resolved")
        if incident is None:
            incident = self._open[key] = _Incident(finding.at, finding.severity, finding.at, finding.value, 0)
            return _alert(finding, incident, "firing")
        escalated = _RANK[finding.severity] > _RANK[incident.severity]
        reminder = finding.at - incident.raised >= self._repeat and finding.value > GROWN * incident.value
        if not escalated and not reminder:
            return None
        incident.severity = finding.severity
        incident.raised = finding.at
        incident.value = finding.value
        incident.sequence += 1
        return _alert(finding, incident, "firing")


def _alert(finding: Finding, incident: _Incident, status: str) -> Alert:
    dedup_key = finding.dedup_key
    resolved = status == "resolved"
    return Alert(
        alert_id=alert_id_for(f"{dedup_key}@{int(incident.opened // 60)}#{incident.sequence}"),
        ts=datetime.fromtimestamp(finding.at, UTC),
        kind=finding.kind,
        severity=incident.severity if resolved else (finding.severity or incident.severity),
        dimension=finding.dimension,
        key=finding.key,
        value=finding.value,
        baseline=finding.baseline,
        threshold=finding.threshold,
        window=finding.window,
        message=("Resolved: " if resolved else "") + finding.message,
        query=finding.query,
        dedup_key=dedup_key,
        data_mode=finding.data_mode,
        status="resolved" if resolved else "firing",
    )
