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

import re
from dataclasses import dataclass

from spendstream.exceptions import QueryRefused

SAFE_SYSTEM_TABLES = frozenset(
    {
        "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "databases", "tables", "columns", "functions",
        "table_functions", "formats", "data_type_families", "time_zones", "settings", "table_engines",
        "aggregate_function_combinators", "keywords", "collations",
    }
)  # fmt: skip
"""System tables a reader may query: what dashboards and clients read to find their way (no other
queries, no logs, no build details; the server paths in ``tables`` and ``databases`` are
:data:`PATH_COLUMNS`)."""

PATH_COLUMNS = frozenset({"data_path", "data_paths", "metadata_path"})
"""Columns of ``system.tables`` and ``system.databases`` that hold paths on the host (they show
``SPENDSTREAM_HOME``, where the admin token lives): a query of those tables must name its columns."""
_PATH_TABLES = frozenset({"system.tables", "system.databases"})
_ALL_COLUMNS = frozenset({"Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher", "QualifiedColumnsRegexpMatcher"})

SAFE_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries", "null", "view"}
)
"""Table functions that only generate rows (lower case); every other one is refused."""

HOST_FUNCTIONS = frozenset(
    {
        "file", "catboostevaluate", "getclienthttpheader", "getserversetting", "getmacro", "hascolumnintable",
        "joinget", "joingetornull", "generateserialid", "filesystemavailable", "filesystemcapacity",
        "filesystemunreserved", "hostname", "fqdn", "fullhostname", "dictionary", "getoskernelversion", "serveruuid",
        "getserverport", "tcpport", "displayname", "uptime", "buildid",
    }
)  # fmt: skip
"""Scalar functions (lower case) that read the host, other tables by name, or server configuration.

Refused too are those that describe the machine rather than the data (kernel release, host names,
disk sizes, ports, server id, uptime): they help nobody read spend and help an attacker aim.
``version()`` stays: clients ask it to know which SQL they may send, and it names only the engine."""
_HOST_FUNCTION_PREFIXES = ("dict", "filesystem")

FORMAT_SETTINGS = frozenset(
    {
        "max_block_size", "extremes", "totals_mode", "join_use_nulls", "session_timezone", "date_time_output_format",
        "date_time_input_format", "prefer_column_name_to_alias", "union_default_mode",
        "aggregate_functions_null_for_empty", "transform_null_in", "insert_deduplicate",
        "cancel_http_readonly_queries_on_client_close", "http_zlib_compression_level",
        "result_overflow_mode", "timeout_overflow_mode", "read_overflow_mode",
        "output_format_json_quote_64bit_integers", "output_format_json_quote_64bit_floats",
        "output_format_json_quote_decimals", "output_format_json_quote_denormals",
        "output_format_json_escape_forward_slashes", "output_format_json_named_tuples_as_objects",
        "output_format_json_array_of_rows", "output_format_json_validate_utf8", "output_format_write_statistics",
        "output_format_decimal_trailing_zeros", "output_format_csv_crlf_end_of_line",
        "output_format_tsv_crlf_end_of_line", "output_format_pretty_max_rows",
        "output_format_pretty_max_column_pad_width",
        "output_format_pretty_max_value_width", "output_format_pretty_color", "output_format_pretty_grid_charset",
        "output_format_pretty_row_numbers", "output_format_arrow_string_as_string",
        "output_format_arrow_low_cardinality_as_dictionary", "output_format_parquet_string_as_string",
        "output_format_native_encode_types_in_binary_format", "output_format_native_write_json_as_string",
        "output_format_binary_encode_types_in_binary_format", "output_format_binary_write_json_as_string",
        "format_csv_delimiter", "format_csv_allow_single_quotes", "format_csv_allow_double_quotes",
        "format_csv_null_representation", "format_tsv_null_representation", "format_custom_escaping_rule",
        "format_custom_field_delimiter", "format_custom_row_before_delimiter", "format_custom_row_after_delimiter",
        "format_custom_row_between_delimiter", "format_custom_result_before_delimiter",
        "format_custom_result_after_delimiter", "input_format_null_as_default", "input_format_skip_unknown_fields",
        "input_format_import_nested_json", "input_format_defaults_for_omitted_fields",
        "input_format_tsv_empty_as_default", "input_format_csv_empty_as_default",
    }
)  # fmt: skip
"""Settings a client may send that change how results look (or, when anonymous writes are on, how
rows are read), never what may be read or how much. An explicit list, no prefixes: settings such as
``format_schema``, ``format_template_*`` and ``output_format_schema`` name files on the host, and a
new engine release adds settings nobody has looked at."""
_OVERFLOW_MODES = frozenset({"throw", "break"})

