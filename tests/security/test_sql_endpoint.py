"""The SQL endpoint as an attacker on 127.0.0.1 sees it: no token, hostile queries and hostile requests."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.clickhouse import connect, sql_string
from sinks.migrations import migrate
from spendstream.sql_endpoint import ADMIN_USER, SqlEndpoint
from spendstream.sql_policy import QueryLimits

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def endpoint_database(chdb_dsn: str) -> str:
    """One migrated database, holding one call, for the module's endpoints (migrating takes seconds)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    client = connect(chdb_dsn)
    try:
        migrate(client, name)
        client.command(
            f"INSERT INTO {name}.llm_calls (event_id, ts, provider, model, kind, feature, data_mode, cost_usd, priced) "
            "VALUES ('a', now64(3), 'openai', 'gpt-4o', 'llm', 'f1', 'real', 1.25, 1)"
        )
    finally:
        client.close()
    return name


@pytest.fixture
def database(endpoint_database: str) -> str:
    """The module's database: no test here writes to ``llm_calls``, and none reads what another wrote."""
    return endpoint_database


@pytest.fixture
def make_endpoint(chdb_dsn: str, database: str) -> Iterator[Callable[..., SqlEndpoint]]:
    started: list[SqlEndpoint] = []

    def factory(**options: Any) -> SqlEndpoint:
        server = SqlEndpoint(lambda: connect(chdb_dsn), "127.0.0.1", 0, database, admin_token=TOKEN, **options)
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def endpoint(make_endpoint: Callable[..., SqlEndpoint]) -> SqlEndpoint:
    return make_endpoint()


def post(
    endpoint: SqlEndpoint,
    sql: str | bytes,
    params: str = "",
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=timeout)
    try:
        body = sql.encode() if isinstance(sql, str) else sql
        connection.request("POST", f"/?{params}", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def admin_headers() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{ADMIN_USER}:{TOKEN}".encode()).decode()}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "sql-admin-token"
    path.write_text("TOKEN-CANARY-7f3a")
    return path


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM file('{path}', 'LineAsString')",
        "SELECT file('{path}')",
        "SELECT FILE('{path}') AS x",
        "SELECT arrayMap(p -> file(p), ['{path}'])",
        "SELECT * FROM (SELECT 1) WHERE 1 IN (SELECT length(file('{path}')))",
        "WITH (SELECT file('{path}')) AS t SELECT t",
        "SELECT * FROM merge('system', '^processes$')",
        "SELECT 1; SELECT file('{path}')",
    ],
)
def test_no_query_reads_a_file_of_the_host(endpoint: SqlEndpoint, secret_file: Path, template: str) -> None:
    status, body = post(endpoint, template.format(path=secret_file))
    assert status in (400, 403), body
    assert "TOKEN-CANARY" not in body


def test_the_process_environment_and_etc_passwd_stay_unread(endpoint: SqlEndpoint) -> None:
    for path in ("/proc/self/environ", "/etc/passwd"):
        for sql in (f"SELECT * FROM file('{path}', 'RawBLOB')", f"SELECT file('{path}')"):
            status, body = post(endpoint, sql)
            assert status == 403 and "root:" not in body and "PATH=" not in body, (sql, body)


