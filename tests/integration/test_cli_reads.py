"""The commands that read go through the SQL endpoint's sandbox as a reader; `sql --admin` alone is unrestricted.

Real ``spendstream up`` (tansu broker, chDB); each command runs as a user would, in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import UpProcess, free_port

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def elsewhere(up: UpProcess) -> dict[str, str]:
    """``up``'s environment without SPENDSTREAM_HOME: a shell in another directory than the one ``up`` runs in."""
    return {name: value for name, value in up.env.items() if name != "SPENDSTREAM_HOME"}


def test_sql_reads_in_the_sandbox_and_only_admin_may_write(start_up: Callable[..., UpProcess]) -> None:
    up = start_up()
    for query, why in (
        ("DROP TABLE llm_calls", "readonly"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file"),
        ("SELECT 1; SELECT 2", "Multi-statements are not allowed"),
        ("SELECT 1 SETTINGS max_execution_time = 3600", "max_execution_time"),
    ):
        refused = cli(up.env, "sql", query)
        assert refused.returncode == 1 and why in refused.stderr, (query, refused.stderr)
        assert "root:" not in refused.stdout
    assert up.scalar("EXISTS TABLE llm_calls") == 1
    read = cli(up.env, "sql", "SELECT getSetting('readonly') AS ro, getSetting('max_execution_time') AS t")
    assert read.returncode == 0 and read.stderr == "" and "│  1 │ 30 │" in read.stdout, read
    assert cli(up.env, "sql", "SELECT 2 AS two;", "--format", "TSV").stdout == "2\n"  # a trailing ; is fine

    admin = cli(up.env, "sql", "--admin", "SELECT getSetting('readonly') FORMAT TSV")
    assert admin.returncode == 0 and admin.stdout == "0\n", admin
    assert len(admin.stderr.splitlines()) == 1 and "unrestricted" in admin.stderr


def test_sql_says_what_is_wrong_with_an_empty_query_or_an_unknown_format(start_up: Callable[..., UpProcess]) -> None:
    up = start_up()
    for empty in ("", "  ", ";"):
        said = cli(up.env, "sql", empty)
        assert said.returncode == 1 and "empty query" in said.stderr and "FORMAT" not in said.stderr, said
    said = cli(up.env, "sql", "SELECT 1", "--format", "Nope")
    assert said.returncode == 1 and len(said.stderr.splitlines()) == 1, said.stderr
    assert said.stderr.count("Code: 73") <= 1 and "Nope" in said.stderr and "system.formats" in said.stderr
    formatted = cli(up.env, "sql", "SELECT formatDateTime(toDate('2026-12-04'), '%F') AS day", "--format", "CSV")
    assert formatted.stdout == '"2026-12-04"\n', formatted  # a function named format... is no FORMAT clause


def test_reads_work_from_another_directory_and_leave_no_token_there(
    start_up: Callable[..., UpProcess], tmp_path: Path
) -> None:
    up = start_up()
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = elsewhere(up)
    for args in (("sql", "SELECT count() FROM llm_calls"), ("alerts",), ("alerts", "--raw"), ("report",)):
        done = cli(env, *args, cwd=other)
        assert done.returncode == 0, (args, done.stderr)
    missing = cli(env, "trace", "no-such-trace", cwd=other)
    assert missing.returncode == 1 and "has no stored root call" in missing.stderr, missing.stderr
    budgets = cli(env, "budgets", cwd=other)
    assert budgets.returncode == 0 and "month-end forecast of every real call: $" in budgets.stdout, budgets
    assert list(other.iterdir()) == []

    admin = cli(env, "sql", "--admin", "SELECT 1", cwd=other)
    assert admin.returncode == 1 and list(other.iterdir()) == []
    token = other / ".spendstream" / "sql-admin-token"
    assert str(token) in admin.stderr and "SPENDSTREAM_HOME" in admin.stderr, admin.stderr
    assert "directory `spendstream up` was started in" in admin.stderr


def test_a_stale_admin_token_names_its_file(start_up: Callable[..., UpProcess], tmp_path: Path) -> None:
    up = start_up()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "sql-admin-token").write_text("from-another-up")
    said = cli({**up.env, "SPENDSTREAM_HOME": str(stale)}, "sql", "--admin", "SELECT 1")
    assert said.returncode == 1 and str(stale / "sql-admin-token") in said.stderr, said.stderr
    assert "SPENDSTREAM_HOME" in said.stderr


def test_without_up_a_read_is_sandboxed_and_a_missing_home_is_named(
    start_up: Callable[..., UpProcess], tmp_path: Path
) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    env = {**os.environ, "SPENDSTREAM_SQL_PORT": str(free_port())}
    env.pop("SPENDSTREAM_HOME", None)
    said = cli(env, "sql", "SELECT 1", cwd=nowhere)
    assert said.returncode == 1 and str(nowhere / ".spendstream") in said.stderr, said.stderr
    assert "SPENDSTREAM_HOME" in said.stderr and list(nowhere.iterdir()) == []
    said = cli(env, "sql", "--admin", "SELECT 1", cwd=nowhere)  # no engine files are made up for it either
    assert said.returncode == 1 and str(nowhere / ".spendstream") in said.stderr, said.stderr
    assert list(nowhere.iterdir()) == []

    up = start_up()
    up.stop()  # its data stays in its home: read without it, through the same sandbox
    assert cli(up.env, "sql", "SELECT count() FROM llm_calls", "--format", "TSV").stdout == "0\n"
    refused = cli(up.env, "sql", "DROP TABLE llm_calls")
    assert refused.returncode == 1 and "readonly" in refused.stderr, refused.stderr
    assert cli(up.env, "sql", "EXISTS TABLE llm_calls", "--format", "TSV").stdout == "1\n"
