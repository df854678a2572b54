"""The SQL endpoint's transport under a hostile client: results it would have to hold, requests that trickle in."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from sinks.clickhouse import connect
from spendstream.sql_endpoint import SqlEndpoint
from spendstream.sql_policy import QueryLimits
from tests.security.test_sql_endpoint import admin_headers, database, endpoint, endpoint_database, make_endpoint, post

pytestmark = pytest.mark.integration

__all__ = ["database", "endpoint", "endpoint_database", "make_endpoint"]  # fixtures, shared with test_sql_endpoint

AUDIT_QUERY = "SELECT repeat('x', 1000) AS s FROM numbers(4000000)"
"""4 GB as sent, but one value per block as ClickHouse counts a result's bytes (a constant column)."""


def _rss_bytes(kind: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {kind} in /proc/self/status")


def test_a_result_of_constant_columns_is_held_to_the_limit(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(limits=QueryLimits(max_result_bytes=16 * 1024**2))
    peak_before = _rss_bytes("VmHWM")
    started = time.monotonic()
    status, body = post(endpoint, AUDIT_QUERY + " FORMAT TSV")
    assert status == 413, (status, len(body))
    assert "max_result_bytes of 16,777,216 bytes" in body and "SPENDSTREAM_SQL_MAX_RESULT_BYTES" in body
    assert time.monotonic() - started < 10
    # the endpoint held 16 MiB of it; the engine one block of 65,409 rows as it wrote it out
    assert _rss_bytes("VmHWM") - peak_before < 512 * 1024**2
    assert post(endpoint, "SELECT repeat('x', 10) FROM numbers(2) FORMAT TSV") == (200, "xxxxxxxxxx\n" * 2)


@pytest.mark.parametrize("fmt", ["JSON", "PrettyCompact", "TSVWithNames", "Parquet", "Native", "CSV", "JSONEachRow"])
def test_the_limit_holds_in_every_format(make_endpoint: Callable[..., SqlEndpoint], fmt: str) -> None:
    endpoint = make_endpoint(limits=QueryLimits(max_result_bytes=4 * 1024**2))
    status, body = post(
        endpoint,
        "SELECT repeat('x', 1000) AS s, toLowCardinality(s) AS c FROM numbers(100000)",
        f"default_format={fmt}",
    )
    assert status == 413 and "max_result_bytes" in body, (status, body[:300])
    status, body = post(endpoint, f"SELECT repeat('x', 1000) AS s FROM numbers(100000) FORMAT {fmt}")
    assert status == 413 and "max_result_bytes" in body, (status, body[:300])


@pytest.mark.parametrize(
    "fmt", ["JSON", "JSONCompact", "PrettyCompactMonoBlock", "TSVWithNamesAndTypes", "CSV", "Values", "XML"]
)
def test_results_under_the_limit_read_as_the_admin_reads_them(endpoint: SqlEndpoint, fmt: str) -> None:
    """Several blocks (max_block_size=3) in formats with a header or a footer, written whole."""
    # ORDER BY: the blocks of two threads come in any order, in either run
    sql = f"SELECT number AS n, toString(number) AS s, 'c' AS k FROM numbers(10) ORDER BY n FORMAT {fmt}"
    status, body = post(endpoint, sql, "max_block_size=3&output_format_json_quote_64bit_integers=0")
    assert status == 200, body
    admin = post(endpoint, sql, "max_block_size=3&output_format_json_quote_64bit_integers=0", headers=admin_headers())
    if fmt.startswith("JSON"):  # the statistics (time, rows read) are not the same run's
        mine, theirs = json.loads(body), json.loads(admin[1])
        for document in (mine, theirs):
            document.pop("statistics")
            document.pop("rows_before_limit_at_least", None)
        assert mine == theirs
    else:
        # the statistics are not the same run's; rows_before_limit_at_least comes and goes with the pipeline
        statistics = re.compile(
            r"\s*<statistics>.*</statistics>|\s*<rows_before_limit_at_least>\d+</rows_before_limit_at_least>", re.DOTALL
        )
        assert (status, statistics.sub("", body)) == (admin[0], statistics.sub("", admin[1]))


def test_a_client_lowers_the_limit_for_its_own_query(endpoint: SqlEndpoint) -> None:
    status, body = post(endpoint, "SELECT repeat('x', 1000) FROM numbers(2000)", "max_result_bytes=100000")
    assert status == 413 and "100,000 bytes" in body
    assert post(endpoint, "SELECT repeat('x', 1000) FROM numbers(20)", "max_result_bytes=100000")[0] == 200


def test_clickhouse_connect_is_told_the_limit(make_endpoint: Callable[..., SqlEndpoint], database: str) -> None:
    endpoint = make_endpoint(limits=QueryLimits(max_result_bytes=8 * 1024**2))
    reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
    with pytest.raises(DatabaseError, match="max_result_bytes"):
        reader.query(AUDIT_QUERY)
    assert reader.query("SELECT count() FROM llm_calls").result_rows == [(1,)]
    rows = reader.query("SELECT number, repeat('y', 3) FROM numbers(100000)").result_rows
    assert len(rows) == 100_000 and max(rows) == (99_999, "yyy")  # blocks of two threads: any order


class Trickler:
    """A client that sends its request a byte at a time, every ``every_s``, until the server closes."""

    def __init__(self, host: str, port: int, head: bytes, every_s: float = 0.3) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.sendall(head)
        self.answer = b""
        self.closed_after: float | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._every_s = every_s
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._trickle, daemon=True).start()

    def _trickle(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.sock.send(b"X")
            except OSError:
                return

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except OSError:
            pass
        self.closed_after = time.monotonic() - self._started
        self._stop.set()

    def wait_closed(self, timeout: float) -> float | None:
        self._reader.join(timeout)
        return self.closed_after

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /?query=SELECT%201 HTTP/1.1\r\nX-Slow: ",  # headers that never end
        b"G",  # a request line that never ends
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nSELECT ",  # a body that never ends
    ],
)
def test_a_trickled_request_is_cut_at_its_deadline(make_endpoint: Callable[..., SqlEndpoint], head: bytes) -> None:
    endpoint = make_endpoint(request_timeout_s=2.0)
    client = Trickler("127.0.0.1", endpoint.port, head)
    try:
        closed_after = client.wait_closed(timeout=8)
        assert closed_after is not None, "a byte every 0.3 s held the request open past its 2 s deadline"
        assert 1.5 < closed_after < 4.5
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer
        assert b"within 2 s" in client.answer and b"SPENDSTREAM_SQL_REQUEST_TIMEOUT_S" in client.answer
    finally:
        client.close()
    assert post(endpoint, "SELECT 1") == (200, "1\n")


