"""The ``spendstream`` command line."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click
import orjson
from pydantic import ValidationError
from rich.console import Console

from schemas import topics
from schemas.exceptions import SpendstreamError
from spendstream.exceptions import StackError
from spendstream.settings import Settings

if TYPE_CHECKING:
    from rich.table import Table

    from sinks.burn import KeyForecast
    from streams.forecast import Forecast


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SPENDSTREAM_" + str(first["loc"][0]).upper()
        raise click.ClickException(f"bad setting {name}: {first['msg']}") from exc


def _read_failed(exc: Exception) -> click.ClickException:
    """A failed read of spendstream's tables: ClickHouse's first line, and what to check."""
    first = str(exc).splitlines()[0] if str(exc) else repr(exc)
    return click.ClickException(
        f"cannot read spendstream's tables ({first}): check that `spendstream up` is running, or that "
        "SPENDSTREAM_CLICKHOUSE_URL points at a server migrated with `spendstream migrate`"
    )


def _wide_console() -> Console:
    """A console for tables: the terminal's width, or wide enough not to wrap when piped."""
    return Console() if sys.stdout.isatty() else Console(width=160)


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
        config = settings.load_config()
        ensure_topics(settings.bootstrap, settings.partitions, settings.kafka_security(), settings.topic_prefix)
        run_worker(build_app(settings, settings.bootstrap, config), log_level, stop_timeout=settings.stop_timeout_s)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option(
    "--print-reader-policy",
    is_flag=True,
    help="print the SQL of the read-only settings profile and role for a ClickHouse server, and exit",
)
@click.option(
    "--apply-reader-policy",
    is_flag=True,
    help="after migrating, create that profile and role on the ClickHouse server (grant it to your readers)",
)
def migrate(print_reader_policy: bool, apply_reader_policy: bool) -> None:
    """Apply the sql/ migrations to the ClickHouse server or the embedded engine."""
    from sinks.migrations import migrate as run_migrations
    from spendstream.clickhouse_target import admin_client
    from spendstream.sql_policy import server_policy_sql

    settings = _settings()
    policy = server_policy_sql(settings.database, settings.query_limits(), settings.sql_max_concurrent_queries)
    if print_reader_policy:
        click.echo(";\n".join(policy) + ";")
        click.echo("-- then, for each reader: GRANT spendstream_reader TO name;")
        click.echo("--                        ALTER USER name DEFAULT ROLE spendstream_reader;")
        click.echo("-- and start the server with <access_control_improvements><select_from_system_db_requires_grant>")
        click.echo("-- true</...>: without it every user reads every system table (query_log, processes).")
        return
    if apply_reader_policy and settings.embedded_clickhouse:
        raise click.ClickException(
            "the embedded engine has no users or roles: its SQL endpoint enforces the same policy itself "
            "(see the README's security section); --apply-reader-policy is for SPENDSTREAM_CLICKHOUSE_URL"
        )
    try:
        client = admin_client(settings, create=True)
        applied = run_migrations(client, settings.database, on_applied=lambda m: click.echo(f"applied {m.name}"))
        if apply_reader_policy:
            for statement in policy:
                client.command(statement)
            click.echo("created the settings profile and role spendstream_reader: GRANT it to your readers")
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(
            f"ClickHouse refused or could not be reached ({str(exc).splitlines()[0] if str(exc) else exc!r}): check "
            "SPENDSTREAM_CLICKHOUSE_URL; --apply-reader-policy needs a user with ACCESS MANAGEMENT"
        ) from exc
    click.echo(f"{len(applied)} migration(s) applied to {settings.database}" if applied else "up to date")


