"""Errors of the sinks package.

SpendstreamError (schemas.exceptions)
└── SinkError
    ├── ClickHouseTransientError   ClickHouse unreachable or overloaded: retry with backoff
    ├── ClickHouseTerminalError    the schema or the credentials are wrong: stop, keep the data, say why
    └── MigrationError             a migration file failed: which file, which statement, why
"""

from __future__ import annotations

from schemas.exceptions import SpendstreamError


class SinkError(SpendstreamError):
    """Root of the errors of writing to ClickHouse."""


class ClickHouseTransientError(SinkError):
    """A failure that goes away by itself (network, overload, too many parts)."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"ClickHouse {operation} failed for now ({cause}); retrying with backoff")


class ClickHouseTerminalError(SinkError):
    """A failure that retrying alone will not fix; the data stays unacknowledged in Kafka."""

    def __init__(self, operation: str, cause: BaseException, hint: str) -> None:
        self.operation = operation
        self.cause = cause
        self.hint = hint
        super().__init__(f"ClickHouse {operation} failed: {cause}. {hint}")


class MigrationError(SinkError):
    """A migration statement failed; the migrations before it stay applied."""

    def __init__(self, file: str, statement: str, cause: BaseException) -> None:
        self.file = file
        self.statement = statement
        self.cause = cause
        head = " ".join(statement.split())[:120]
        super().__init__(f"migration {file} failed at `{head}...`: {cause}. Fix the file or the server and rerun.")
