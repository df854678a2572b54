"""The ``spendstream`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

import click
import orjson
from pydantic import ValidationError

from schemas import topics
from schemas.call_event import CallEvent
from schemas.exceptions import SpendstreamError
from spendstream.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SPENDSTREAM_" + str(first["loc"][0]).upper()
        raise click.ClickException(f"bad setting {name}: {first['msg']}") from exc


@click.group()
def main() -> None:
    """Streaming cost observability for LLM applications and agents."""


@main.command()
@click.option("--log-level", default="WARN", type=click.Choice(["DEBUG", "INFO", "WARN", "ERROR"]))
def up(log_level: str) -> None:
    """Run everything: the embedded broker and ClickHouse engine, the worker and the SQL endpoint."""
    from spendstream.stack import up as run_up

    try:
        run_up(_settings(), lambda line: click.echo(line, err=True), log_level)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--log-level", default="WARN", type=click.Choice(["DEBUG", "INFO", "WARN", "ERROR"]))
def worker(log_level: str) -> None:
    """Run the stream worker alone (production: scale it by Kafka partitions)."""
    from spendstream.kafka_admin import ensure_topics
    from spendstream.stack import build_app, run_worker

    settings = _settings()
    try:
        settings.load_config()
        ensure_topics(settings.bootstrap, settings.partitions, settings.kafka_security(), settings.topic_prefix)
        run_worker(build_app(settings, settings.bootstrap), log_level)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
def migrate() -> None:
    """Apply the sql/ migrations to the ClickHouse server or the embedded engine."""
    from sinks.migrations import migrate as run_migrations
    from spendstream.clickhouse_target import client_for_command

    settings = _settings()
    try:
        client = client_for_command(settings)
        applied = run_migrations(client, settings.database, on_applied=lambda m: click.echo(f"applied {m.name}"))
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"cannot reach ClickHouse ({exc}): check SPENDSTREAM_CLICKHOUSE_URL") from exc
    click.echo(f"{len(applied)} migration(s) applied to {settings.database}" if applied else "up to date")


@main.command()
@click.argument("query")
@click.option("--format", "fmt", default="PrettyCompactMonoBlock", show_default=True, help="a ClickHouse output format")
def sql(query: str, fmt: str) -> None:
    """Run a SQL query against spendstream's ClickHouse database and print the result."""
    from spendstream.clickhouse_target import client_for_command

    settings = _settings()
    try:
        client = client_for_command(settings, database=settings.database)
        output = client.raw_query(query, fmt=fmt if "FORMAT" not in query.upper() else None)
    except Exception as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
    click.echo(output.decode(errors="replace"), nl=False)


@main.command()
@click.argument("source", type=click.File("rb"))
@click.option("--topic", default=None, help="default: llm.calls (with SPENDSTREAM_TOPIC_PREFIX)")
def emit(source: IO[bytes], topic: str | None) -> None:
    """Validate JSON lines (FILE, or - for stdin) and send the good ones to Kafka.

    Each bad line is reported by number and reason; the exit status is 1 if any line was bad.
    """
    from producers import Emitter
    from streams.ingest import describe

    settings = _settings()
    topic = topic or settings.topic(topics.CALLS)
    emitter = Emitter(settings.bootstrap, topic=topic, kafka_config=settings.kafka_security())
    good = bad = 0
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            event = CallEvent.model_validate_json(line)
        except ValidationError as exc:
            bad += 1
            click.echo(f"line {number}: {describe(exc)}", err=True)
            continue
        emitter.emit_raw(orjson.dumps(event.model_dump(mode="json", exclude_none=True)), event.partition_key)
        good += 1
    stats = emitter.close(timeout=30)
    undelivered = stats.failed + stats.dropped + stats.in_flight
    click.echo(f"sent {stats.delivered} event(s) to {topic} on {settings.bootstrap}; {bad} bad line(s)", err=True)
    if undelivered:
        raise click.ClickException(
            f"{undelivered} event(s) not delivered: is Kafka at {settings.bootstrap} up? (spendstream up)"
        )
    if bad:
        sys.exit(1)


@main.command(name="schema")
@click.option("--write", "directory", type=click.Path(path_type=Path), help="write the files into this folder")
def schema(directory: Path | None) -> None:
    """Print (or write) the JSON Schema of the call event for non-Python producers."""
    from schemas.jsonschema import EXPORTED, render, write_all

    if directory is not None:
        for path in write_all(directory):
            click.echo(str(path))
        return
    click.echo(render(EXPORTED["call_event.schema.json"]), nl=False)


if __name__ == "__main__":
    main()
