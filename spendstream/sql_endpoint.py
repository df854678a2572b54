"""The SQL endpoint of the embedded mode: ClickHouse's HTTP interface shape over the chDB engine.

chDB allows one process per data path, so the ``up`` process owns the engine and serves SQL to
everyone else here: ``curl 'http://127.0.0.1:8123/?query=SELECT 1'``, ``spendstream sql`` and
clickhouse-connect's own HTTP client. The user ``admin`` with the token from
``SPENDSTREAM_HOME/sql-admin-token`` may do anything (``spendstream migrate`` and ``reprice`` use it).
Everyone else is sandboxed (``spendstream.sql_policy``): a query is parsed by the engine and checked
against allow-lists before it runs, it runs in an engine session locked with ``readonly = 1`` and
the :class:`~spendstream.sql_policy.QueryLimits`, it is cancelled when its client goes away, and at
most ``max_concurrent_queries`` run at once. Bodies are bounded before and after decompression, and
a request that does not arrive within ``request_timeout_s`` is dropped.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import re
import secrets
import select
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from clickhouse_connect.driver.client import Client

from sinks.clickhouse import error_code, sql_string
from spendstream.exceptions import QueryRefused
from spendstream.sql_policy import QueryLimits, check_statement, client_settings, output_format

logger = logging.getLogger(__name__)

ADMIN_USER = "admin"
TOKEN_FILE = "sql-admin-token"
"""The file under ``SPENDSTREAM_HOME`` that holds the password of ``admin``; only ``up`` creates it."""
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "query_id", "session_id", "session_timeout",
        "session_check", "compress", "decompress", "enable_http_compression", "wait_end_of_query", "buffer_size",
        "quota_key", "client_protocol_version", "http_headers_progress_interval_ms",
        "send_progress_in_http_headers", "role", "readonly",
    }
)  # fmt: skip
_INSERT_WITH_DATA = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>[`\w.]+)\s*(?:\((?P<columns>[^)]*)\))?\s*FORMAT\s+(?P<fmt>\w+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_RESULT_STATEMENT = re.compile(
    r"^(?:\s|\(|/\*.*?\*/|--[^\n]*\n|#[^\n]*\n)*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN)\b",
    re.IGNORECASE | re.DOTALL,
)
_HAS_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)
_HTTP_STATUS = {
    60: 404, 81: 404, 62: 400, 47: 400, 115: 400, 164: 403, 497: 403, 516: 401, 202: 503, 159: 408, 394: 408,
    241: 507, 158: 413, 396: 413,
}  # fmt: skip
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MARKER = "spendstream-request:"
"""Leads a sandboxed query's text (a comment), so that the query can be found and killed when its client goes.
Only the server makes it (a uuid): no text of the client ever goes into the SQL around the checked query."""
_QUERY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_STREAMED_FORMATS = frozenset({"Native", "TabSeparated", "TSV", "CSV", "RowBinary", "JSONEachRow"})
"""Formats whose blocks, each written on its own, concatenate into the whole result: chDB streams these
(clickhouse-connect's chDB backend streams exactly these; it holds any other format whole)."""
_RESULT_READ_BYTES = 1 << 20
_FORMAT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_WATCH_SECONDS = 0.2
_IDLE_SESSIONS_PER_KIND = 4
_SESSION_KINDS = 32
_INSPECTED_QUERIES = 2048


class _Refusal(Exception):
    """A request answered with an error before any SQL runs: HTTP status, ClickHouse code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def load_or_create_token(home: Path) -> str:
    """The admin token of the endpoint, created on first use (file mode 0600)."""
    path = home / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


def _too_large(limit: int) -> _Refusal:
    return _Refusal(
        413,
        396,
        f"Code: 396. DB::Exception: the request body is over {limit:,} bytes (after decompression): split it, "
        "or raise SPENDSTREAM_SQL_MAX_BODY_BYTES. (TOO_LARGE_REQUEST)",
    )


def _result_too_large(limit: int) -> _Refusal:
    return _Refusal(
        413,
        396,
        f"Code: 396. DB::Exception: the result is over this endpoint's max_result_bytes of {limit:,} bytes "
        "(as sent, constant columns included): add a LIMIT or select fewer or shorter columns, or have the "
        "operator raise SPENDSTREAM_SQL_MAX_RESULT_BYTES. (TOO_MANY_ROWS_OR_BYTES)",
    )


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from its ``Content-Encoding``, refused once it grows past ``limit`` bytes.

    Raises:
        _Refusal: an unknown encoding, a corrupt body, or one that expands past ``limit``.
    """
    encoding = encoding.lower().strip()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "deflate"):
            # wbits 47: a zlib or a gzip header, whichever the body has
            inflater = zlib.decompressobj(47)
            out = inflater.decompress(body, limit + 1)
            if len(out) > limit or inflater.unconsumed_tail:
                raise _too_large(limit)
            return out
        if encoding == "lz4":
            import lz4.frame

            lz4_reader = lz4.frame.LZ4FrameDecompressor()
            data = bytes(lz4_reader.decompress(body, max_length=limit + 1))
            if len(data) > limit or not lz4_reader.eof:
                raise _too_large(limit)
            return data
    except (zlib.error, RuntimeError, EOFError) as exc:
        message = f"Code: 36. DB::Exception: cannot decompress the {encoding} body ({exc}). (BAD_ARGUMENTS)"
        raise _Refusal(400, 36, message) from None
    raise _Refusal(
        400,
        36,
        f"Code: 36. DB::Exception: unsupported Content-Encoding {encoding!r}: send gzip, deflate, lz4 or none. "
        "(BAD_ARGUMENTS)",
    )


