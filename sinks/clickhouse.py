"""Connecting to ClickHouse (a server over HTTP, or the embedded chDB engine) and classifying its failures."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from sinks.exceptions import ClickHouseTerminalError, ClickHouseTransientError, SinkError

# Error codes that go away by themselves: overload, too many parts, timeouts, network, replicas.
TRANSIENT_CODES = frozenset({3, 159, 160, 202, 203, 209, 210, 241, 242, 252, 285, 319, 373, 394, 425, 999, 1000})
_HINTS = {
    60: "a table is missing: run `spendstream migrate`",
    81: "the database is missing: run `spendstream migrate`",
    16: "a column is missing: run `spendstream migrate`",
    47: "a column is missing: run `spendstream migrate`",
    164: "the ClickHouse user is read-only: use one that may write",
    192: "unknown user: check SPENDSTREAM_CLICKHOUSE_URL",
    193: "wrong password: check SPENDSTREAM_CLICKHOUSE_URL",
    497: "the user may not write here: grant INSERT or use another user",
    516: "authentication failed: check SPENDSTREAM_CLICKHOUSE_URL",
}
_CODE = re.compile(r"Code: (\d+)")


def connect(target: str, database: str | None = None, **settings: Any) -> Client:
    """A clickhouse-connect client for ``target``: ``chdb:///abs/path`` or ``http(s)://user:pass@host:port/db``."""
    if target.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=target, database=database, settings=settings or None)
    return clickhouse_connect.get_client(
        dsn=target, database=database, settings=settings or None, connect_timeout=5, send_receive_timeout=60
    )


def sql_string(value: str) -> str:
    """A ClickHouse string literal of ``value`` (for SQL shown to people, and settings sent as SET)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def utc(value: datetime) -> datetime:
    """A ``DateTime64(3, 'UTC')`` value as read: some clients return it naive; it is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def classify(operation: str, exc: BaseException) -> SinkError:
    """Wrap a clickhouse-connect failure as transient (retry) or terminal (stop and say what to do)."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, (OperationalError, ConnectionError, TimeoutError, OSError)):
        return ClickHouseTransientError(operation, exc)
    code = error_code(exc)
    if code in TRANSIENT_CODES:
        return ClickHouseTransientError(operation, exc)
    if isinstance(exc, DatabaseError) and code is None and "timed out" in str(exc).lower():
        return ClickHouseTransientError(operation, exc)
    hint = _HINTS.get(code or -1, "check the ClickHouse server log; the events stay in Kafka until it is fixed")
    return ClickHouseTerminalError(operation, exc, hint)
