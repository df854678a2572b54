"""The SQL endpoint of the embedded mode: ClickHouse's HTTP interface shape over the chDB engine.

chDB allows one process per data path, so the ``up`` process owns the engine and serves SQL to
everyone else here: ``curl 'http://127.0.0.1:8123/?query=SELECT 1'``, ``spendstream sql`` and
clickhouse-connect's own HTTP client. Anonymous requests are read-only (``readonly=2``: settings may
change, data may not) unless ``SPENDSTREAM_SQL_WRITABLE`` is set; the user ``admin`` with the token
from ``SPENDSTREAM_HOME/sql-admin-token`` may write (``spendstream migrate`` and ``reprice`` use it).
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import logging
import re
import secrets
import threading
import uuid
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from clickhouse_connect.driver.client import Client

from sinks.clickhouse import error_code, sql_string

logger = logging.getLogger(__name__)

ADMIN_USER = "admin"
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
_RESULT_STATEMENT = re.compile(r"^\s*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN)\b", re.IGNORECASE)
_HAS_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)
_HTTP_STATUS = {60: 404, 81: 404, 62: 400, 47: 400, 115: 400, 164: 403, 497: 403, 516: 401}
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_or_create_token(home: Path) -> str:
    """The admin token of the endpoint, created on first use (file mode 0600)."""
    path = home / "sql-admin-token"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate, lz4 or none")


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


class SqlEndpoint:
    """An HTTP server in a background thread that runs SQL through clickhouse-connect clients.

    Args:
        client_factory: makes a client on the engine; one is made per serving thread.
        host, port: where to listen (port 0 picks a free one).
        database: the default database of requests that name none.
        admin_token: the password of the user ``admin``, who may write.
        writable: whether anonymous requests may write too.
    """

    def __init__(
        self,
        client_factory: Callable[[], Client],
        host: str,
        port: int,
        database: str,
        admin_token: str,
        writable: bool = False,
    ) -> None:
        self._client_factory = client_factory
        self._host = host
        self._port = port
        self.database = database
        self._admin_token = admin_token
        self.writable = writable
        self._local = threading.local()
        self._server: ThreadingHTTPServer | None = None
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

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sql-endpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def client(self, write: bool) -> Client:
        """This thread's client; a reader's engine session is read-only for good (``readonly`` cannot be unset)."""
        name = "writer" if write else "reader"
        client: Client | None = getattr(self._local, name, None)
        if client is None:
            client = self._client_factory()
            if not write:
                client.command("SET readonly = 2")
            setattr(self._local, name, client)
        return client

    def session(self, write: bool, settings: dict[str, str]) -> Client:
        """This thread's client, its engine session holding exactly ``settings`` beyond its defaults.

        A request's settings stay SET on the thread's session, and a setting the next request does
        not send is put back to its default: a dashboard that sends the same settings with every
        query pays for them once. (clickhouse-connect's chDB client applies per-query settings with
        a read of system.settings and a SET and a restore each: about 8 ms per query.)
        """
        client = self.client(write)
        key = "writer_settings" if write else "reader_settings"
        applied: dict[str, str] | None = getattr(self._local, key, None)
        if applied is None:
            applied = {}
            setattr(self._local, key, applied)
        for name in [name for name in applied if name not in settings]:
            client.command(f"SET {_setting_name(name)} = DEFAULT")
            del applied[name]
        for name, value in settings.items():
            if applied.get(name) != value:
                client.command(f"SET {_setting_name(name)} = {sql_string(value)}")  # converted to its type
                applied[name] = value
        return client

    def may_write(self, user: str | None, password: str | None) -> bool:
        if user == ADMIN_USER:
            return hmac.compare_digest((password or "").encode(), self._admin_token.encode())
        return self.writable

    def authenticate(self, user: str | None, password: str | None) -> bool:
        """Anyone may read; the user ``admin`` must bring the right token."""
        return user != ADMIN_USER or self.may_write(user, password)


class _Handler(BaseHTTPRequestHandler):
    owner: SqlEndpoint
    protocol_version = "HTTP/1.1"
    server_version = "spendstream-sql"
    # headers and body go out in two writes: with Nagle's algorithm on, a kept-alive client's
    # delayed ACK held every answer back by about 40 ms
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("sql endpoint: " + format, *args)

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        try:
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
        except Exception as exc:
            self._reply(400, f"Code: 36. DB::Exception: {exc}. (BAD_ARGUMENTS)\n".encode(), code=36)
            return
        self._serve(body)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _credentials(self, params: dict[str, str]) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
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
        user, password = self._credentials(params)
        owner = self.owner
        if not owner.authenticate(user, password):
            self._reply(401, b"Code: 516. DB::Exception: admin: Authentication failed. (AUTHENTICATION_FAILED)\n", 516)
            return
        settings = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}
        writer = owner.may_write(user, password)
        query_id = params.get("query_id") or str(uuid.uuid4())
        if not query and body[:6].upper() == b"INSERT":
            # clickhouse-connect may send "INSERT INTO t (cols) FORMAT Native\n" and the data in one body
            head, _, rest = body.partition(b"\n")
            if _INSERT_WITH_DATA.match(head.decode(errors="replace")):
                query, body = head.decode(), rest
        try:
            client = owner.session(writer, settings)
            client.database = params.get("database") or owner.database
            insert = _INSERT_WITH_DATA.match(query) if query and body else None
            if insert is not None:
                if not writer:
                    raise PermissionError("Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)")
                columns = (
                    [c.strip(" `") for c in insert.group("columns").split(",")] if insert.group("columns") else None
                )
                client.raw_insert(insert.group("table"), columns, body, fmt=insert.group("fmt"))
                result, fmt = b"", "TabSeparated"
            else:
                sql = f"{query}\n{body.decode()}" if query and body else (query or body.decode())
                fmt = params.get("default_format", "TabSeparated")
                explicit = _HAS_FORMAT.search(sql)
                wants_rows = _RESULT_STATEMENT.match(sql) is not None and explicit is None
                parameters = {k[6:]: _unescape(v) for k, v in params.items() if k.startswith("param_")} or None
                result = client.raw_query(sql, parameters=parameters, fmt=fmt if wants_rows else None)
                if explicit is not None:
                    fmt = explicit.group().split()[1].rstrip(";")
        except Exception as exc:
            code = error_code(exc) or 1002
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not message.startswith("Code:"):
                message = f"Code: {code}. DB::Exception: {message}"
            self._reply(_HTTP_STATUS.get(code, 500), (message + "\n").encode(), code, query_id)
            return
        self._reply(200, result, None, query_id, fmt)

    def _reply(
        self, status: int, body: bytes, code: int | None = None, query_id: str = "", fmt: str = "TabSeparated"
    ) -> None:
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
        self.end_headers()
        self.wfile.write(body)
