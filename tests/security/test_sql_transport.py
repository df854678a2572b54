"""The SQL endpoint's transport under a hostile client: results it would have to hold, requests that trickle in."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from spendstream.sql_endpoint import SqlEndpoint
from spendstream.sql_policy import QueryLimits
from tests.security.test_sql_endpoint import admin_headers, endpoint, make_endpoint, post

pytestmark = pytest.mark.integration

__all__ = ["endpoint", "make_endpoint"]  # fixtures, shared with test_sql_endpoint

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
    sql = f"SELECT number AS n, toString(number) AS s, 'c' AS k FROM numbers(10) FORMAT {fmt}"
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
        statistics = re.compile(r"\s*<statistics>.*</statistics>", re.DOTALL)
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
    assert len(rows) == 100_000 and rows[-1] == (99_999, "yyy")
