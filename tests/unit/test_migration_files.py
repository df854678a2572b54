"""The sql/ folder stays honest: numbered once each, idempotent, views writing TO a table."""

from __future__ import annotations

import re

from sinks.migrations import SQL_DIR, discover


def test_numbers_are_unique_and_contiguous() -> None:
    versions = [m.version for m in discover()]
    assert versions == list(range(1, len(versions) + 1))


def test_every_statement_is_idempotent() -> None:
    for migration in discover():
        for statement in migration.statements():
            upper = " ".join(statement.upper().split())
            if upper.startswith("CREATE"):
                assert "IF NOT EXISTS" in upper, f"{migration.name}: {statement[:60]}"
            if upper.startswith("DROP"):
                assert upper.startswith(("DROP VIEW IF EXISTS", "DROP TABLE IF EXISTS")), f"{migration.name}: {upper}"
            for change in re.findall(r"\b(?:ADD|DROP) (?:COLUMN|INDEX) (?:IF (?:NOT )?EXISTS )?", upper):
                assert "EXISTS" in change, f"{migration.name}: {change}... in {statement[:60]}"
            assert not upper.startswith(("RENAME", "EXCHANGE")), f"{migration.name}: not idempotent: {statement[:60]}"


def test_every_materialized_view_has_a_to_table_and_a_backfill() -> None:
    for migration in discover():
        for statement in migration.statements():
            view = re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+)", statement)
            if statement.startswith("CREATE MATERIALIZED VIEW"):
                assert view is not None, f"{migration.name}: a view needs an explicit TO table"
                assert view.group(1) in migration.backfills(), f"{migration.name}: backfill {view.group(1)}"


def test_examples_file_documents_queries() -> None:
    assert (SQL_DIR / "queries" / "examples.sql").read_text().count("-- Q:") >= 5
