"""The incidents the demo stages, for the detectors to catch, and what must stay quiet around them.

All four happen on the most recent weekday afternoon (UTC) that ended at least three hours ago, so
they are part of the history a demo sends and the alerts they raise arrive as soon as it is sent:

- a runaway loop: one support session calls ``order_status`` over and over with the same prompt;
- a prompt version that doubles tokens: ``sales.proposal_summary`` rolls out ``v2`` to half of its
  traffic six hours before the loop, and keeps it;
- a provider latency collapse: ``gemini-2.0-flash`` answers in 35 to 55 seconds for 20 minutes;
- a spend spike in one feature: ``sales.pipeline_risk_brief`` is re-run on whole pipelines by one
  user for two hours, with long contexts on gpt-4o.

The controls are everything else: ``sales.email_draft`` and ``sales.crm_followup`` roll out new
prompt versions that cost the same, the support agent's other sessions and the coordinator's code
reviews run as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

LOOP_SESSION = "demo-runaway-session"
LOOP_TOOL = "order_status"
REGRESSED_FEATURE = "sales.proposal_summary"
REGRESSED_VERSION = "v2"
SLOW_MODEL = "gemini-2.0-flash"
SPIKE_FEATURE = "sales.pipeline_risk_brief"


def incident_anchor(now: datetime) -> datetime:
    """13:00 UTC of the latest weekday whose incidents (three hours long) ended before ``now``."""
    day = (now - timedelta(hours=3)).replace(hour=13, minute=0, second=0, microsecond=0)
    if day > now - timedelta(hours=3):
        day -= timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


@dataclass(frozen=True)
class DemoIncidents:
    anchor: datetime

    @classmethod
    def before(cls, now: datetime | None = None) -> DemoIncidents:
        return cls(incident_anchor(now or datetime.now(UTC)))

    @property
    def rollout(self) -> datetime:
        """When the regressed prompt version starts."""
        return self.anchor - timedelta(hours=6)

    @property
    def loop_start(self) -> datetime:
        return self.anchor + timedelta(minutes=10)

    @property
    def slow_window(self) -> tuple[datetime, datetime]:
        return self.anchor + timedelta(minutes=30), self.anchor + timedelta(minutes=50)

    @property
    def spike_window(self) -> tuple[datetime, datetime]:
        return self.anchor + timedelta(hours=1), self.anchor + timedelta(hours=3)

    def is_slow(self, model: str, at: datetime) -> bool:
        start, end = self.slow_window
        return model == SLOW_MODEL and start <= at < end

    def spike_starts(self, start: datetime, end: datetime) -> list[datetime]:
        """Start times of the extra briefs in ``[start, end)``: one every 45 seconds in the spike window."""
        first, last = self.spike_window
        times = []
        at = first
        while at < last:
            if start <= at < end:
                times.append(at)
            at += timedelta(seconds=45)
        return times