def _setting_name(name: str) -> str:
    if _SETTING_NAME.match(name) is None:
        raise ValueError(
            f"Code: 115. DB::Exception: Unknown setting {name!r}: a setting is named with letters, digits and "
            "underscores. (UNKNOWN_SETTING)"
        )
    return name


def _unescape(value: str) -> str:
    """Undo the escaping of ClickHouse's text format in a ``param_`` value; the client escapes it again."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m.group(1), m.group(1)), value)


class _Sessions:
    """Engine sessions kept for reuse, by what they were set up with (a session's ``readonly = 1`` is for good).

    A dashboard sends the same settings with every query, so it finds a session set up for them.
    """

    def __init__(self, factory: Callable[[], Client]) -> None:
        self._factory = factory
        self._idle: OrderedDict[tuple[str, ...], list[Client]] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def session(self, setup: tuple[str, ...]) -> Iterator[Client]:
        """A session on which the SQL statements ``setup`` have run; back to the pool after use."""
        with self._lock:
            idle = self._idle.get(setup)
            client = idle.pop() if idle else None
        if client is None:
            client = self._factory()
            try:
                for statement in setup:
                    client.command(statement)
            except Exception:
                client.close()
                raise
        try:
            yield client
        except BaseException:
            client.close()  # its state is unknown after a failure half way
            raise
        self._give_back(setup, client)

    def _give_back(self, setup: tuple[str, ...], client: Client) -> None:
        evicted: list[Client] = []
        with self._lock:
            idle = self._idle.setdefault(setup, [])
            self._idle.move_to_end(setup)
            if len(idle) < _IDLE_SESSIONS_PER_KIND:
                idle.append(client)
            else:
                evicted.append(client)
            while len(self._idle) > _SESSION_KINDS:
                evicted.extend(self._idle.popitem(last=False)[1])
        for extra in evicted:
            extra.close()

    def close(self) -> None:
        with self._lock:
            sessions = [client for idle in self._idle.values() for client in idle]
            self._idle.clear()
        for client in sessions:
            client.close()


class _Watcher:
    """Cancels a sandboxed query whose client closed its connection (ClickHouse's
    ``cancel_http_readonly_queries_on_client_close``): polls the sockets of running queries."""

    def __init__(self, killer: Callable[[str], None]) -> None:
        self._kill = killer
        self._running: dict[str, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sql-endpoint-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @contextmanager
    def watching(self, marker: str, connection: socket.socket) -> Iterator[None]:
        with self._lock:
            self._running[marker] = connection
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(marker, None)

    def _run(self) -> None:
        while not self._stop.wait(_WATCH_SECONDS):
            with self._lock:
                running = dict(self._running)
            if not running:
                continue
            # poll, not select: select refuses descriptors past 1024, and a long-lived process has many
            poller = select.poll()
            by_fd: dict[int, tuple[str, socket.socket]] = {}
            for marker, sock in running.items():
                with suppress(OSError, ValueError):  # closed meanwhile: nothing to watch
                    by_fd[sock.fileno()] = (marker, sock)
                    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
            for fd, _ in poller.poll(0):
                marker, sock = by_fd[fd]
                if _closed(sock):
                    with self._lock:
                        still_running = self._running.pop(marker, None) is not None
                    if still_running:
                        logger.info("sql endpoint: client left, cancelling its query %s", marker)
                        self._kill(marker)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class SqlEndpoint:
    """An HTTP server in a background thread that runs SQL through clickhouse-connect clients.

    Args:
        client_factory: makes a client (an engine session) on the engine.
        host, port: where to listen (port 0 picks a free one).
        database: spendstream's database: the default of every request, the only one non-admins read.
        admin_token: the password of the user ``admin``, who may do anything.
        writable: whether anonymous requests may also insert into ``database``'s tables.
        limits: what one query of a client who is not ``admin`` may take.
        max_concurrent_queries: queries of non-admins running at once; the next waits up to
            ``request_timeout_s``, then is refused with 503.
        max_body_bytes: the largest request body, before and after decompression.
        request_timeout_s: how long a request may take to arrive whole (request line, headers and body,
            from its first byte; 408 past it), and an idle kept-alive connection stays open.
        max_connections: open connections at once; more are refused with 503.
        max_connections_per_client: open connections from one address other than loopback (every local
            process is 127.0.0.1); more are refused with 503. Default: half of ``max_connections``.
    """

    def __init__(
        self,
        client_factory: Callable[[], Client],
        host: str,
        port: int,
        database: str,
        admin_token: str,
        writable: bool = False,
        limits: QueryLimits | None = None,
        max_concurrent_queries: int = 2,
        max_body_bytes: int = 64 * 1024**2,
        request_timeout_s: float = 30.0,
        max_connections: int = 64,
        max_connections_per_client: int | None = None,
    ) -> None:
        self._client_factory = client_factory
        self._host = host
        self._port = port
        self.database = database
        self._admin_token = admin_token
        self.writable = writable
        self.limits = limits or QueryLimits()
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self._max_connections = max_connections
        self._max_connections_per_client = max_connections_per_client or max(1, max_connections // 2)
        self._query_slots = threading.BoundedSemaphore(max_concurrent_queries)
        self._sessions = _Sessions(client_factory)
        self._inspected: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], None] = OrderedDict()
        """Queries (text and parameters) that passed :meth:`inspect`, the latest last."""
        self._inspected_lock = threading.Lock()
        self._killer: Client | None = None
        self._killer_lock = threading.Lock()
        self._watcher = _Watcher(self._kill)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        endpoint = self

        class Handler(_Handler):
            owner = endpoint
            timeout = endpoint.request_timeout_s

        self._server = _Server(
            (self._host, self._port),
            Handler,
            self._max_connections,
            self._max_connections_per_client,
            self.request_timeout_s,
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sql-endpoint", daemon=True)
        self._thread.start()
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._sessions.close()

    def is_admin(self, user: str | None, password: str | None) -> bool:
        return user == ADMIN_USER and hmac.compare_digest((password or "").encode(), self._admin_token.encode())

    def authenticate(self, user: str | None, password: str | None) -> bool:
        """Anyone may read; the user ``admin`` must bring the right token."""
        return user != ADMIN_USER or self.is_admin(user, password)

    @contextmanager
    def query_slot(self) -> Iterator[None]:
        """One of the slots for queries of non-admins, waiting up to ``request_timeout_s`` for it."""
        if not self._query_slots.acquire(timeout=self.request_timeout_s):
            raise _Refusal(
                503,
                202,
                "Code: 202. DB::Exception: too many queries are running on this endpoint: try again shortly, "
                "or raise SPENDSTREAM_SQL_MAX_CONCURRENT_QUERIES. (TOO_MANY_SIMULTANEOUS_QUERIES)",
            )
        try:
            yield
        finally:
            self._query_slots.release()

    def session(self, admin: bool, settings: dict[str, str]) -> Any:
        """A pooled engine session set up for a request: ``admin``'s with the settings asked for; anyone
        else's with the limits, the settings allowed (``client_settings``) and, unless anonymous
        writes are on, ``readonly = 1``, which no later statement can undo."""
        statements = [f"SET {_setting_name(name)} = {sql_string(value)}" for name, value in sorted(settings.items())]
        if not admin:
            limits = {**self.limits.settings(), **settings}
            statements = [f"SET {name} = {sql_string(value)}" for name, value in sorted(limits.items())]
            if not self.writable:
                statements.append("SET readonly = 1")
        return self._sessions.session(tuple(statements))

    def inspect(self, sql: str, parameters: dict[str, str] | None) -> None:
        """Parse ``sql`` with the engine and refuse it unless it stays in the sandbox.

        Raises:
            QueryRefused: several statements, or a statement the policy refuses.
            Exception: the engine's syntax error, as ClickHouse reports it.
        """
        setup = (
            f"SET max_query_size = {2 * self.limits.max_query_bytes + 65536}",
            "SET max_execution_time = 10",
            "SET readonly = 1",
        )
        size = len(sql.encode())
        if size > self.limits.max_query_bytes:  # refused before the engine quotes and parses it
            raise QueryRefused(
                f"the query is {size:,} bytes, over this endpoint's max_query_size of {self.limits.max_query_bytes:,}",
                "send a shorter query (large value lists belong in a table, or in query parameters), or have the "
                "operator raise SPENDSTREAM_SQL_MAX_QUERY_BYTES",
            )
        key = (sql, tuple(sorted((parameters or {}).items())))
        with self._inspected_lock:
            if key in self._inspected:
                self._inspected.move_to_end(key)
                return
        with self._sessions.session(setup) as client:
            # formatQuery parses exactly one statement: chDB would run every statement of "a; b"
            formatted = client.raw_query(
                f"SELECT formatQuerySingleLine({sql_string(sql)})", fmt="RawBLOB", use_database=False
            )
            ast = client.raw_query(f"EXPLAIN AST {sql}", parameters=parameters, use_database=False)
        check_statement(ast.decode(errors="replace"), self.database, self.writable, formatted.decode(errors="replace"))
        with self._inspected_lock:  # dashboards send the same queries again and again: parse each once
            self._inspected[key] = None
            while len(self._inspected) > _INSPECTED_QUERIES:
                self._inspected.popitem(last=False)

    def read_result(
        self, client: Client, sql: str, parameters: dict[str, str] | None, fmt: str | None, settings: dict[str, str]
    ) -> bytes:
        """The result of a sandboxed query in ``fmt``, never more than its ``max_result_bytes`` held here.

        ClickHouse's own ``max_result_bytes`` counts a block's columns as held in memory: a constant or
        LowCardinality column counts one value, not one per row, and formatting adds more. So the
        result is read from the engine block by block, counting the bytes as written, and the query is
        cancelled once they pass the limit. A format whose blocks do not concatenate (JSON, Pretty,
        Parquet, ...) is read in Native within the limit, then written in that format from those rows.

        Raises:
            _Refusal: the result is over ``max_result_bytes`` (413).
        """
        limit = min(self.limits.max_result_bytes, int(settings.get("max_result_bytes") or self.limits.max_result_bytes))
        if fmt is None:  # no result set (an INSERT of a writable endpoint)
            return client.raw_query(sql, parameters=parameters)
        if _FORMAT_NAME.fullmatch(fmt) is None:  # it goes into SQL text, some of which may read files
            raise _Refusal(
                400,
                73,
                f"Code: 73. DB::Exception: unknown format {fmt[:64]!r}: a format is a name such as TSV or JSON. "
                "(UNKNOWN_FORMAT)",
            )
        if clause := _HAS_FORMAT.search(sql):
            sql = sql[: clause.start()]
        statement = _RESULT_STATEMENT.match(sql)
        if statement is None or statement.group(1).upper() not in ("SELECT", "WITH"):
            # SHOW, DESCRIBE, EXISTS, EXPLAIN: chDB streams none of them, and their rows are few and
            # of the catalogue (or of the query's text), so ClickHouse's own limits hold them
            result = client.raw_query(sql, parameters=parameters, fmt=fmt)
            if len(result) > limit:
                raise _result_too_large(limit)
            return result
        streamed = fmt if fmt in _STREAMED_FORMATS else "Native"
        parts: list[bytes] = []
        size = 0
        stream: Any = client.raw_stream(sql, parameters=parameters, fmt=streamed)  # chDB: a file over its blocks
        try:
            while part := stream.read(_RESULT_READ_BYTES):
                size += len(part)
                if size > limit:
                    raise _result_too_large(limit)
                parts.append(part)
        finally:
            stream.close()  # cancels the query when it is not done
        if streamed == fmt:
            return b"".join(parts)
        if not parts:  # no rows: chDB writes no Native block, so the columns come from the query itself
            empty = f"SELECT * FROM (\n{sql.rstrip().rstrip(';')}\n) LIMIT 0"
            return client.raw_query(empty, parameters=parameters, fmt=fmt)
        return self._rewrite(parts, fmt, settings, limit)

    def _rewrite(self, native: list[bytes], fmt: str, settings: dict[str, str], limit: int) -> bytes:
        """Rows read in Native, written in ``fmt`` with the client's format settings, within ``limit``."""
        with tempfile.NamedTemporaryFile(prefix="spendstream-result-", suffix=".native") as rows:
            rows.writelines(native)
            rows.flush()
            native.clear()
            limits = {**self.limits.settings(), **settings, "max_result_bytes": str(limit)}
            setup = tuple(f"SET {name} = {sql_string(value)}" for name, value in sorted(limits.items()))
            # our own statement: readonly = 2 lets it read its file, which readonly = 1 refuses
            with self._sessions.session((*setup, "SET readonly = 2")) as client:
                result = client.raw_query(f"SELECT * FROM file({sql_string(rows.name)}, Native) FORMAT {fmt}")
        if len(result) > limit:
            raise _result_too_large(limit)
        return result

    def watching(self, marker: str, connection: socket.socket) -> Any:
        return self._watcher.watching(marker, connection)

    def _kill(self, marker: str) -> None:
        """Cancel the queries whose text holds ``marker`` (split in two, so that this KILL does not match itself)."""
        head, tail = marker[: len(_MARKER)], marker[len(_MARKER) :]
        try:
            with self._killer_lock:
                if self._killer is None:
                    self._killer = self._client_factory()
                self._killer.command(
                    f"KILL QUERY WHERE position(query, concat({sql_string(head)}, {sql_string(tail)})) > 0 ASYNC"
                )
        except Exception as exc:  # the query ends by its own time limit then
            logger.warning("sql endpoint: could not cancel the query of a client that left (%s)", exc)


_LINGER_S = 2.0  # how long a refused connection is read from before it is closed
_MAX_LINGERING = 64  # refused connections read from at once; past that they are closed at once


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that refuses connections past ``max_connections``, or past
    ``max_connections_per_client`` from one address other than loopback, with 503, and answers a request
    that has not arrived whole ``request_timeout_s`` after its first byte with 408 and closes it."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        max_connections_per_client: int,
        request_timeout_s: float,
    ) -> None:
        super().__init__(address, handler)
        self._connections = threading.BoundedSemaphore(max_connections)
        self._lingering = threading.BoundedSemaphore(_MAX_LINGERING)
        self._max_per_client = max_connections_per_client
        self._per_client: dict[str, int] = {}
        self._per_client_lock = threading.Lock()
        self.request_timeout_s = request_timeout_s
        self._arriving: dict[socket.socket, float] = {}
        """Connections whose request is arriving, with the time it must have arrived by."""
        self._arriving_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self._refuse(request, "too many connections to this endpoint: try again shortly")
            return
        if not self._admit(client_address[0]):
            self._connections.release()
            self._refuse(
                request,
                f"too many connections from {client_address[0]} (at most {self._max_per_client} from one "
                "address): close idle ones, or raise SPENDSTREAM_SQL_MAX_CONNECTIONS_PER_CLIENT",
            )
            return
        super().process_request(request, client_address)

    def _admit(self, host: str) -> bool:
        """Count a connection from ``host``, unless ``host`` has its share already.

        Loopback is not capped: every process of this host shares 127.0.0.1, so a cap there would
        take slots from the local tools as much as from a local trickler; the request deadline
        bounds how long any connection holds its slot.
        """
        if _loopback(host):
            return True
        with self._per_client_lock:
            held = self._per_client.get(host, 0)
            if held >= self._max_per_client:
                return False
            self._per_client[host] = held + 1
        return True

    def _release(self, host: str) -> None:
        if _loopback(host):
            return
        with self._per_client_lock:
            held = self._per_client.pop(host, 0) - 1
            if held > 0:
                self._per_client[host] = held

    def _refuse(self, request: socket.socket, reason: str) -> None:
        body = f"Code: 202. DB::Exception: {reason}. (TOO_MANY_SIMULTANEOUS_QUERIES)\n".encode()
        with suppress(OSError):
            request.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                + f"X-ClickHouse-Exception-Code: 202\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        if self._lingering.acquire(blocking=False):
            threading.Thread(target=self._linger, args=(request,), daemon=True).start()
        else:
            self.shutdown_request(request)

    def arriving(self, connection: socket.socket) -> float:
        """A request has begun on ``connection``: it must arrive whole within the request timeout.

        Returns: the time (``time.monotonic``) it must have arrived by.
        """
        deadline = time.monotonic() + self.request_timeout_s
        with self._arriving_lock:
            self._arriving[connection] = deadline
        return deadline

    def arrived(self, connection: socket.socket) -> bool:
        """The request on ``connection`` is all here; False when it was cut at its deadline already."""
        with self._arriving_lock:
            return self._arriving.pop(connection, None) is not None

    def service_actions(self) -> None:
        """Cut the requests past their deadline (``serve_forever`` calls this every half second)."""
        super().service_actions()
        now = time.monotonic()
        with self._arriving_lock:
            late = [connection for connection, deadline in self._arriving.items() if deadline <= now]
            for connection in late:
                del self._arriving[connection]
        for connection in late:
            logger.info("sql endpoint: a request did not arrive within %s s; answered 408", self.request_timeout_s)
            with suppress(OSError):  # its handler thread is blocked reading: the answer goes from here
                connection.send(_request_timeout(self.request_timeout_s), socket.MSG_DONTWAIT)
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes the handler, which then ends

    def _linger(self, request: socket.socket) -> None:
        """Read and drop what the refused client still sends, then close.

        Closing a socket with unread bytes resets the connection, and a reset can reach the client
        before it has read the 503 (it is still sending its request): it then sees a broken pipe
        instead of the reason. So the answer is followed by our FIN and the request is read off
        until the client closes or ``_LINGER_S`` has passed.
        """
        try:
            with suppress(OSError):
                request.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + _LINGER_S
                while (left := deadline - time.monotonic()) > 0:
                    request.settimeout(left)
                    if not request.recv(65536):
                        break
        finally:
            self.close_request(request)
            self._lingering.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.arrived(request)
            self._release(client_address[0])
            self._connections.release()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _request_timeout(timeout_s: float) -> bytes:
    body = (
        f"Code: 159. DB::Exception: the request did not arrive whole within {timeout_s:g} s (request line, "
        "headers and body): send it at once, or raise SPENDSTREAM_SQL_REQUEST_TIMEOUT_S. (TIMEOUT_EXCEEDED)\n"
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=UTF-8\r\n"
        + f"X-ClickHouse-Exception-Code: 159\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class _Handler(BaseHTTPRequestHandler):
    owner: SqlEndpoint
    protocol_version = "HTTP/1.1"
    server_version = "spendstream-sql"
    # headers and body go out in two writes: with Nagle's algorithm on, a kept-alive client's
    # delayed ACK held every answer back by about 40 ms
    disable_nagle_algorithm = True

    server: _Server
    deadline = 0.0
    """When the request being read must have arrived whole (``time.monotonic``)."""
    _here = False

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("sql endpoint: " + format, *args)

    def handle_one_request(self) -> None:
        """One request, which must arrive whole (request line, headers, body) within ``request_timeout_s``
        of its first byte; the socket's own timeout is per read, which a trickle of bytes never meets."""
        try:
            if not cast(io.BufferedReader, self.rfile).peek(1):  # the client closed its idle connection
                self.close_connection = True
                return
        except OSError:  # idle for request_timeout_s (a kept-alive connection), or reset
            self.close_connection = True
            return
        self.deadline = self.server.arriving(self.connection)
        self._here = False
        try:
            super().handle_one_request()
        except OSError:
            if self.server.arrived(self.connection):
                raise
            self.close_connection = True  # cut at its deadline, and answered 408 then
        else:
            self.server.arrived(self.connection)  # answered before it was read whole (an unknown method)

    def do_GET(self) -> None:
        if self._arrived():
            self._serve(b"")

    def do_POST(self) -> None:
        try:
            body = self._read_body()
            if not self._arrived():
                return
            body = decompress(body, self.headers.get("Content-Encoding", ""), self.owner.max_body_bytes)
        except _Refusal as refusal:
            self.close_connection = True  # what is left of the body would be read as the next request
            if self._arrived():
                self._reply(refusal.status, (refusal.message + "\n").encode(), refusal.code)
            return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            if self._arrived():  # not answered by the server's deadline check yet
                self._reply(408, _request_timeout(self.owner.request_timeout_s).partition(b"\r\n\r\n")[2], 159)
            return
        self._serve(body)

    def _arrived(self) -> bool:
        """The request is all here (its deadline no longer runs); False when it was cut at its deadline."""
        if self._here or self.server.arrived(self.connection):
            self._here = True
            return True
        self.close_connection = True
        return False

    def _read_body(self) -> bytes:
        """The request body, within ``max_body_bytes`` and the request's deadline (not per read)."""
        limit = self.owner.max_body_bytes
        deadline = self.deadline
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            size_so_far = 0
            while True:
                line = self._read_line(deadline)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    message = "Code: 36. DB::Exception: a malformed chunk size. (BAD_ARGUMENTS)"
                    raise _Refusal(400, 36, message) from None
                if size == 0:
                    while self._read_line(deadline) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                size_so_far += size
                if size_so_far > limit:
                    raise _too_large(limit)
                parts.append(self._read_exactly(size, deadline))
                self._read_line(deadline)  # the CRLF after each chunk
        raw_length = self.headers.get("Content-Length") or "0"
        if not raw_length.isdigit():
            message = f"Code: 36. DB::Exception: Content-Length {raw_length!r} is not a number. (BAD_ARGUMENTS)"
            raise _Refusal(400, 36, message)
        length = int(raw_length)
        if length > limit:
            raise _too_large(limit)
        return self._read_exactly(length, deadline)

    def _remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request body too slow")
        self.connection.settimeout(left)
        return left

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            self._remaining(deadline)
            part = self.rfile.read1(min(size, 1 << 20))
            if not part:
                raise ConnectionError("the client closed the connection before its body was complete")
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def _read_line(self, deadline: float) -> bytes:
        self._remaining(deadline)
        return self.rfile.readline(1024)

    def _credentials(self, params: dict[str, str]) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _Refusal(
                    400,
                    194,
                    "Code: 194. DB::Exception: the Authorization header is not valid Basic credentials "
                    "(base64 of user:password). (REQUIRED_PASSWORD)",
                ) from None
            return user, password
        header_user: str | None = self.headers.get("X-ClickHouse-User")
        header_key: str | None = self.headers.get("X-ClickHouse-Key")
        return header_user or params.get("user"), header_key or params.get("password")

    def _serve(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/replicas_status"):
            self._reply(200, b"Ok.\n")
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query = params.get("query", "")
        if not query and not body:
            self._reply(200, b"Ok.\n")
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            if _QUERY_ID.fullmatch(query_id) is None:
                query_id = str(uuid.uuid4())  # echoed in a header: never the refused one
                raise _Refusal(
                    400,
                    36,
                    "Code: 36. DB::Exception: query_id must be 1 to 128 letters, digits, '_' or '-': send such an id "
                    "(a uuid is fine) or none, and the server makes one. (BAD_ARGUMENTS)",
                )
            user, password = self._credentials(params)
            owner = self.owner
            if not owner.authenticate(user, password):
                message = "Code: 516. DB::Exception: admin: Authentication failed. (AUTHENTICATION_FAILED)"
                raise _Refusal(401, 516, message)
            admin = owner.is_admin(user, password)
            settings = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}
            database = params.get("database") or owner.database
            if not admin:
                settings = client_settings(settings, owner.limits)
                if database != owner.database:
                    raise QueryRefused(
                        f"the database {database} is not readable here", f"leave it out, or ask for {owner.database}"
                    )
            if admin:
                result, fmt = self._run(admin, params, settings, database, query, body, query_id)
            else:
                with owner.query_slot():
                    result, fmt = self._run(admin, params, settings, database, query, body, query_id)
        except _Refusal as refusal:
            self._reply(refusal.status, (refusal.message + "\n").encode(), refusal.code, query_id)
            return
        except QueryRefused as exc:
            name = "READONLY" if exc.code == 164 else "ACCESS_DENIED"
            self._reply(403, f"Code: {exc.code}. DB::Exception: {exc}. ({name})\n".encode(), exc.code, query_id)
            return
        except Exception as exc:
            code = error_code(exc) or 1002
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not message.startswith("Code:"):
                message = f"Code: {code}. DB::Exception: {message}"
            self._reply(_HTTP_STATUS.get(code, 500), (message + "\n").encode(), code, query_id)
            return
        self._reply(200, result, None, query_id, fmt)

    def _run(
        self,
        admin: bool,
        params: dict[str, str],
        settings: dict[str, str],
        database: str,
        query: str,
        body: bytes,
        query_id: str,
    ) -> tuple[bytes, str]:
        """Run one request's SQL; returns the result and its format."""
        owner = self.owner
        if not query and body[:6].upper() == b"INSERT":
            # clickhouse-connect may send "INSERT INTO t (cols) FORMAT Native\n" and the data in one body
            head, _, rest = body.partition(b"\n")
            if _INSERT_WITH_DATA.match(head.decode(errors="replace")):
                query, body = head.decode(), rest
        insert = _INSERT_WITH_DATA.match(query) if query and body else None
        parameters = {k[6:]: _unescape(v) for k, v in params.items() if k.startswith("param_")} or None
        if insert is not None:
            if not admin and not owner.writable:
                raise QueryRefused(
                    "Cannot execute query in readonly mode: INSERT is not allowed for you",
                    "write through Kafka (the topic llm.calls), or as admin",
                    code=164,
                )
            if not admin:
                owner.inspect(query, None)
            with owner.session(admin, settings) as client:
                client.database = database
                columns = (
                    [c.strip(" `") for c in insert.group("columns").split(",")] if insert.group("columns") else None
                )
                client.raw_insert(insert.group("table"), columns, body, fmt=insert.group("fmt"))
            return b"", "TabSeparated"
        text = body.decode(errors="replace")
        sql = f"{query}\n{text}" if query and text else (query or text)
        try:  # appended to the SQL as FORMAT <fmt>, for admin too
            fmt = output_format(params.get("default_format") or "TabSeparated")
        except QueryRefused as exc:
            raise _Refusal(400, 73, f"Code: 73. DB::Exception: {exc}. (UNKNOWN_FORMAT)") from None
        explicit = _HAS_FORMAT.search(sql)
        wants_rows = _RESULT_STATEMENT.match(sql) is not None and explicit is None
        if explicit is not None:
            fmt = explicit.group().split()[1].rstrip(";")
        with owner.session(admin, settings) as client:
            client.database = database
            if admin:
                return client.raw_query(sql, parameters=parameters, fmt=fmt if wants_rows else None), fmt
            owner.inspect(sql, parameters)
            marker = f"{_MARKER}{uuid.uuid4().hex}"
            with owner.watching(marker, self.connection):
                sandboxed = f"/* {marker} */ {sql}"
                result = owner.read_result(
                    client, sandboxed, parameters, fmt if wants_rows or explicit else None, settings
                )
            return result, fmt

    def _reply(
        self, status: int, body: bytes, code: int | None = None, query_id: str = "", fmt: str = "TabSeparated"
    ) -> None:
        try:
            self.connection.settimeout(self.owner.request_timeout_s)
            self.send_response(status)
            self.send_header(
                "Content-Type",
                "text/plain; charset=UTF-8" if code or fmt != "Native" else "application/octet-stream",
            )
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-ClickHouse-Server-Display-Name", "spendstream")
            self.send_header("X-ClickHouse-Timezone", "UTC")
            if query_id:
                self.send_header("X-ClickHouse-Query-Id", query_id)
                self.send_header("X-ClickHouse-Format", fmt)
                self.send_header("X-ClickHouse-Summary", json.dumps({"read_rows": "0", "written_rows": "0"}))
            if code is not None:
                self.send_header("X-ClickHouse-Exception-Code", str(code))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client left: nothing to answer
            self.close_connection = True