@main.command()
@click.option("--since", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="first UTC day to reprice")
@click.option("--model", default=None, help="only calls of this model")
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing")
def reprice(since: datetime, model: str | None, dry_run: bool) -> None:
    """Recompute stored costs with the current price table and the config's overrides.

    Rollups (minute, hour, day, per trace) are corrected by the difference, so a fixed price
    fixes history. Calls whose cost the caller stated are left alone. Restart running workers
    after changing the config, so that new calls are priced the same way.
    """
    from spendstream.clickhouse_target import admin_client
    from streams.pricing import Pricer
    from streams.reprice import reprice as run_reprice

    settings = _settings()
    try:
        pricer = Pricer(settings.load_config().prices.overrides)
        client = admin_client(settings, database=settings.database)
        result = run_reprice(client, settings.database, pricer, since.date(), model, dry_run=dry_run)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(
            f"reprice failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): check that "
            "ClickHouse is reachable (`spendstream up` running, or SPENDSTREAM_CLICKHOUSE_URL). Before running "
            "it again, compare `SELECT sum(cost_usd) FROM rollup_day WHERE dimension = 'all'` with "
            "`SELECT sum(cost_usd) FROM llm_calls`: if they differ, the rollups were corrected and the table was not."
        ) from exc
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"examined {result.examined:,} call(s) since {since.date()}{f' of {model}' if model else ''}; "
        f"{verb} {result.changed:,} ({result.newly_priced:,} newly priced), total {result.delta_usd:+,.6f} USD"
    )


_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+\w+$", re.IGNORECASE)
_UNKNOWN_FORMAT = 73


def _clickhouse_message(exc: Exception) -> str:
    """ClickHouse's own message of a failure, on one line: without the client's wrapping and repeated codes."""
    from sinks.clickhouse import error_code

    text = " ".join(str(exc).split()) or repr(exc)
    code = error_code(exc)
    if code is not None and (start := text.find(f"Code: {code}.")) >= 0:
        text = text[start:]
        text = re.sub(rf"^(Code: {code}\. DB::Exception: )+", f"Code: {code}. DB::Exception: ", text)
    return re.sub(r"\s*\(for url [^)]*\)$", "", text)


@main.command()
@click.argument("query")
@click.option("--format", "fmt", default="PrettyCompactMonoBlock", show_default=True, help="a ClickHouse output format")
@click.option(
    "--admin",
    is_flag=True,
    help="run as the SQL endpoint's admin: unrestricted (writes, files, no limits); needs up's SPENDSTREAM_HOME",
)
def sql(query: str, fmt: str, admin: bool) -> None:
    """Run one SQL query against spendstream's ClickHouse database and print the result.

    It runs in the SQL endpoint's read-only sandbox, under its limits (against a ClickHouse server:
    as the user of SPENDSTREAM_CLICKHOUSE_URL, with its grants).
    """
    from sinks.clickhouse import error_code
    from spendstream.clickhouse_target import admin_client, reader

    statement = query.strip().rstrip(";").rstrip()
    if not statement:
        raise click.ClickException('empty query: give one SQL statement, e.g. spendstream sql "SELECT 1"')
    explicit = _FORMAT_CLAUSE.search(statement)
    settings = _settings()
    if admin and settings.embedded_clickhouse:
        click.echo("warning: --admin runs the query unrestricted (writes, files, no limits)", err=True)
    elif admin:
        click.echo(
            "note: --admin changes nothing on a ClickHouse server: SPENDSTREAM_CLICKHOUSE_URL's user runs it", err=True
        )
    try:
        with ExitStack() as stack:
            client = admin_client(settings, settings.database) if admin else stack.enter_context(reader(settings))
            output = client.raw_query(statement, fmt=None if explicit else fmt)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        if error_code(exc) == _UNKNOWN_FORMAT:
            name = explicit.group().split()[1] if explicit else fmt
            raise click.ClickException(
                f"unknown output format {name!r}: the names are in "
                '`spendstream sql "SELECT name FROM system.formats WHERE is_output"`'
            ) from exc
        raise click.ClickException(_clickhouse_message(exc)) from exc
    click.echo(output.decode(errors="replace"), nl=False)


