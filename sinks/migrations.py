"""The migration runner: applies the numbered files of ``sql/`` once each, in order, to one database.

Each file holds one change, idempotent (``IF NOT EXISTS``). A line ``-- spendstream:backfill VIEW``
fills the view's target table from the data already stored, because a materialized view only sees
rows inserted after it was created.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from sinks.clickhouse import classify
from sinks.exceptions import MigrationError

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_BACKFILL = re.compile(r"^--\s*spendstream:backfill\s+(\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        """The SQL statements of the file, split on ``;`` at the end of a line, comments dropped."""
        body = "\n".join(line for line in self.text.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]

    def backfills(self) -> list[str]:
        return _BACKFILL.findall(self.text)


def discover(directory: Path = SQL_DIR) -> list[Migration]:
    """The migration files of ``directory``, ordered; refuses duplicate numbers."""
    if not directory.is_dir():
        raise MigrationError(str(directory), "", FileNotFoundError("the sql/ folder is missing from the install"))
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                path.name, "", ValueError(f"number {version:04d} is used by {found[version].name} too")
            )
        found[version] = Migration(version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


def applied_versions(client: Client, database: str) -> set[int]:
    client.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    rows = client.query(f"SELECT version FROM `{database}`.schema_migrations FINAL").result_rows
    return {int(r[0]) for r in rows}


def view_definition(client: Client, database: str, view: str) -> tuple[str, str] | None:
    """A materialized view's SELECT and its CREATE statement, or None when there is no such view."""
    rows = client.query(
        "SELECT as_select, create_table_query FROM system.tables WHERE database = {db:String} AND name = {v:String}",
        parameters={"db": database, "v": view},
    ).result_rows
    return (rows[0][0], rows[0][1]) if rows else None


def backfill(client: Client, database: str, view: str) -> int:
    """Insert into ``view``'s target table what its query gives over the rows already stored."""
    definition = view_definition(client, database, view)
    if definition is None:
        raise MigrationError(view, "backfill", LookupError(f"no materialized view {view} in {database}"))
    as_select, create = definition
    target = re.search(r"\bTO\s+(`?[\w.]+`?(?:\.`?\w+`?)?)", create)
    if target is None:
        raise MigrationError(view, "backfill", LookupError(f"{view} has no TO table"))
    before = client.query(f"SELECT count() FROM {target.group(1)}").result_rows[0][0]
    client.command(f"INSERT INTO {target.group(1)} {as_select}")
    after = client.query(f"SELECT count() FROM {target.group(1)}").result_rows[0][0]
    return int(after) - int(before)


def migrate(
    client: Client,
    database: str,
    directory: Path = SQL_DIR,
    on_applied: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Create ``database`` if needed and apply the migrations it has not seen; return those applied.

    Raises:
        MigrationError: naming the file and statement that failed; earlier files stay applied.
    """
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.database = database  # the files name their tables unqualified
    done = applied_versions(client, database)
    applied = []
    for migration in discover(directory):
        if migration.version in done:
            continue
        for statement in migration.statements():
            try:
                client.command(statement)
            except Exception as exc:
                raise MigrationError(migration.name, statement, classify("migration", exc)) from exc
        for view in migration.backfills():
            try:
                added = backfill(client, database, view)
            except MigrationError:
                raise
            except Exception as exc:
                raise MigrationError(migration.name, f"backfill {view}", classify("backfill", exc)) from exc
            if added:
                logger.info("%s: backfilled %d rows through %s", migration.name, added, view)
        client.insert(
            f"`{database}`.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
        if on_applied is not None:
            on_applied(migration)
    return applied
