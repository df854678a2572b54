"""The spendstream SDK: emit one event per model or tool call to Kafka."""

from producers._emitter import Emitter, EmitterStats
from producers._exceptions import EmitterClosedError, SDKError

__all__ = ["Emitter", "EmitterClosedError", "EmitterStats", "SDKError"]
