"""The data contracts of spendstream: the call event, the outcome event and the config file."""

from schemas.call_event import UNATTRIBUTED, CallEvent
from schemas.exceptions import ConfigError, SpendstreamError
from schemas.outcome_event import OutcomeEvent

__all__ = ["UNATTRIBUTED", "CallEvent", "ConfigError", "OutcomeEvent", "SpendstreamError"]
