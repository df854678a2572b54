"""The data contracts of spendstream: the call event, the outcome event, the alert and the config file."""

from schemas.alert import Alert
from schemas.call_event import UNATTRIBUTED, CallEvent
from schemas.exceptions import ConfigError, SpendstreamError
from schemas.outcome_event import OutcomeEvent

__all__ = ["UNATTRIBUTED", "Alert", "CallEvent", "ConfigError", "OutcomeEvent", "SpendstreamError"]