OUTPUT_FORMATS = frozenset(
    {
        "Arrow", "ArrowStream", "Avro", "BSONEachRow", "CSV", "CSVWithNames", "CSVWithNamesAndTypes", "CustomSeparated",
        "CustomSeparatedWithNames", "CustomSeparatedWithNamesAndTypes", "JSON", "JSONColumns",
        "JSONColumnsWithMetadata", "JSONCompact", "JSONCompactColumns", "JSONCompactEachRow",
        "JSONCompactEachRowWithNames", "JSONCompactEachRowWithNamesAndTypes", "JSONCompactEachRowWithProgress",
        "JSONCompactStrings", "JSONCompactStringsEachRow", "JSONCompactStringsEachRowWithNames",
        "JSONCompactStringsEachRowWithNamesAndTypes", "JSONCompactStringsEachRowWithProgress", "JSONEachRow",
        "JSONEachRowWithProgress", "JSONL", "JSONLines", "JSONObjectEachRow", "JSONStrings", "JSONStringsEachRow",
        "JSONStringsEachRowWithProgress", "LineAsString", "Markdown", "MD", "MsgPack", "Native", "NDJSON", "Null",
        "ORC", "Parquet", "Pretty", "PrettyCompact", "PrettyCompactMonoBlock", "PrettyCompactNoEscapes",
        "PrettyCompactNoEscapesMonoBlock", "PrettyJSONEachRow", "PrettyJSONLines", "PrettyMonoBlock", "PrettyNDJSON",
        "PrettyNoEscapes", "PrettyNoEscapesMonoBlock", "PrettySpace", "PrettySpaceMonoBlock", "PrettySpaceNoEscapes",
        "PrettySpaceNoEscapesMonoBlock", "Raw", "RawBLOB", "RawWithNames", "RawWithNamesAndTypes", "RowBinary",
        "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "SQLInsert", "TSKV", "TSV", "TSVRaw", "TSVRawWithNames",
        "TSVRawWithNamesAndTypes", "TSVWithNames", "TSVWithNamesAndTypes", "TabSeparated", "TabSeparatedRaw",
        "TabSeparatedRawWithNames", "TabSeparatedRawWithNamesAndTypes", "TabSeparatedWithNames",
        "TabSeparatedWithNamesAndTypes", "Values", "Vertical", "XML",
    }
)  # fmt: skip
"""Output formats of the engine a client may name in ``default_format`` (admin too): those that need
no schema or template file (``Protobuf*``, ``CapnProto``, ``Template`` are left out)."""
_OUTPUT_FORMATS_BY_LOWER = {name.lower(): name for name in OUTPUT_FORMATS}

_READ_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns", "ShowIndexes",
        "ShowCreateTableQuery", "ShowCreateDatabaseQuery", "ShowCreateViewQuery", "ShowFunctions",
        "ShowEngineQuery", "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery", "Explain",
    }
)  # fmt: skip
_WRITE_STATEMENTS = frozenset({"InsertQuery"})
_STATEMENTS = _READ_STATEMENTS | _WRITE_STATEMENTS
"""A Literal right under one of these is a file: ``INTO OUTFILE '...'`` (any statement), ``FROM INFILE '...'``."""
_FORMAT_TAIL = re.compile(r"\sFORMAT\s+(\w+)\s*$", re.IGNORECASE)
_SHOW_LISTS = re.compile(r"^SHOW\s+(?:FULL\s+)?(?:TEMPORARY\s+)?(?:TABLES|DATABASES|SETTINGS|CHANGED\s+SETTINGS)\b")
"""The forms of ``SHOW`` (EXPLAIN AST calls them all ShowTables) that read only the catalogue tables
allowed: ``SHOW MERGES``, ``CLUSTERS``, ``DICTIONARIES``, ``FILESYSTEM CACHES``... read others."""
_NAME = r"(`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"|\w+)"
_SHOW_COLUMNS = re.compile(
    rf"^SHOW\s+(?:EXTENDED\s+)?(?:FULL\s+)?(?:COLUMNS|FIELDS|INDEX|INDEXES|INDICES|KEYS)\s+FROM\s+{_NAME}(?:\s+FROM\s+{_NAME})?",
    re.IGNORECASE,
)
_NAMED_TABLE_STATEMENTS = frozenset(
    {"ShowCreateTableQuery", "ShowCreateViewQuery", "ExistsTableQuery", "ExistsViewQuery"}
)
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