def test_no_query_writes_a_file(endpoint: SqlEndpoint, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    for sql in (
        f"SELECT 1 INTO OUTFILE '{target}'",
        f"SELECT 1 INTO OUTFILE '{target}' APPEND",
        f"SELECT 1 INTO OUTFILE '{target}' TRUNCATE FORMAT CSV",
        f"INSERT INTO FUNCTION file('{target}', 'CSV', 'a UInt8') SELECT 1",
    ):
        status, body = post(endpoint, sql)
        assert status == 403, (sql, body)
    assert not target.exists()


class _Recorder(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"inner\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_no_query_reaches_the_network(endpoint: SqlEndpoint) -> None:
    listener = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    port = listener.server_address[1]
    _Recorder.hits = []
    try:
        for sql in (
            f"SELECT * FROM url('http://127.0.0.1:{port}/x', 'LineAsString')",
            f"SELECT * FROM remote('127.0.0.1:{port}', system.one)",
            f"SELECT * FROM s3('http://127.0.0.1:{port}/bucket/key.csv', 'CSV')",
            f"SELECT * FROM mysql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
            f"SELECT * FROM postgresql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
            f"SELECT * FROM hdfs('hdfs://127.0.0.1:{port}/f', 'TSV', 'a String')",
            f"SELECT * FROM urlCluster('c', 'http://127.0.0.1:{port}/x', 'LineAsString')",
        ):
            status, body = post(endpoint, sql)
            assert status == 403 and "inner" not in body, (sql, body)
        time.sleep(0.3)
        assert _Recorder.hits == []
    finally:
        listener.shutdown()


@pytest.mark.parametrize(
    "sql",
    [
        "KILL QUERY WHERE 1",
        "SYSTEM STOP MERGES",
        "SYSTEM DROP DNS CACHE",
        "SET max_query_size = 100000000",
        "SELECT 1 SETTINGS max_execution_time = 3600",
        "SHOW PROCESSLIST",
        "SELECT query FROM system.processes",
        "SELECT * FROM system.query_log",
        "SELECT * FROM system.server_settings",
        "SELECT * FROM default.some_table",
        "USE system",
        "CREATE TABLE x (a UInt8) ENGINE = Memory",
        "DROP TABLE llm_calls",
        "SELECT dictGet('d', 'a', 1)",
        "SELECT hasColumnInTable('system', 'processes', 'query')",
        "SELECT 1; SYSTEM STOP MERGES",
    ],
)
def test_administration_and_other_tables_are_refused(endpoint: SqlEndpoint, sql: str) -> None:
    status, body = post(endpoint, sql)
    assert status in (403, 400), (sql, status, body)
    assert "DB::Exception" in body


def test_kill_and_system_are_refused_and_do_nothing(endpoint: SqlEndpoint) -> None:
    status, _ = post(endpoint, "SYSTEM STOP MERGES")
    assert status == 403
    status, body = post(endpoint, "KILL QUERY WHERE 1")
    assert status == 403 and "readonly" in body


def test_reads_of_its_own_tables_and_catalogue_still_work(endpoint: SqlEndpoint, database: str) -> None:
    assert post(endpoint, "SELECT feature, cost_usd FROM llm_calls") == (200, "f1\t1.25\n")
    assert post(endpoint, f"SELECT count() FROM {database}.llm_calls") == (200, "1\n")
    tables = f"SELECT name FROM system.tables WHERE database = '{database}' AND name = 'llm_calls'"
    status, body = post(endpoint, tables)
    assert (status, body) == (200, "llm_calls\n")
    assert post(endpoint, "SELECT count() > 0 FROM system.columns WHERE table = 'llm_calls'")[0] == 200
    assert post(endpoint, "SHOW TABLES")[0] == 200
    assert post(endpoint, "DESCRIBE TABLE llm_calls")[0] == 200
    assert post(endpoint, "EXISTS TABLE llm_calls") == (200, "1\n")
    assert post(endpoint, "WITH x AS (SELECT 2 AS v) SELECT v FROM x") == (200, "2\n")
    assert post(endpoint, "SELECT sum(number) FROM numbers(10)") == (200, "45\n")
    assert post(endpoint, "SELECT 'INTO OUTFILE file(x)' AS s") == (200, "INTO OUTFILE file(x)\n")
    assert post(endpoint, "SELECT {v:String} FORMAT TSVRaw", params="param_v=it%27s") == (200, "it's\n")
    status, body = post(endpoint, "SELECT 1", params="database=system")
    assert status == 403 and "system" in body


def test_clickhouse_connect_sees_the_refusal_as_a_database_error(endpoint: SqlEndpoint, database: str) -> None:
    reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
    assert reader.query("SELECT count() FROM llm_calls").result_rows == [(1,)]
    with pytest.raises(DatabaseError, match="file"):
        reader.query("SELECT file('/etc/passwd')")
    with pytest.raises(Exception, match="max_execution_time"):  # the client sees the session is read-only
        reader.query("SELECT 1", settings={"max_execution_time": 100_000})


def test_every_query_runs_under_the_limits_and_a_client_cannot_raise_them(
    make_endpoint: Callable[..., SqlEndpoint],
) -> None:
    limits = QueryLimits(max_execution_time_s=7, max_memory_bytes=300_000_000, max_rows_to_read=50_000_000)
    endpoint = make_endpoint(limits=limits)
    status, body = post(endpoint, "SELECT getSetting('max_execution_time'), getSetting('max_memory_usage')")
    assert (status, body) == (200, "7\t300000000\n")
    assert post(endpoint, "SELECT getSetting('readonly')") == (200, "1\n")
    started = time.monotonic()
    status, body = post(endpoint, "SELECT count() FROM numbers(1e12)")
    assert status == 413 and "TOO_MANY_ROWS" in body, body
    assert time.monotonic() - started < 5
    status, body = post(endpoint, "SELECT length(groupArray(number)) FROM numbers(4e7)")
    assert status == 507 and "MEMORY_LIMIT_EXCEEDED" in body, body
    for raised in ("max_execution_time=3600", "max_memory_usage=0", "max_rows_to_read=0", "max_query_size=1000000000"):
        status, body = post(endpoint, "SELECT 1", params=raised)
        assert status == 403 and raised.split("=")[0] in body, (raised, body)
    assert post(endpoint, "SELECT getSetting('max_execution_time')", params="max_execution_time=3") == (200, "3\n")
    assert post(endpoint, "SELECT getSetting('max_execution_time')", params="") == (200, "7\n")


def test_the_admin_is_not_sandboxed(endpoint: SqlEndpoint, database: str) -> None:
    assert post(endpoint, "SELECT getSetting('readonly')", headers=admin_headers()) == (200, "0\n")
    status, body = post(endpoint, "SELECT count() FROM system.processes", headers=admin_headers())
    assert status == 200, body


@pytest.mark.parametrize("open_files", [0, 1100])
def test_a_query_is_cancelled_when_its_client_goes(
    make_endpoint: Callable[..., SqlEndpoint], ch: Client, open_files: int
) -> None:
    """Also in a process holding many files (a long-lived one): its sockets are past descriptor 1024."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(open_files)]
    try:
        _cancelled_when_the_client_goes(make_endpoint, ch)
    finally:
        for fd in held:
            os.close(fd)


def _cancelled_when_the_client_goes(make_endpoint: Callable[..., SqlEndpoint], ch: Client) -> None:
    endpoint = make_endpoint(limits=QueryLimits(max_execution_time_s=120, max_rows_to_read=10**13))
    sock = socket.create_connection(("127.0.0.1", endpoint.port))
    query = urllib.parse.quote("SELECT count() FROM numbers(1e12) WHERE number % 7 = 3")
    sock.sendall(f"GET /?query={query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    running = "SELECT count() FROM system.processes WHERE query LIKE '%numbers(1e12)%' AND query NOT LIKE '%system.%'"
    deadline = time.monotonic() + 30
    while ch.command(running) == 0:
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.1)
    sock.close()
    deadline = time.monotonic() + 20  # it would run for hours: cancelled, not finished
    while ch.command(running) != 0:
        assert time.monotonic() < deadline, "the query ran on after its client left"
        time.sleep(0.1)


def test_a_compressed_body_is_bounded_after_decompression(endpoint: SqlEndpoint) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(1024)) + compressor.flush()  # 1 GiB inflated
    assert len(bomb) < 2 << 20
    rss_before = _peak_rss_bytes()
    started = time.monotonic()
    status, body = post(endpoint, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "SPENDSTREAM_SQL_MAX_BODY_BYTES" in body
    assert time.monotonic() - started < 5
    assert _peak_rss_bytes() - rss_before < 200 << 20  # never inflated to 1 GiB
    assert post(endpoint, gzip.compress(b"SELECT 3"), headers={"Content-Encoding": "gzip"}) == (200, "3\n")
    status, body = post(endpoint, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "decompress" in body


def test_a_body_over_the_limit_is_refused_unread(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(max_body_bytes=1000)
    status, body = post(endpoint, "SELECT '" + "x" * 2000 + "'")
    assert status == 413 and "1,000 bytes" in body
    assert post(endpoint, "SELECT 'small'") == (200, "small\n")


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_a_half_sent_request_is_dropped(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(request_timeout_s=1.0)
    for head in (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nSELECT",  # body never completes
        b"POST / HTTP/1.1\r\nHost: x\r\n",  # headers never complete
    ):
        sock = socket.create_connection(("127.0.0.1", endpoint.port))
        sock.settimeout(10)
        sock.sendall(head)
        started = time.monotonic()
        while sock.recv(65536):  # an answer, if any, then the close
            pass
        assert time.monotonic() - started < 5
        sock.close()
    assert post(endpoint, "SELECT 1") == (200, "1\n")


def test_a_malformed_basic_auth_header_gets_an_answer(endpoint: SqlEndpoint) -> None:
    for value in ("Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
        status, body = post(endpoint, "SELECT 1", headers={"Authorization": value})
        assert status == 400 and "Authorization" in body
    wrong = "Basic " + base64.b64encode(b"admin:no").decode()
    status, body = post(endpoint, "SELECT 1", headers={"Authorization": wrong})
    assert status == 401


def test_concurrent_queries_are_capped(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(max_concurrent_queries=1, request_timeout_s=1.0)
    results: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: results.append(post(endpoint, "SELECT sleep(2.5)")))
    slow.start()
    time.sleep(0.5)
    status, body = post(endpoint, "SELECT 1")
    slow.join()
    assert status == 503 and "TOO_MANY_SIMULTANEOUS_QUERIES" in body
    assert results == [(200, "0\n")]
    assert post(endpoint, "SELECT 1") == (200, "1\n")


def test_connections_are_capped(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(max_connections=3, request_timeout_s=5.0)
    idle = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(3)]
    deadline = time.monotonic() + 20
    status, body = post(endpoint, "SELECT 1")
    while status == 200 and time.monotonic() < deadline:  # until the server has taken the three idle ones
        time.sleep(0.2)
        status, body = post(endpoint, "SELECT 1")
    assert status == 503 and "connections" in body
    # a client still sending its body when the refusal comes reads the refusal, not a reset
    late = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
    late.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    time.sleep(0.5)  # the server has answered and closed its side by now
    late.sendall(b"SELECT 1")
    answer = b""
    while chunk := late.recv(65536):
        answer += chunk
    late.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    for sock in idle:
        sock.close()
    time.sleep(0.3)
    assert post(endpoint, "SELECT 1") == (200, "1\n")


def test_anonymous_writes_when_switched_on_stay_in_the_sandbox(
    make_endpoint: Callable[..., SqlEndpoint], database: str, tmp_path: Path
) -> None:
    endpoint = make_endpoint(writable=True)
    status, body = post(endpoint, "INSERT INTO outcomes (event_id, ts, outcome) VALUES ('o1', now64(3), 'won')")
    assert status == 200, body
    target = tmp_path / "w.csv"
    status, body = post(endpoint, f"INSERT INTO FUNCTION file('{target}', 'CSV', 'a UInt8') SELECT 1")
    assert status == 403 and not target.exists()
    status, body = post(endpoint, "INSERT INTO system.one SELECT 1")
    assert status == 403
    status, body = post(endpoint, "SELECT file('/etc/passwd')")
    assert status == 403


def test_the_server_policy_parses_and_holds_the_limits(ch: Client, tmp_path: Path) -> None:
    env = {**os.environ, "SPENDSTREAM_HOME": str(tmp_path), "SPENDSTREAM_SQL_MAX_EXECUTION_TIME_S": "12"}
    printed = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "migrate", "--print-reader-policy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    statements = [s.strip() for s in printed.split(";") if s.strip() and not s.strip().startswith("--")]
    for statement in statements:  # the engine's own parser accepts each (chDB refuses to run them: no users)
        formatted = ch.command(f"SELECT formatQuerySingleLine({sql_string(statement)})")
        assert isinstance(formatted, str) and formatted.split()[0] in ("CREATE", "GRANT")
    profile = statements[0]
    assert "max_execution_time = 12 MIN 1 MAX 12" in profile
    assert "GRANT SELECT ON spendstream.* TO spendstream_reader" in statements
    limits = re.findall(r"(\w+) = \d+ (MIN \d+ )?MAX", profile)
    assert len(limits) == 8 and all(minimum == "MIN 1 " for _, minimum in limits), limits  # 0 would be unlimited
    assert "GRANT SELECT ON system.functions TO spendstream_reader" in statements
    assert not any("system.processes" in s or "system.query_log" in s for s in statements)
    assert "select_from_system_db_requires_grant" in printed
    refused = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "migrate", "--apply-reader-policy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "SQL endpoint enforces" in refused.stderr


def test_spendstream_up_serves_the_sandbox_with_its_settings(start_up: Callable[..., Any]) -> None:
    up = start_up(SPENDSTREAM_SQL_MAX_EXECUTION_TIME_S="9")
    token_path = up.home / "sql-admin-token"
    reader = up.client()
    with pytest.raises(DatabaseError) as refused:
        reader.query(f"SELECT * FROM file('{token_path}', 'LineAsString')")
    assert token_path.read_text().strip() not in str(refused.value)
    with pytest.raises(DatabaseError):
        reader.query("SELECT * FROM file('/proc/self/environ', 'RawBLOB')")
    assert reader.query("SELECT getSetting('max_execution_time'), getSetting('readonly')").result_rows == [(9, 1)]
    assert up.scalar("SELECT count() FROM llm_calls") == 0


def test_a_query_allowed_once_is_checked_again_with_other_parameters(endpoint: SqlEndpoint) -> None:
    sql = "SELECT count() FROM {t:Identifier}"
    assert post(endpoint, sql, params="param_t=llm_calls") == (200, "1\n")
    assert post(endpoint, sql, params="param_t=llm_calls") == (200, "1\n")  # the second time from the cache
    status, body = post(endpoint, sql, params="param_t=system.processes")
    assert status == 403 and "system.processes" in body


def test_a_query_over_the_size_limit_is_refused_before_it_is_parsed(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(limits=QueryLimits(max_query_bytes=1000))
    status, body = post(endpoint, "SELECT '" + "x" * 5000 + "'")
    assert status == 403 and "5,009 bytes" in body and "max_query_size of 1,000" in body
    assert post(endpoint, "SELECT 'short'") == (200, "short\n")


_PASSWD_INJECTION = "x */ SELECT file('/etc/passwd') --"


@pytest.mark.parametrize(
    "params",
    [
        "query_id=" + urllib.parse.quote(_PASSWD_INJECTION),
        "query_id=" + urllib.parse.quote("x */ KILL QUERY WHERE 1 ASYNC --"),
        "query_id=" + urllib.parse.quote("a\r\nSet-Cookie: x=1"),
        "query_id=" + "q" * 129,
        "default_format=" + urllib.parse.quote("TSV; SELECT file('/etc/passwd')"),
        "default_format=NoSuchFormat",
    ],
)
@pytest.mark.parametrize("admin", [False, True])
def test_url_parameters_never_become_sql(endpoint: SqlEndpoint, params: str, admin: bool) -> None:
    """query_id and default_format are checked for every client; neither reaches the SQL text."""
    status, body = post(endpoint, "SELECT 1", params=params, headers=admin_headers() if admin else None)
    assert status == 400 and "root:" not in body, body
    assert ("query_id" if params.startswith("query_id") else "default_format") in body


def test_a_well_formed_query_id_and_format_still_work(endpoint: SqlEndpoint) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    connection.request("POST", "/?query_id=dash-board_42&default_format=JSONCompact", body=b"SELECT 1 AS x")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("X-ClickHouse-Query-Id") == "dash-board_42"
    assert json.loads(response.read())["data"] == [[1]]
    connection.close()


@pytest.mark.parametrize(
    "template",
    [
        "EXPLAIN SELECT 1 INTO OUTFILE '{target}'",
        "EXPLAIN AST SELECT 1 INTO OUTFILE '{target}'",
        "SHOW TABLES INTO OUTFILE '{target}'",
        "DESCRIBE TABLE llm_calls INTO OUTFILE '{target}' APPEND",
        "EXISTS TABLE llm_calls INTO OUTFILE '{target}' TRUNCATE",
        "SHOW CREATE TABLE llm_calls INTO OUTFILE '{target}'",
        "SELECT 1 INTO OUTFILE '{target}' AND STDOUT",
    ],
)
def test_no_statement_kind_writes_a_file(endpoint: SqlEndpoint, tmp_path: Path, template: str) -> None:
    target = tmp_path / "written.txt"
    status, body = post(endpoint, template.format(target=target))
    assert status == 403 and "OUTFILE" in body, body
    assert not target.exists()


def test_an_anonymous_insert_reads_no_file(make_endpoint: Callable[..., SqlEndpoint], secret_file: Path) -> None:
    endpoint = make_endpoint(writable=True)
    sql = f"INSERT INTO outcomes (event_id) FROM INFILE '{secret_file}' FORMAT LineAsString"
    status, body = post(endpoint, sql)
    assert status == 403 and "INFILE" in body, body


@pytest.mark.parametrize(
    "params",
    [
        "format_template_resultset={tpl}&format_template_row_format=" + urllib.parse.quote("${x:Raw}"),
        "format_template_row={tpl}",
        "format_schema=" + urllib.parse.quote("/etc/passwd:Msg"),
        "output_format_schema={out}",
        "format_schema_source=file",
        "input_format_max_rows_to_read_for_schema_inference=1",
        "output_format_some_future_setting=1",
    ],
)
def test_settings_that_name_files_or_are_not_listed_are_refused(
    endpoint: SqlEndpoint, secret_file: Path, tmp_path: Path, params: str
) -> None:
    out = tmp_path / "out.proto"
    sql = "SELECT 1 AS x FORMAT Template" if "template" in params else "SELECT 1 AS x FORMAT ProtobufSingle"
    status, body = post(endpoint, sql, params=params.format(tpl=secret_file, out=out))
    assert status == 403 and "is not allowed" in body and "TOKEN-CANARY" not in body, body
    assert not out.exists()


def test_output_settings_on_the_allow_list_still_work(endpoint: SqlEndpoint) -> None:
    params = "output_format_json_quote_64bit_integers=0&date_time_output_format=iso&format_csv_delimiter=%3B"
    assert post(endpoint, "SELECT 1, 2 FORMAT CSV", params=params) == (200, "1;2\n")


@pytest.mark.parametrize(
    "sql",
    [
        "SHOW MERGES",
        "SHOW CLUSTERS",
        "SHOW CLUSTER default",
        "SHOW DICTIONARIES",
        "SHOW FILESYSTEM CACHES",
        "SHOW INDEXES FROM system.processes",
        "SHOW COLUMNS FROM system.processes",
        "SHOW FULL COLUMNS FROM processes FROM system",
        "SHOW CREATE TABLE system.processes",
        "SHOW TABLES FROM default",
        "SELECT getOSKernelVersion()",
        "SELECT fullHostName()",
        "SELECT serverUUID()",
        "SELECT data_paths FROM system.tables",
        "SELECT t.metadata_path FROM system.tables AS t",
        "SELECT data_path FROM system.databases",
        "SELECT * FROM system.databases",
        "SELECT COLUMNS('path') FROM system.tables",
        "SELECT x FROM (SELECT * FROM system.tables) AS s",
        "SELECT * FROM system.build_options",
    ],
)
def test_host_details_and_other_system_tables_stay_hidden(endpoint: SqlEndpoint, sql: str) -> None:
    status, body = post(endpoint, sql)
    assert status == 403, (sql, status, body)
    assert "/" not in body.split("DB::Exception:")[0] and "DB::Exception" in body


def test_catalogue_reads_that_dashboards_send_still_work(endpoint: SqlEndpoint, database: str) -> None:
    for sql in (
        "SHOW DATABASES",
        "SHOW TABLES FROM system LIKE 'one'",
        f"SHOW TABLES FROM {database}",
        "SHOW COLUMNS FROM llm_calls",
        f"SHOW FULL COLUMNS FROM llm_calls FROM {database}",
        "SHOW INDEXES FROM llm_calls",
        "SHOW COLUMNS FROM system.tables",
        "SHOW CREATE TABLE llm_calls",
        "SHOW SETTINGS LIKE 'max_threads'",
        f"SELECT name, engine, total_rows FROM system.tables WHERE database = '{database}'",
        "SELECT name FROM system.databases",
        "SELECT version(), timezone()",
    ):
        status, body = post(endpoint, sql)
        assert status == 200, (sql, body)


def test_catalogue_reads_through_clickhouse_connect_still_work(endpoint: SqlEndpoint, database: str) -> None:
    """clickhouse-connect ends each query with FORMAT Native: that name is the output's, not a table's."""
    reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
    assert reader.command("EXISTS TABLE llm_calls") == 1
    assert reader.command(f"EXISTS TABLE {database}.llm_calls") == 1
    assert "llm_calls" in {row[0] for row in reader.query("SHOW TABLES").result_rows}
    assert "llm_calls" in {row[0] for row in reader.query(f"SHOW TABLES FROM {database}").result_rows}
    assert "cost_usd" in {row[0] for row in reader.query("DESCRIBE TABLE llm_calls").result_rows}
    with pytest.raises(DatabaseError, match="not readable here"):
        reader.command("EXISTS TABLE system.processes")


def test_a_path_column_named_by_a_query_parameter_is_refused(endpoint: SqlEndpoint) -> None:
    sql = "SELECT {c:Identifier} FROM system.tables LIMIT 1"
    assert post(endpoint, sql, params="param_c=name")[0] == 200
    status, body = post(endpoint, sql, params="param_c=data_paths")
    assert status == 403 and "data_paths" in body, body
