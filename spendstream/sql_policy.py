"""What the SQL endpoint lets a client who is not ``admin`` do: the sandbox of the read path.

chDB has no access control of its own (``CREATE USER`` and ``CREATE SETTINGS PROFILE`` are refused,
every query runs as ``default``), so the embedded endpoint is the one place to enforce it. Measured on
chDB 4.4: ``readonly = 1`` refuses table functions such as ``file()``, ``url()`` and ``remote()`` and any
change of a setting, but still runs the scalar ``file('/etc/passwd')``, ``KILL QUERY``, ``SYSTEM ...``
and ``SELECT ... INTO OUTFILE``. So a query is first parsed by the engine itself (``formatQuery``
refuses several statements, ``EXPLAIN AST`` shows the tree) and checked here against allow-lists:

- statements: reads only (``SELECT``, ``SHOW``, ``DESCRIBE``, ``EXISTS``, ``EXPLAIN``), plus ``INSERT``
  into spendstream's own tables when anonymous writes are switched on;
- tables: spendstream's database, ``information_schema`` and the system tables in :data:`SAFE_SYSTEM_TABLES`;
- table functions: the generators in :data:`SAFE_TABLE_FUNCTIONS`, nothing that reaches files, the
  network or other engines; scalar functions: none of :data:`HOST_FUNCTIONS`;
- no ``SETTINGS`` clause and no ``INTO OUTFILE``; settings come as URL parameters, from
  :data:`FORMAT_SETTINGS`, or as one of the limits lowered (:class:`QueryLimits`).

The same limits for a ClickHouse server are a settings profile and a role: :func:`server_policy_sql`.
"""

from __future__ import annotations

from dataclasses import dataclass

from spendstream.exceptions import QueryRefused

SAFE_SYSTEM_TABLES = frozenset(
    {
        "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "databases", "tables", "columns", "functions",
        "table_functions", "formats", "data_type_families", "time_zones", "settings", "table_engines",
        "aggregate_function_combinators", "keywords", "build_options", "collations",
    }
)  # fmt: skip
"""System tables a reader may query: what dashboards and clients read to find their way (no other
queries, no server paths, no logs)."""

SAFE_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries", "null", "view"}
)
"""Table functions that only generate rows (lower case); every other one is refused."""

HOST_FUNCTIONS = frozenset(
    {
        "file", "catboostevaluate", "getclienthttpheader", "getserversetting", "getmacro", "hascolumnintable",
        "joinget", "joingetornull", "generateserialid", "filesystemavailable", "filesystemcapacity",
        "filesystemunreserved", "hostname", "fqdn", "dictionary",
    }
)  # fmt: skip
"""Scalar functions (lower case) that read the host, other tables by name, or server configuration."""

FORMAT_SETTINGS = frozenset(
    {
        "max_block_size", "extremes", "totals_mode", "join_use_nulls", "session_timezone", "date_time_output_format",
        "date_time_input_format", "output_format_json_quote_64bit_integers", "prefer_column_name_to_alias",
        "union_default_mode", "aggregate_functions_null_for_empty", "transform_null_in", "insert_deduplicate",
        "cancel_http_readonly_queries_on_client_close", "http_zlib_compression_level",
        "result_overflow_mode", "timeout_overflow_mode", "read_overflow_mode",
    }
)  # fmt: skip
"""Settings a client may send that change how results look, never what may be read or how much."""
FORMAT_SETTING_PREFIXES = ("output_format_", "input_format_", "format_")
_OVERFLOW_MODES = frozenset({"throw", "break"})

_READ_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns", "ShowIndexes",
        "ShowCreateTableQuery", "ShowCreateDatabaseQuery", "ShowCreateViewQuery", "ShowFunctions",
        "ShowEngineQuery", "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery", "Explain",
    }
)  # fmt: skip
_WRITE_STATEMENTS = frozenset({"InsertQuery"})
_TABLE_FUNCTION_PARENTS = frozenset({"TableExpression", "InsertQuery"})
_SELECT_CHILDREN = frozenset({"ExpressionList", "Identifier"})  # a FORMAT is an Identifier; INTO OUTFILE a Literal