def output_format(name: str) -> str:
    """``name`` as the engine spells it, if it is one of :data:`OUTPUT_FORMATS` (any case).

    The format is appended to the query text (``... FORMAT <name>``), so nothing else may pass.

    Raises:
        QueryRefused: an unknown format, or one outside the list (code 73, UNKNOWN_FORMAT).
    """
    known = _OUTPUT_FORMATS_BY_LOWER.get(name.lower())
    if known is None:
        raise QueryRefused(
            f"default_format {name[:64]!r} is not an output format this endpoint serves",
            "send one of TabSeparated, CSV, JSON, JSONEachRow, JSONCompact, Native, Parquet, ... "
            "(the formats of system.formats that need no schema file)",
            code=73,
        )
    return known


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
        elif name not in FORMAT_SETTINGS:
            raise QueryRefused(
                f"setting {name!r} is not allowed on this endpoint",
                "send only the output-format settings listed in spendstream.sql_policy.FORMAT_SETTINGS "
                "(output_format_json_quote_64bit_integers, format_csv_delimiter, date_time_output_format, "
                "max_block_size, ...) or lower a limit (max_execution_time, max_result_rows, ...); settings that "
                "name files (format_schema, format_template_*, output_format_schema) are never allowed",
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


def check_statement(ast: str, database: str, may_insert: bool, formatted: str = "") -> None:
    """Refuse a statement whose tree (``EXPLAIN AST``) leaves the sandbox.

    Args:
        ast: the engine's ``EXPLAIN AST`` of the one statement (after ``formatQuery`` accepted it).
        database: spendstream's database: the only one whose tables may be read (or written).
        may_insert: anonymous writes are switched on: ``INSERT`` into ``database`` is allowed too.
        formatted: the engine's ``formatQuerySingleLine`` of the statement: ``EXPLAIN AST`` leaves out
            what a ``SHOW`` reads (``SHOW MERGES`` and ``SHOW TABLES`` are both ShowTables), this has it.

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
    _check_show(nodes, formatted, database)
    reads_paths = any(node.kind == "TableIdentifier" and node.name in _PATH_TABLES for node in nodes)
    for node in nodes:
        if node.kind == "Set":
            raise QueryRefused(
                "a SETTINGS clause is not allowed here", "send settings as URL parameters (?max_result_rows=1000)"
            )
        if (node.parent == "SelectWithUnionQuery" and node.kind not in _SELECT_CHILDREN) or (
            node.parent in _STATEMENTS and node.kind == "Literal"
        ):
            raise QueryRefused(
                "INTO OUTFILE and FROM INFILE are not allowed, with any statement: results go back to you, and "
                "rows to insert come in the request",
                "drop INTO OUTFILE (or FROM INFILE)",
            )
        if reads_paths and (
            node.kind in _ALL_COLUMNS
            or (node.kind == "Identifier" and node.name.rpartition(".")[2].lower() in PATH_COLUMNS)
        ):
            raise QueryRefused(
                f"the columns {', '.join(sorted(PATH_COLUMNS))} of {' and '.join(sorted(_PATH_TABLES))} are not "
                "readable here (they show paths on the host), and neither is * or COLUMNS(...) on those tables",
                "name the columns you need (name, database, engine, total_rows, ...)",
            )
        if node.kind == "Function":
            name = node.name.lower()
            if node.parent in _TABLE_FUNCTION_PARENTS:
                if name not in SAFE_TABLE_FUNCTIONS:
                    raise QueryRefused(
                        f"the table function {node.name}() is not allowed: it reaches files, the network or "
                        "other tables",
                        f"read spendstream's tables; generators allowed: {', '.join(sorted(SAFE_TABLE_FUNCTIONS))}",
                    )
            elif name in HOST_FUNCTIONS or name.startswith(_HOST_FUNCTION_PREFIXES):
                raise QueryRefused(
                    f"the function {node.name}() is not allowed: it reads the host or other tables", "leave it out"
                )
        elif node.kind == "TableIdentifier":
            _check_table(node.name, database, write=False)
    target = [node.name for node in nodes if node.kind == "Identifier" and node.parent == "InsertQuery"]
    if len(target) == 2:  # INSERT INTO db.table: the database and the table, one node each
        _check_table(".".join(target), database, write=True)


def _check_show(nodes: list[_Node], formatted: str, database: str) -> None:
    """Refuse a ``SHOW``, ``EXISTS`` or ``SHOW CREATE`` that names a table or database outside the
    sandbox, or a form of ``SHOW`` that reads system tables outside :data:`SAFE_SYSTEM_TABLES`."""
    root = nodes[0].kind
    names = [node.name for node in nodes if node.kind == "Identifier" and node.parent == root]
    output = _FORMAT_TAIL.search(formatted)
    if output is not None and names and names[-1] == output.group(1):
        names = names[:-1]  # the output format (clickhouse-connect adds FORMAT Native), not a name read
    if root == "ShowTables":
        if _SHOW_LISTS.match(formatted) is None:
            raise QueryRefused(
                f"{' '.join(formatted.split()[:2]) or 'this SHOW'} reads system tables that are not readable here",
                "send SHOW TABLES, SHOW DATABASES, SHOW SETTINGS, SHOW COLUMNS or DESCRIBE",
            )
        for name in names:  # SHOW TABLES FROM name
            _check_database(name, database)
    elif root in ("ShowColumns", "ShowIndexes"):
        shown = _SHOW_COLUMNS.match(formatted)
        if shown is None:
            raise QueryRefused("this SHOW names a table in a form not understood here", "send SHOW COLUMNS FROM table")
        table, schema = (_unquote(part) if part else "" for part in shown.groups())
        _check_table(f"{schema}.{table}" if schema else table, database, write=False)
    elif root in _NAMED_TABLE_STATEMENTS and len(names) == 2:
        _check_table(".".join(names), database, write=False)
    elif root == "ShowCreateDatabaseQuery" and names:
        _check_database(names[0], database)


def _unquote(name: str) -> str:
    if name[:1] in ("`", '"'):
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _check_database(name: str, database: str) -> None:
    if name not in (database, "system") and name.lower() != "information_schema":
        raise QueryRefused(
            f"the database {name} is not readable here", f"read {database}, information_schema or system"
        )


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
    role that may read spendstream's database, ``information_schema`` and the system tables of
    :data:`SAFE_SYSTEM_TABLES`, and nothing else (no FILE, URL, REMOTE, S3 ... grants, so table
    functions that reach them are refused by the server itself).

    Every limit has ``MIN 1``: to ClickHouse 0 means unlimited (and ``max_threads = 0`` all cores), and
    0 is below any ``MAX``. The grants on system tables only matter on a server started with
    ``access_control_improvements.select_from_system_db_requires_grant``: without it every user reads
    every system table (``query_log``, ``processes``), so the README asks for it.
    """
    ceilings = limits.ceilings()
    profile_settings = [f"{name} = {value} MIN 1 MAX {value}" for name, value in ceilings.items()]
    profile_settings += [
        "readonly = 2",
        "allow_ddl = 0 CONST",
        "allow_introspection_functions = 0 CONST",
        "cancel_http_readonly_queries_on_client_close = 1",
        f"max_concurrent_queries_for_user = {max_concurrent_queries} MIN 1 MAX {max_concurrent_queries}",
    ]
    return [
        f"CREATE SETTINGS PROFILE IF NOT EXISTS {role} SETTINGS " + ", ".join(profile_settings),
        f"CREATE ROLE IF NOT EXISTS {role} SETTINGS PROFILE '{role}'",
        f"GRANT SELECT ON {database}.* TO {role}",
        f"GRANT SELECT ON information_schema.* TO {role}",
        *(f"GRANT SELECT ON system.{table} TO {role}" for table in sorted(SAFE_SYSTEM_TABLES)),
    ]
