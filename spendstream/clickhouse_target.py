"""Which ClickHouse a command talks to: a server, the running ``up`` process's SQL endpoint, or chDB directly."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from sinks.clickhouse import connect
from spendstream.broker import port_open
from spendstream.settings import Settings
from spendstream.sql_endpoint import ADMIN_USER, load_or_create_token


def engine_dsn(settings: Settings) -> str:
    """The DSN of the engine the worker writes to: the server URL, or chDB under ``SPENDSTREAM_HOME``."""
    if settings.clickhouse_url is not None:
        return settings.clickhouse_url.get_secret_value()
    settings.chdb_path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{settings.chdb_path}"


def up_is_running(settings: Settings) -> bool:
    return settings.embedded_clickhouse and port_open(settings.sql_host, settings.sql_port)


def client_for_command(settings: Settings, database: str | None = None) -> Client:
    """A client for a short command (sql, migrate, reprice) that may run beside ``spendstream up``."""
    if up_is_running(settings):
        # chDB admits one process per data path: go through the running process's endpoint.
        return connect(
            f"http://{ADMIN_USER}:{load_or_create_token(settings.home)}@{settings.sql_host}:{settings.sql_port}",
            database=database,
        )
    return connect(engine_dsn(settings), database=database)
