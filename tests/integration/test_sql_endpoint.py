from __future__ import annotations

import base64
import http.client
import subprocess
import urllib.parse
from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.clickhouse import connect
from sinks.migrations import migrate
from spendstream.sql_endpoint import ADMIN_USER, SqlEndpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint(chdb_dsn: str, ch: Client, database: str) -> Iterator[SqlEndpoint]:
    migrate(ch, database)
    ch.command(
        f"INSERT INTO {database}.llm_calls (event_id, ts, provider, model, kind, feature, data_mode, cost_usd, priced) "
        "VALUES ('a', now64(3), 'openai', 'gpt-4o', 'llm', 'f1', 'real', 1.25, 1)"
    )
    server = SqlEndpoint(lambda: connect(chdb_dsn), "127.0.0.1", 0, database, admin_token="s3cret")
    server.start()
    yield server
    server.stop()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)


def test_answers_curl_get_and_post_with_formats(endpoint: SqlEndpoint) -> None:
    query = urllib.parse.quote("SELECT feature, cost_usd FROM llm_calls")
    got = curl(f"{endpoint.url}/?query={query}")
    assert got.stdout == "f1\t1.25\n\n200"
    got = curl(f"{endpoint.url}/?default_format=JSONEachRow", "--data-binary", "SELECT count() AS n FROM llm_calls")
    assert got.stdout == '{"n":1}\n\n200'
    got = curl(f"{endpoint.url}/", "--data-binary", "SELECT 2 AS two FORMAT CSVWithNames")
    assert got.stdout == '"two"\n2\n\n200'


def test_is_read_only_for_anonymous_clients_and_says_so(endpoint: SqlEndpoint) -> None:
    got = curl(f"{endpoint.url}/", "--data-binary", "DROP TABLE llm_calls")
    body, status = got.stdout.rsplit("\n", 1)
    assert status == "403" and "readonly" in body
    got = curl(f"{endpoint.url}/", "--data-binary", "SELECT * FROM no_such_table")
    assert got.stdout.endswith("404") and "UNKNOWN_TABLE" in got.stdout


def test_clickhouse_connect_http_client_queries_and_admin_inserts(endpoint: SqlEndpoint, database: str) -> None:
    reader = clickhouse_connect.get_client(host="127.0.0.1", port=endpoint.port, database=database)
    assert reader.query("SELECT sum(cost_usd) FROM llm_calls").result_rows == [(1.25,)]
    assert reader.query("SELECT {f:String}", parameters={"f": "it's"}).result_rows == [("it's",)]
    with pytest.raises(DatabaseError, match="164"):
        reader.insert(
            "rejected_events",
            [["t", 0, 1, "x", "y", "", b""]],
            column_names=["topic", "partition", "offset", "error_kind", "reason", "event_id", "raw"],
        )
    admin = clickhouse_connect.get_client(
        host="127.0.0.1", port=endpoint.port, database=database, username=ADMIN_USER, password="s3cret"
    )
    admin.insert(
        "rejected_events",
        [["t", 0, 1, "schema", "bad", "", b"{}"]],
        column_names=["topic", "partition", "offset", "error_kind", "reason", "event_id", "raw"],
    )
    assert reader.query("SELECT reason FROM rejected_events").result_rows == [("bad",)]
    with pytest.raises(DatabaseError, match="516"):
        clickhouse_connect.get_client(
            host="127.0.0.1", port=endpoint.port, database=database, username=ADMIN_USER, password="wrong"
        )


def test_a_requests_settings_apply_to_it_alone_on_a_kept_alive_connection(endpoint: SqlEndpoint) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)

    def ask(params: str) -> tuple[int, str]:
        connection.request("POST", f"/?{params}", body=b"SELECT getSetting('max_block_size')")
        response = connection.getresponse()
        return response.status, response.read().decode().strip()

    default = ask("")
    assert default[0] == 200 and default[1] != "1234"
    assert ask("max_block_size=1234") == (200, "1234")
    assert ask("max_block_size=1234") == (200, "1234")
    assert ask("") == default  # the next request on the same connection is back to the default
    status, body = ask("no_such_setting=1")  # not on the allow-list of anonymous clients
    assert status == 403 and "no_such_setting" in body
    status, body = ask(urllib.parse.urlencode({"max block size": "1"}))
    assert status == 403 and "max block size" in body
    assert ask("max_block_size=77") == (200, "77")
    admin = base64.b64encode(f"{ADMIN_USER}:s3cret".encode()).decode()
    connection.request("POST", "/?no_such_setting=1", body=b"SELECT 1", headers={"Authorization": f"Basic {admin}"})
    response = connection.getresponse()
    assert (response.status, b"UNKNOWN_SETTING" in response.read()) == (400, True)
    connection.close()