def test_a_request_arriving_in_time_is_served_and_kept_alive(make_endpoint: Callable[..., SqlEndpoint]) -> None:
    endpoint = make_endpoint(request_timeout_s=2.0)
    sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
    with sock:
        for _ in range(2):  # a kept-alive connection: each request has its own deadline
            for part in (b"GET /?query=SELECT%207 HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                sock.sendall(part)
                time.sleep(0.5)
            answer = b""
            while not answer.endswith(b"\r\n\r\n7\n"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # idle time is not arrival time: the second request has 2 s again


def test_a_query_answers_while_trickling_clients_hold_every_connection(
    make_endpoint: Callable[..., SqlEndpoint], database: str
) -> None:
    endpoint = make_endpoint(request_timeout_s=2.0, max_connections=4)
    held = [Trickler("127.0.0.1", endpoint.port, b"GET /?query=SELECT%201 HTTP/1.1\r\nX: ") for _ in range(4)]
    try:
        answered_after = None
        started = time.monotonic()
        while time.monotonic() - started < 8:
            try:
                reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
                assert reader.query("SELECT count() FROM llm_calls").result_rows == [(1,)]
                answered_after = time.monotonic() - started
                break
            except (DatabaseError, OperationalError):  # 503 while the tricklers hold every connection
                time.sleep(0.2)
        assert answered_after is not None, "tricklers held every connection for 8 s"
        assert answered_after < 4
    finally:
        for client in held:
            client.close()


def _other_address() -> str | None:
    """An address of this host other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # no packet is sent: only picks the outgoing address
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_one_address_cannot_take_every_connection(
    chdb_dsn: str, make_endpoint: Callable[..., SqlEndpoint], database: str
) -> None:
    address = _other_address()
    if address is None:
        pytest.skip("this host has no address other than loopback")
    make_endpoint()  # the database with its tables
    endpoint = SqlEndpoint(
        lambda: connect(chdb_dsn), "0.0.0.0", 0, database, admin_token="t", request_timeout_s=30, max_connections=6
    )
    endpoint.start()
    held = [Trickler(address, endpoint.port, b"GET /?query=SELECT%201 HTTP/1.1\r\nX: ") for _ in range(6)]
    try:
        deadline = time.monotonic() + 10
        refused = [client for client in held if client.wait_closed(0.1) is not None]
        while len(refused) < 3 and time.monotonic() < deadline:
            refused = [client for client in held if client.wait_closed(0.1) is not None]
        assert len(refused) == 3, "one address took more than half the connections"
        assert all(b"503" in c.answer and b"SPENDSTREAM_SQL_MAX_CONNECTIONS_PER_CLIENT" in c.answer for c in refused)
        reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
        assert reader.query("SELECT count() FROM llm_calls").result_rows == [(1,)]  # while three are held
    finally:
        for client in held:
            client.close()
        endpoint.stop()


def test_spendstream_up_takes_the_query_size_and_connection_limits_from_its_settings(
    start_up: Callable[..., Any],
) -> None:
    up = start_up(SPENDSTREAM_SQL_MAX_QUERY_BYTES="2000", SPENDSTREAM_SQL_MAX_CONNECTIONS="3")
    reader = up.client()
    with pytest.raises(DatabaseError) as refused:
        reader.query("SELECT '" + "x" * 5000 + "'")
    assert "max_query_size of 2,000" in str(refused.value) and "SPENDSTREAM_SQL_MAX_QUERY_BYTES" in str(refused.value)
    assert reader.query("SELECT getSetting('max_query_size')").result_rows == [(2000,)]
    reader.close()
    idle = [socket.create_connection(("127.0.0.1", up.sql_port)) for _ in range(3)]
    try:
        time.sleep(0.5)  # the server has taken them
        with socket.create_connection(("127.0.0.1", up.sql_port), timeout=10) as late:
            late.sendall(b"GET /?query=SELECT%201 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert late.recv(65536).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()


def test_a_format_named_in_the_url_runs_nothing_more(endpoint: SqlEndpoint, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("FORMAT-CANARY")
    for fmt in ("JSON; SELECT file('{path}')", "Pretty SELECT file('{path}')", "JSON\nSELECT 1"):
        status, body = post(endpoint, "SELECT 1", "default_format=" + urllib.parse.quote(fmt.format(path=secret)))
        assert status == 400 and "FORMAT-CANARY" not in body, (fmt, status, body)


@pytest.mark.parametrize("fmt", ["JSON", "PrettyCompactMonoBlock", "TSVWithNames", "CSV"])
def test_an_empty_result_reads_as_the_admin_reads_it(endpoint: SqlEndpoint, fmt: str) -> None:
    sql = f"SELECT feature, cost_usd FROM llm_calls WHERE feature = 'none' FORMAT {fmt}"
    status, body = post(endpoint, sql)
    admin = post(endpoint, sql, headers=admin_headers())
    if fmt == "JSON":
        mine, theirs = json.loads(body), json.loads(admin[1])
        for document in (mine, theirs):
            document.pop("statistics")
            document.pop("rows_before_limit_at_least", None)
        assert (status, mine) == (admin[0], theirs)
    else:
        assert (status, body) == admin
