"""Errors of the SDK.

SpendstreamError (schemas.exceptions)
└── SDKError
    └── EmitterClosedError   emit() after close()
"""

from __future__ import annotations

from schemas.exceptions import SpendstreamError


class SDKError(SpendstreamError):
    """Root of the SDK's errors."""


class EmitterClosedError(SDKError):
    def __init__(self) -> None:
        super().__init__("the emitter is closed: create a new Emitter to send more events")