@main.command()
@click.argument("source", type=click.File("rb"))
@click.option("--topic", default=None, help="default: llm.calls (with SPENDSTREAM_TOPIC_PREFIX)")
def emit(source: IO[bytes], topic: str | None) -> None:
    """Validate JSON lines (FILE, or - for stdin) and send the good ones to Kafka.

    Each bad line is reported by number and reason; the exit status is 1 if any line was bad. A usage
    payload (camelCase) without ts is sent with the time it is read, as the worker would give it its
    Kafka record's; with SPENDSTREAM_REQUIRE_FEATURE, a line without feature is bad, as the worker
    would refuse it.
    """
    import time

    from producers import Emitter
    from schemas.call_event import UNATTRIBUTED
    from schemas.usage_payload import RECORD_TS, USER_ID_AS, model_for
    from streams.ingest import MISSING_FEATURE_REASON, describe

    settings = _settings()
    topic = topic or settings.topic(topics.CALLS)
    emitter = Emitter(settings.bootstrap, topic=topic, kafka_config=settings.kafka_security())
    good = bad = 0
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            context = {RECORD_TS: int(time.time() * 1000), USER_ID_AS: settings.userid_as}
            event = model_for(line).model_validate_json(line, context=context)
        except ValidationError as exc:
            bad += 1
            click.echo(f"line {number}: {describe(exc)}", err=True)
            continue
        if settings.require_feature and event.feature_or_unattributed == UNATTRIBUTED:
            bad += 1
            click.echo(f"line {number}: {MISSING_FEATURE_REASON}", err=True)
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


@main.command()
@click.option("--days", default=7.0, show_default=True, type=click.FloatRange(0, 30), help="days of history to send")
@click.option("--live/--no-live", default=True, show_default=True, help="keep sending live traffic after the history")
@click.option("--duration", type=click.FloatRange(min=1), help="seconds of live traffic (default: until Ctrl-C)")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01, 100), help="multiplies the rate")
@click.option("--seed", default=7, show_default=True, help="the same seed sends the same traffic")
@click.option(
    "--incidents/--no-incidents",
    default=True,
    show_default=True,
    help="stage a runaway loop, a costly prompt version, a latency collapse and a spend spike in the history",
)
def demo(days: float, live: bool, duration: float | None, scale: float, seed: int, incidents: bool) -> None:
    """Fill the running stack with realistic traffic (data_mode 'demo'): history, then live calls.

    A sales copilot, a support agent with tool calls and a coordinator delegating to sub-agents,
    over several tenants, users, models of OpenAI, Anthropic and Google, prompt versions, retries
    and errors.
    """
    from producers import Emitter
    from producers.demo import DemoProgress, DemoRunner, DemoTraffic
    from producers.demo_incidents import DemoIncidents
    from spendstream.kafka_admin import require_kafka

    settings = _settings()
    security = settings.kafka_security()
    try:
        require_kafka(settings.bootstrap, security)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    calls = Emitter(settings.bootstrap, topic=settings.topic(topics.CALLS), kafka_config=security)
    outcomes = Emitter(settings.bootstrap, topic=settings.topic(topics.OUTCOMES), kafka_config=security)
    staged = DemoIncidents.before() if incidents else None
    runner = DemoRunner(DemoTraffic(seed=seed, scale=scale, incidents=staged), calls, outcomes)
    console = Console(stderr=True)

    def line(progress: DemoProgress) -> str:
        at = progress.at.strftime("%a %H:%M UTC") if progress.at else ""
        return (
            f"[bold]{progress.phase}[/] {at}  {progress.requests:,} requests  "
            f"{progress.calls:,} calls  {progress.outcomes:,} outcomes"
        )

    try:
        with console.status(line(runner.progress)) as status:
            runner.history(days, lambda p: status.update(line(p)))
            calls.flush(30)
            console.print(line(runner.progress) + " sent")
            if live:
                runner.live(duration, lambda p: status.update(line(p)))
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        for emitter in (calls, outcomes):
            stats = emitter.close(timeout=30)
            if stats.failed or stats.dropped or stats.in_flight:
                console.print(f"[red]{stats.failed + stats.dropped + stats.in_flight} event(s) not delivered[/]")
    console.print(
        'Try: spendstream sql "SELECT key, round(sum(cost_usd), 2) AS usd FROM rollup_day '
        "WHERE dimension = 'feature' AND data_mode = 'demo' GROUP BY key ORDER BY usd DESC\""
    )
    if incidents:
        console.print("and `spendstream alerts` for the incidents the detectors caught")


@main.command()
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARN", "ERROR"]))
def alerter(log_level: str) -> None:
    """Deliver stored alerts to the Slack channels of the config's routes (server mode; `up` runs one)."""
    import logging
    import signal
    import threading

    from spendstream.stack import build_alerter

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    try:
        service = build_alerter(settings, settings.load_config())
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service.run(stop)
    except KeyboardInterrupt:
        stop.set()


