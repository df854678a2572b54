"""Which ClickHouse a command talks to, and as whom.

A command that only reads (``sql``, ``alerts``, ``report``, ``trace``, ``budgets``) is a reader of the
SQL endpoint's sandbox (read-only, under the limits): the running ``up`` process's endpoint, or,
when ``up`` is not running, one served inside the command over the chDB files of
``SPENDSTREAM_HOME``. It needs no token and writes nothing to disk. A command that writes
(``migrate``, ``reprice``, ``sql --admin``) is the endpoint's ``admin`` with the token ``up`` wrote
in its home, or opens chDB itself when ``up`` is not running. Against a ClickHouse server
(``SPENDSTREAM_CLICKHOUSE_URL``) both are the URL's user, with that server's grants.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from clickhouse_connect.driver.client import Client

from sinks.clickhouse import connect, error_code
from spendstream.broker import port_open
from spendstream.exceptions import StackError
from spendstream.settings import Settings
from spendstream.sql_endpoint import ADMIN_USER, TOKEN_FILE, SqlEndpoint

_AUTHENTICATION_FAILED = 516


def engine_dsn(settings: Settings) -> str:
    """The DSN of the engine the worker writes to: the server URL, or chDB under ``SPENDSTREAM_HOME``."""
    if settings.clickhouse_url is not None:
        return settings.clickhouse_url.get_secret_value()
    settings.chdb_path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{settings.chdb_path}"


def up_is_running(settings: Settings) -> bool:
    return settings.embedded_clickhouse and port_open(settings.sql_host, settings.sql_port)


def _not_up_home(what: str) -> StackError:
    return StackError(
        what,
        "run the command from the directory `spendstream up` was started in, or set SPENDSTREAM_HOME to its home",
    )


@contextmanager
def reader(settings: Settings) -> Iterator[Client]:
    """A client of spendstream's database that may only read, under the SQL endpoint's limits.

    Raises:
        StackError: ``up`` is not running and ``SPENDSTREAM_HOME`` holds no engine files.
    """
    with ExitStack() as stack:
        if settings.clickhouse_url is not None:
            target = settings.clickhouse_url.get_secret_value()
        elif up_is_running(settings):
            target = f"http://{settings.sql_host}:{settings.sql_port}"
        else:
            target = stack.enter_context(_own_endpoint(settings))
        client = connect(target, database=settings.database)
        stack.callback(client.close)
        yield client


@contextmanager
def _own_endpoint(settings: Settings) -> Iterator[str]:
    """The sandbox of ``up``'s endpoint over the chDB files of ``SPENDSTREAM_HOME``, on a free loopback port."""
    path = settings.chdb_path
    if not path.is_dir():  # never created here: a read leaves no files behind
        raise StackError(
            f"cannot read spendstream's tables: no `spendstream up` answers on {settings.sql_host}:"
            f"{settings.sql_port} and {settings.home.resolve()} holds no spendstream data",
            "start `spendstream up`, or run the command from the directory it was started in, or set SPENDSTREAM_HOME "
            "to its home (or SPENDSTREAM_CLICKHOUSE_URL to a server migrated with `spendstream migrate`)",
        )
    endpoint = SqlEndpoint(
        lambda: connect(f"chdb://{path}"),
        "127.0.0.1",
        0,
        settings.database,
        admin_token=secrets.token_urlsafe(24),  # nobody is admin of this one
        limits=settings.query_limits(),
        max_concurrent_queries=settings.sql_max_concurrent_queries,
        max_body_bytes=settings.sql_max_body_bytes,
        request_timeout_s=settings.sql_request_timeout_s,
        max_connections=settings.sql_max_connections,
        max_connections_per_client=settings.sql_max_connections_per_client,
    )
    endpoint.start()
    try:
        yield endpoint.url
    finally:
        endpoint.stop()


def admin_client(settings: Settings, database: str | None = None, create: bool = False) -> Client:
    """A client that may do anything, for a command that writes (migrate, reprice, sql --admin).

    Beside a running ``up``, it is the endpoint's ``admin`` with the token of ``SPENDSTREAM_HOME``;
    the token is only read here (``up`` writes it). Without ``up``, the engine files of
    ``SPENDSTREAM_HOME``, created only if ``create`` (migrate).

    Raises:
        StackError: the token file is missing or is not the running ``up``'s; no engine files.
    """
    if not up_is_running(settings):
        if not (create or settings.clickhouse_url is not None or settings.chdb_path.is_dir()):
            raise _not_up_home(
                f"no `spendstream up` answers on {settings.sql_host}:{settings.sql_port} and "
                f"{settings.home.resolve()} holds no spendstream data"
            )
        return connect(engine_dsn(settings), database=database)
    # chDB admits one process per data path: go through the running process's endpoint.
    token_file = (settings.home / TOKEN_FILE).resolve()
    if not token_file.is_file():
        raise _not_up_home(f"no admin token at {token_file} (`spendstream up` writes it in its home)")
    token = token_file.read_text().strip()
    try:
        return connect(f"http://{ADMIN_USER}:{token}@{settings.sql_host}:{settings.sql_port}", database=database)
    except Exception as exc:
        if error_code(exc) == _AUTHENTICATION_FAILED:
            raise _not_up_home(
                f"the admin token in {token_file} is not the one of the `spendstream up` answering on "
                f"{settings.sql_host}:{settings.sql_port}"
            ) from exc
        raise