@dataclass(frozen=True)
class QueryLimits:
    """The limits every query of a client who is not ``admin`` runs under (ClickHouse settings)."""

    max_execution_time_s: int = 30
    """Seconds before a query is cancelled."""
    max_memory_bytes: int = 2 * 1024**3
    """Memory one query may take."""
    max_rows_to_read: int = 2_000_000_000
    """Rows one query may read from tables and generators."""
    max_result_rows: int = 5_000_000
    max_result_bytes: int = 256 * 1024**2
    max_query_bytes: int = 256 * 1024
    """The longest query text (ClickHouse's ``max_query_size``)."""
    max_threads: int = 2
    """Threads one query may use: ingestion keeps the rest of the machine."""

    def settings(self) -> dict[str, str]:
        """The ClickHouse settings that hold these limits."""
        return {
            "max_execution_time": str(self.max_execution_time_s),
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            "max_rows_to_read": str(self.max_rows_to_read),
            "read_overflow_mode": "throw",
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "max_query_size": str(self.max_query_bytes),
            "max_threads": str(self.max_threads),
            "allow_ddl": "0",
            "allow_introspection_functions": "0",
        }

    def ceilings(self) -> dict[str, int]:
        """The limit settings a client may lower, with the highest value it may ask for."""
        return {
            "max_execution_time": self.max_execution_time_s,
            "max_memory_usage": self.max_memory_bytes,
            "max_rows_to_read": self.max_rows_to_read,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "max_query_size": self.max_query_bytes,
            "max_threads": self.max_threads,
        }


def client_settings(requested: dict[str, str], limits: QueryLimits) -> dict[str, str]:
    """The settings a client who is not ``admin`` asked for, if it may have them.

    Raises:
        QueryRefused: a setting outside :data:`FORMAT_SETTINGS`, or a limit raised above its ceiling.
    """
    ceilings = limits.ceilings()
    allowed: dict[str, str] = {}
    for name, value in requested.items():
        if name in ceilings:
            if not value.isdigit() or not 0 < int(value) <= ceilings[name]:
                raise QueryRefused(
                    f"setting {name}={value!r} is above this endpoint's limit of {ceilings[name]}",
                    f"ask for a value from 1 to {ceilings[name]}, or have the operator raise "
                    f"the limit (SPENDSTREAM_SQL_* settings, see the README's security section)",
                )
        elif name.endswith("_overflow_mode"):
            if name not in FORMAT_SETTINGS or value not in _OVERFLOW_MODES:
                raise QueryRefused(f"setting {name}={value!r} is not allowed", "use throw or break")
        elif name not in FORMAT_SETTINGS and not name.startswith(FORMAT_SETTING_PREFIXES):
            raise QueryRefused(
                f"setting {name!r} is not allowed on this endpoint",
                "send only output-format settings (output_format_*, date_time_output_format, max_block_size, ...) "
                "or lower a limit (max_execution_time, max_result_rows, ...)",
            )
        allowed[name] = value
    return allowed


@dataclass(frozen=True, slots=True)
class _Node:
    depth: int
    kind: str
    name: str
    parent: str


def _nodes(ast: str) -> list[_Node]:
    """The lines of ``EXPLAIN AST`` as nodes: depth (one space each), type, first word after it, parent type."""
    nodes: list[_Node] = []
    stack: list[str] = []
    for line in ast.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        words = line.split()
        del stack[depth:]
        parent = stack[-1] if stack else ""
        nodes.append(_Node(depth, words[0], words[1] if len(words) > 1 else "", parent))
        stack.append(words[0])
    return nodes