@main.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--raw", is_flag=True, help="every alert row (each escalation, reminder and resolution) instead of incidents"
)
@click.pass_context
def alerts(ctx: click.Context, limit: int, raw: bool) -> None:
    """List recent incidents: what, since when, how many updates, firing or resolved, and delivery.

    An incident is one condition of one key from the alert that opened it to the one that resolved
    it (subcommand: test-slack).
    """
    if ctx.invoked_subcommand is not None:
        return
    from spendstream.clickhouse_target import reader

    settings = _settings()
    query = (
        "SELECT ts, kind, severity, dimension, key, round(value, 4) AS value, status, delivery_state, channel, "
        f"delivery_error FROM alerts FINAL ORDER BY ts DESC, alert_id LIMIT {limit}"
        if raw
        else INCIDENTS_QUERY.format(limit=limit)
    )
    try:
        with reader(settings) as client:
            output = client.raw_query(query, fmt="PrettyCompactMonoBlock")
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise _read_failed(exc) from exc
    click.echo(output.decode(errors="replace"), nl=False)


INCIDENTS_QUERY = """
SELECT min(ts) AS opened, max(ts) AS latest, any(kind) AS kind,
       multiIf(has(groupArray(severity), 'critical'), 'critical', has(groupArray(severity), 'warning'), 'warning',
               'info') AS worst, any(dimension) AS dimension, any(key) AS key, argMax(status, ts) AS state,
       count() AS alerts, round(argMax(value, ts), 4) AS value, argMax(delivery_state, ts) AS delivery,
       argMax(channel, ts) AS channel
FROM (
    SELECT *, sum(status = 'resolved') OVER (
        PARTITION BY dedup_key ORDER BY ts, alert_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS incident  -- the resolutions before this alert: each one closed an incident of this key
    FROM alerts FINAL
)
GROUP BY dedup_key, incident
ORDER BY latest DESC, opened DESC
LIMIT {limit}
"""


@alerts.command(name="test-slack")
def test_slack() -> None:
    """Post a test message to each channel the routes name, and say which failed and why."""
    from alerting.slack import Posters, SlackDeliveryError

    settings = _settings()
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token is not None else None
    try:
        alerts_config = settings.load_config().alerts
        posters = Posters.configured(alerts_config, token, settings.slack_api_url, settings.config)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    channels = list(dict.fromkeys(route.channel for route in alerts_config.routes))
    if not channels:
        raise click.ClickException("the config has no alerts.routes: add at least one (see the README)")
    failed = 0
    for channel in channels:
        try:
            text = f"spendstream test message: alerts routed to {channel} will arrive here"
            posters.for_channel(channel).post_blocks(channel, text)
        except SlackDeliveryError as exc:
            failed += 1
            click.echo(f"{channel}: FAILED: {exc.reason}")
        else:
            click.echo(f"{channel}: ok")
    if failed:
        raise click.ClickException(f"{failed} of {len(channels)} channel(s) failed")


@main.command()
@click.argument("trace_id")
def trace(trace_id: str) -> None:
    """Show one request (trace) as a tree: each call's cost and everything under it, per agent and depth."""
    from rich.table import Table

    from sinks.traces import trace_report
    from spendstream.clickhouse_target import reader

    settings = _settings()
    try:
        with reader(settings) as client:
            report = trace_report(client, trace_id)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise _read_failed(exc) from exc
    console = _wide_console()
    tree = Table(title=f"trace {trace_id}: ${report.total_usd:,.6f} in {len(report.tree)} calls")
    for column in ("call", "agent", "own USD", "USD with all under it", "latency ms"):
        tree.add_column(column, justify="right" if "USD" in column or "ms" in column else "left")
    for depth, event_id, agent, kind, what, own, total, latency in report.tree:
        label = f"{'  ' * depth}{'└ ' if depth else ''}{what}{' (tool)' if kind == 'tool' else ''} {event_id[:8]}"
        tree.add_row(label, agent, f"{own:,.6f}", f"{total:,.6f}", f"{latency or 0:,.0f}")
    console.print(tree)
    by_depth = Table(title="cost per depth and agent")
    for column in ("depth", "agent", "calls", "USD"):
        by_depth.add_column(column, justify="left" if column == "agent" else "right")
    for depth, agent, calls, usd in report.by_depth:
        by_depth.add_row(str(depth), agent, f"{calls:,}", f"{usd:,.6f}")
    console.print(by_depth)
    path = " -> ".join(
        f"{agent or '?'}:{what} ({latency or 0:,.0f} ms)" for _, _, agent, what, latency, *_ in report.critical_path
    )
    console.print(f"request took {report.duration_ms:,} ms; critical path: {path}")
    if report.unreached[0]:
        console.print(
            f"{report.unreached[0]} call(s) (${report.unreached[1]:,.6f}) name a parent that was never stored: "
            "not in the tree"
        )


