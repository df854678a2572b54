from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from sinks.migrations import SQL_DIR, discover, migrate

pytestmark = pytest.mark.integration


def test_applies_every_file_once(ch: Client, database: str) -> None:
    applied = migrate(ch, database)
    assert [m.name for m in applied] == [m.name for m in discover()]
    assert migrate(ch, database) == []
    tables = {r[0] for r in ch.query(f"SHOW TABLES FROM {database}").result_rows}
    assert {
        "llm_calls",
        "rejected_events",
        "rollup_minute",
        "rollup_hour",
        "rollup_day",
        "trace_rollup",
    } <= tables


def test_every_statement_applied_again_changes_nothing(ch: Client, database: str) -> None:
    """A file interrupted half way is applied again from its first statement: each must be idempotent."""
    migrate(ch, database)

    def schema() -> list[tuple[str, str]]:
        return [
            (row[0], row[1])
            for row in ch.query(
                "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} ORDER BY name",
                parameters={"db": database},
            ).result_rows
        ]

    before = schema()
    ch.database = database
    for migration in discover():
        for statement in migration.statements():
            ch.command(statement)
    assert schema() == before


def test_every_view_selects_its_target_columns_in_order(ch: Client, database: str) -> None:
    migrate(ch, database)
    views = ch.query(
        "SELECT name, as_select, create_table_query FROM system.tables "
        "WHERE database = {db:String} AND engine = 'MaterializedView'",
        parameters={"db": database},
    ).result_rows
    assert len(views) == 5
    for name, as_select, create in views:
        target = create.split(" TO ", 1)[1].split()[0]
        selected = [r[0] for r in ch.query(f"DESCRIBE ({as_select})").result_rows]
        stored = [r[0] for r in ch.query(f"DESCRIBE {target}").result_rows]
        assert selected == stored, name


def test_a_migration_that_adds_a_rollup_backfills_it(ch: Client, database: str, tmp_path) -> None:
    first_two = tmp_path / "sql"
    first_two.mkdir()
    for migration in discover()[:2]:
        (first_two / migration.name).write_text(migration.text)
    migrate(ch, database, first_two)
    ch.command(
        f"INSERT INTO {database}.llm_calls (event_id, ts, provider, model, kind, feature, data_mode, cost_usd, priced) "
        "VALUES ('a', now64(3), 'openai', 'gpt-4o', 'llm', 'f1', 'real', 1.5, 1), "
        "('b', now64(3), 'openai', 'gpt-4o', 'llm', 'f1', 'real', 2.5, 1)"
    )
    migrate(ch, database)  # adds the rollups, which must see the two calls already stored
    spend = ch.query(
        f"SELECT sum(cost_usd), sum(calls) FROM {database}.rollup_day WHERE dimension = 'feature' AND key = 'f1'"
    ).result_rows[0]
    assert spend == (4.0, 2)


def test_example_queries_run(ch: Client, database: str) -> None:
    migrate(ch, database)
    ch.database = database
    text = (SQL_DIR / "queries" / "examples.sql").read_text()
    queries = [q.strip() for q in text.split(";") if "SELECT" in q]
    assert len(queries) >= 8
    for query in queries:
        ch.query(query)
