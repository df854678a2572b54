"""Errors of the composition root.

SpendstreamError (schemas.exceptions)
└── StackError      a part of the local stack could not start or be reached: what, and what to do
"""

from __future__ import annotations

from schemas.exceptions import SpendstreamError


class StackError(SpendstreamError):
    def __init__(self, what: str, todo: str) -> None:
        self.what = what
        self.todo = todo
        super().__init__(f"{what}: {todo}")