_KILL_TARGETS = {  # option: the dimension a kill switch names (schemas.budget.KILL_DIMENSIONS)
    "agent": "agent_id", "feature": "feature", "tool": "tool_name", "prompt_version": "prompt_version",
    "tenant": "tenant_id", "session": "session_id",
}  # fmt: skip


def _kill_target(all_calls: bool, named: dict[str, str | None]) -> tuple[str | None, str | None]:
    targets: list[tuple[str | None, str | None]] = [(None, None)] if all_calls else []
    targets += [(_KILL_TARGETS[option], key) for option, key in named.items() if key]
    if len(targets) != 1:
        options = ", ".join(["--all", *("--" + option.replace("_", "-") for option in _KILL_TARGETS)])
        raise click.UsageError(f"say which calls: exactly one of {options}")
    return targets[0]


def _kill_target_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that name what a kill switch covers: --all, or one agent, feature, tool, ... (kill and unkill)."""
    for option in reversed(_KILL_TARGETS):
        name = "--" + option.replace("_", "-")
        command = click.option(name, metavar="NAME", help=f"the calls of one {_KILL_TARGETS[option]}")(command)
    return click.option("--all", "all_calls", is_flag=True, help="every call of every application")(command)


@main.command()
@_kill_target_options
@click.option("--reason", required=True, help="why: shown in the error the guard raises")
def kill(all_calls: bool, reason: str, **named: str | None) -> None:
    """Stop calls now: the SDK's guard denies them before they are made, until `spendstream unkill`.

    A guard that has read the kill keeps denying while it cannot reach Kafka, whatever its `fail`.
    """
    from schemas.privacy import redact
    from spendstream.kill_switch import kill_state, publish, record_change

    dimension, key = _kill_target(all_calls, named)
    if (screened := redact(reason)) != reason:
        raise click.BadParameter(
            f"it holds personal data or a secret (screened: {screened!r}); every guard it stops reports it, "
            "and `spendstream budgets` lists it: say why without them",
            param_hint="--reason",
        )
    settings = _settings()
    state = kill_state(dimension, key, reason)
    try:
        record_change(settings, state.scope, state)  # first: a worker that starts publishes it
    except SpendstreamError as exc:
        unrecorded: SpendstreamError | None = exc  # the calls still stop now; a restart would lift it
    else:
        unrecorded = None
    try:
        publish(settings.bootstrap, settings.topic(topics.BUDGETS), state.scope, state.model_dump_json().encode(),
                settings.kafka_security())  # fmt: skip
    except SpendstreamError as exc:
        if unrecorded is not None:
            raise click.ClickException(f"{unrecorded}; and {exc}") from exc
        raise click.ClickException(f"{exc} (it is recorded: guards deny these calls once a worker starts)") from exc
    if unrecorded is not None:
        raise click.ClickException(f"set now, but a restart of up or the worker lifts it: {unrecorded}")
    click.echo(f"killed: {state.reason} (scope {state.scope}); guards deny these calls from their next check")


@main.command()
@_kill_target_options
@click.option("--timeout", default=15.0, show_default=True, help="seconds to wait for the budgets topic")
def unkill(all_calls: bool, timeout: float, **named: str | None) -> None:
    """Lift a kill switch set with `spendstream kill` (budgets still apply).

    The kill switches set now are read first: naming one that is not set lifts nothing, lists those
    that are, and exits with 1.
    """
    from schemas.budget import kill_scope
    from spendstream.kill_switch import active_kills, publish, record_change, recorded_kills

    dimension, key = _kill_target(all_calls, named)
    settings = _settings()
    topic = settings.topic(topics.BUDGETS)
    scope = kill_scope(dimension, key)
    try:
        try:
            on_topic, unread = active_kills(settings.bootstrap, topic, settings.kafka_security(), timeout), None
        except SpendstreamError as exc:  # Kafka down: the record in ClickHouse may still say
            on_topic, unread = [], exc
        # the record too: a restarted worker may not have published it on the topic yet
        by_scope = {kill.scope: kill for kill in [*recorded_kills(settings), *on_topic]}
        kills = [by_scope[s] for s in sorted(by_scope)]
        if scope not in by_scope and unread is not None:
            raise unread
        if scope not in by_scope:
            what = "every call" if dimension is None else f"{dimension} {key}"
            click.echo(f"no kill switch on {what}: nothing lifted", err=True)
            click.echo(
                "\n".join(["active kill switches:", *(f"  {kill.scope}  ({kill.reason})" for kill in kills)])
                if kills
                else "no kill switch is active",
                err=True,
            )
            sys.exit(1)
        record_change(settings, scope, None)  # first: a worker that starts must not publish it again
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        publish(settings.bootstrap, topic, scope, None, settings.kafka_security())
    except SpendstreamError as exc:
        raise click.ClickException(
            f"{exc} (it is recorded as lifted: guards allow these calls once a worker starts)"
        ) from exc
    click.echo(f"lifted: {scope}")


@main.command()
@click.option("--timeout", default=15.0, show_default=True, help="seconds to wait for the budgets topic")
def budgets(timeout: float) -> None:
    """List the budget states and kill switches the guards see now, and the month-end forecasts of the monthly
    budgets and of the whole organisation (from ClickHouse)."""
    from rich.table import Table

    from producers import BudgetGuard
    from streams.forecast import describe

    settings = _settings()
    guard = BudgetGuard(
        settings.bootstrap, topic=settings.topic(topics.BUDGETS), kafka_config=settings.kafka_security()
    )
    try:
        if not guard.wait_ready(timeout):
            why = guard.stats().last_error or "no answer"
            raise click.ClickException(
                f"cannot read {settings.topic(topics.BUDGETS)} within {timeout:.0f}s ({why}): "
                "check SPENDSTREAM_KAFKA_BOOTSTRAP, or start the stack with `spendstream up`"
            )
        states = guard.states()
    finally:
        guard.close()
    forecasts, org, why = _forecasts(settings)
    table = Table(title=f"{len(states)} budget states and kill switches")
    for column in ("scope", "state", "spent USD", "limit USD", "left USD", "period", "reason"):
        table.add_column(column, justify="right" if "USD" in column else "left")
    for state in sorted(states, key=lambda s: s.scope):
        table.add_row(
            state.scope, state.state, f"{state.spent_usd:,.2f}",
            "" if state.limit_usd is None else f"{state.limit_usd:,.2f}",
            "" if state.remaining_usd is None else f"{state.remaining_usd:,.2f}", state.period, state.reason,
        )  # fmt: skip
    console = _wide_console()
    console.print(table)
    if why:
        console.print(f"month-end forecasts not shown: {why}")
        return
    if forecasts:
        console.print(forecast_table(forecasts))
    if org is not None:
        console.print(f"month-end forecast of every real call: {describe(org)}")


def _forecasts(settings: Settings) -> tuple[list[KeyForecast], Forecast | None, str]:
    """The monthly budgets' and the organisation's month-end forecasts, or why they cannot be read."""
    from datetime import UTC

    from sinks.burn import budget_forecasts, org_forecast
    from spendstream.clickhouse_target import reader

    try:
        budgets = settings.load_config().budgets
    except SpendstreamError as exc:
        return [], None, str(exc)
    try:
        with reader(settings) as client:
            now = datetime.now(UTC)
            return budget_forecasts(client, budgets, now), org_forecast(client, "real", now), ""
    except SpendstreamError as exc:
        return [], None, str(exc)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        return (
            [],
            None,
            f"cannot read ClickHouse ({first}): is `spendstream up` running, or SPENDSTREAM_CLICKHOUSE_URL set?",
        )


@main.command()
@click.option("--data-mode", default="real", show_default=True, type=click.Choice(["real", "test", "demo"]),
              help="which calls: production, tests or the demo's")  # fmt: skip
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 50), help="keys per dimension")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="also write a self-contained HTML page with charts")  # fmt: skip
def report(data_mode: str, top: int, html_file: Path | None) -> None:
    """Today's and this month's spend: top features, models, agents, tenants, prompt versions, the trend."""
    from rich.table import Table

    from sinks.report import DIMENSIONS, build_report
    from spendstream.clickhouse_target import reader
    from spendstream.report_html import render_html
    from streams.forecast import describe

    settings = _settings()
    try:
        budgets = settings.load_config().budgets
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with reader(settings) as client:
            built = build_report(client, data_mode, top, budgets=budgets)
    except SpendstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise _read_failed(exc) from exc
    console = _wide_console()
    total = built.total
    trend = f"{100 * (total.trend - 1):+.0f}%" if total.trend is not None else "no spend the week before"
    console.print(
        f"[bold]{built.day} ({data_mode} calls)[/bold]: today ${total.today_usd:,.2f}; this month "
        f"${total.month_usd:,.2f} over {total.month_calls:,} calls in {total.month_runs:,} runs "
        f"(${total.per_1k_calls:,.2f} per 1,000 calls, ${total.per_1k_runs:,.2f} per 1,000 runs); "
        f"last 7 days ${total.last7_usd:,.2f}, {trend} against the 7 before"
    )
    if built.forecast is not None:
        console.print(f"month-end forecast: {describe(built.forecast)}")
    for dimension in DIMENSIONS:
        rows = built.top[dimension]
        if not rows:
            continue
        table = Table(title=f"top {dimension}")
        for column in (dimension, "today", "this month", "per 1,000 calls", "per 1,000 runs", "7 days vs 7 before"):
            table.add_column(column, justify="left" if column == dimension else "right")
        for row in rows:
            change = "new" if row.trend is None else f"{100 * (row.trend - 1):+.0f}%"
            table.add_row(row.key or "(none)", f"${row.today_usd:,.2f}", f"${row.month_usd:,.2f}",
                          f"${row.per_1k_calls:,.4f}", f"${row.per_1k_runs:,.4f}", change)  # fmt: skip
        console.print(table)
    if built.outcomes:
        table = Table(title="cost per outcome, last 7 days (the requests that reached it)")
        for column in ("outcome", "outcomes", "spend", "per outcome"):
            table.add_column(column, justify="left" if column == "outcome" else "right")
        for outcome, n, usd, per in built.outcomes:
            table.add_row(outcome, f"{n:,}", f"${usd:,.2f}", f"${per:,.4f}")
        console.print(table)
    if built.budgets:
        console.print(forecast_table(built.budgets))
    if html_file is not None:
        html_file.write_text(render_html(built))
        console.print(f"HTML report: {html_file}")


def forecast_table(forecasts: list[KeyForecast]) -> Table:
    """The month-end forecast of each key with a monthly budget."""
    from rich.table import Table

    from streams.forecast import crossing

    table = Table(title="monthly budgets: month-end forecast (real calls)")
    for column in ("scope", "spent USD", "limit USD", "projected USD", "of limit", "the budget", "weekday USD",
                   "weekend day USD", "trend a week", "action"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("scope", "the budget", "action") else "right")
    for found in forecasts:
        f = found.forecast
        rates = ("", "", "") if not f.history_days else (
            f"{f.weekday_usd:,.2f}", f"{f.weekend_usd:,.2f}", f"{100 * (f.trend - 1):+.0f}%"
        )  # fmt: skip
        table.add_row(
            found.scope, f"{f.spent_usd:,.2f}", f"{f.limit_usd or 0:,.2f}", f"{f.projected_usd:,.2f}",
            f"{100 * (f.share or 0):.0f}%", crossing(f), *rates, found.action,
        )  # fmt: skip
    return table


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
