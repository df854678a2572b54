"""Errors of the composition root.

SpendstreamError (schemas.exceptions)
├── StackError      a part of the local stack could not start or be reached: what, and what to do
└── QueryRefused    the SQL endpoint will not run a query for this client: what, and what is allowed
"""

from __future__ import annotations

from schemas.exceptions import SpendstreamError


class StackError(SpendstreamError):
    def __init__(self, what: str, todo: str) -> None:
        self.what = what
        self.todo = todo
        super().__init__(f"{what}: {todo}")


class QueryRefused(SpendstreamError):
    """``code``: ClickHouse's error code for it (164 READONLY for a write, 497 ACCESS_DENIED otherwise)."""

    def __init__(self, what: str, todo: str, code: int = 497) -> None:
        self.what = what
        self.todo = todo
        self.code = code
        super().__init__(f"{what}: {todo}")
