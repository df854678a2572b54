"""The spendstream SDK: emit one event per model or tool call to Kafka, and track calls as they run."""

from producers._emitter import Emitter, EmitterStats
from producers._exceptions import EmitterClosedError, SDKError
from producers._guard import BudgetExceededError, BudgetGuard, Decision, GuardStats
from producers._pseudonym import pseudonymize
from producers._track import EventSink, TrackedCall, Tracker, TrackerStats, carry_context, current_trace
from producers._usage import Usage, usage_from

__all__ = [
    "BudgetExceededError",
    "BudgetGuard",
    "Decision",
    "Emitter",
    "EmitterClosedError",
    "EmitterStats",
    "EventSink",
    "GuardStats",
    "SDKError",
    "TrackedCall",
    "Tracker",
    "TrackerStats",
    "Usage",
    "carry_context",
    "current_trace",
    "pseudonymize",
    "usage_from",
]
