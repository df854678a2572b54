"""The spendstream SDK: emit one event per model or tool call to Kafka, and track calls as they run."""

from producers._breaker import BreakerState, CircuitBreakers
from producers._emitter import Emitter, EmitterStats
from producers._exceptions import (
    BudgetExceededError,
    CallRefused,
    CircuitOpen,
    CostConfirmationRequired,
    EmitterClosedError,
    SDKError,
    SessionLimitExceeded,
)
from producers._governor import Governor
from producers._guard import BudgetGuard, Decision, GuardStats
from producers._pseudonym import pseudonymize
from producers._stuck import Stuck, StuckRule
from producers._track import EventSink, TrackedCall, Tracker, TrackerStats, carry_context, current_trace
from producers._usage import Usage, usage_from

__all__ = [
    "BreakerState",
    "BudgetExceededError",
    "BudgetGuard",
    "CallRefused",
    "CircuitBreakers",
    "CircuitOpen",
    "CostConfirmationRequired",
    "Decision",
    "Emitter",
    "EmitterClosedError",
    "EmitterStats",
    "EventSink",
    "Governor",
    "GuardStats",
    "SDKError",
    "SessionLimitExceeded",
    "Stuck",
    "StuckRule",
    "TrackedCall",
    "Tracker",
    "TrackerStats",
    "Usage",
    "carry_context",
    "current_trace",
    "pseudonymize",
    "usage_from",
]