def check_statement(ast: str, database: str, may_insert: bool) -> None:
    """Refuse a statement whose tree (``EXPLAIN AST``) leaves the sandbox.

    Args:
        ast: the engine's ``EXPLAIN AST`` of the one statement (after ``formatQuery`` accepted it).
        database: spendstream's database: the only one whose tables may be read (or written).
        may_insert: anonymous writes are switched on: ``INSERT`` into ``database`` is allowed too.

    Raises:
        QueryRefused: what is not allowed, and what is.
    """
    nodes = _nodes(ast)
    if not nodes:
        raise QueryRefused("the query is empty", "send one SELECT")
    root = nodes[0].kind
    statements = _READ_STATEMENTS | (_WRITE_STATEMENTS if may_insert else frozenset())
    if root not in statements:
        raise QueryRefused(
            f"Cannot execute query in readonly mode: {_statement_name(root)} is not allowed for you",
            "send SELECT, SHOW, DESCRIBE, EXISTS or EXPLAIN; administration goes through `spendstream` commands",
            code=164,
        )
    for node in nodes:
        if node.kind == "Set":
            raise QueryRefused(
                "a SETTINGS clause is not allowed here", "send settings as URL parameters (?max_result_rows=1000)"
            )
        if node.parent == "SelectWithUnionQuery" and node.kind not in _SELECT_CHILDREN:
            raise QueryRefused("INTO OUTFILE is not allowed: results go back to you", "drop INTO OUTFILE")
        if node.kind == "Function":
            name = node.name.lower()
            if node.parent in _TABLE_FUNCTION_PARENTS:
                if name not in SAFE_TABLE_FUNCTIONS:
                    raise QueryRefused(
                        f"the table function {node.name}() is not allowed: it reaches files, the network or "
                        "other tables",
                        f"read spendstream's tables; generators allowed: {', '.join(sorted(SAFE_TABLE_FUNCTIONS))}",
                    )
            elif name in HOST_FUNCTIONS or name.startswith("dict"):
                raise QueryRefused(
                    f"the function {node.name}() is not allowed: it reads the host or other tables", "leave it out"
                )
        elif node.kind == "TableIdentifier":
            _check_table(node.name, database, write=False)
    target = [node.name for node in nodes if node.kind == "Identifier" and node.parent == "InsertQuery"]
    if len(target) == 2:  # INSERT INTO db.table: the database and the table, one node each
        _check_table(".".join(target), database, write=True)


def _check_table(name: str, database: str, write: bool) -> None:
    schema, dot, table = name.partition(".")
    if not dot:
        return  # spendstream's own (the request's database is always it) or a WITH name
    if schema == database or (not write and schema.lower() == "information_schema"):
        return
    if not write and schema == "system" and table in SAFE_SYSTEM_TABLES:
        return
    raise QueryRefused(
        f"the table {name} is not readable here",
        f"read the tables of {database}, information_schema, or system.{{{', '.join(sorted(SAFE_SYSTEM_TABLES))}}}",
    )


def _statement_name(kind: str) -> str:
    return kind.removesuffix("Query") or kind


def server_policy_sql(
    database: str, limits: QueryLimits, max_concurrent_queries: int, role: str = "spendstream_reader"
) -> list[str]:
    """The same sandbox on a ClickHouse server: a settings profile with the limits as ceilings, and a
    role that may read spendstream's database and nothing else (no FILE, URL, REMOTE, S3 ... grants,
    so table functions that reach them are refused by the server itself)."""
    ceilings = limits.ceilings()
    profile_settings = [f"{name} = {value} MAX {value}" for name, value in ceilings.items()]
    profile_settings += [
        "readonly = 2",
        "allow_ddl = 0 CONST",
        "allow_introspection_functions = 0 CONST",
        "cancel_http_readonly_queries_on_client_close = 1",
        f"max_concurrent_queries_for_user = {max_concurrent_queries} MAX {max_concurrent_queries}",
    ]
    return [
        f"CREATE SETTINGS PROFILE IF NOT EXISTS {role} SETTINGS " + ", ".join(profile_settings),
        f"CREATE ROLE IF NOT EXISTS {role} SETTINGS PROFILE '{role}'",
        f"GRANT SELECT ON {database}.* TO {role}",
    ]
