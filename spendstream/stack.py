"""Starting spendstream: ``up`` (the whole embedded stack in one process tree) and ``worker``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from clickhouse_connect.driver.client import Client

from alerting.alerter import Alerter
from alerting.scheduled import ScheduledChecks
from alerting.slack import Posters
from alerting.topic import AlertTopic
from producers.log_repeats import REPEAT_SECONDS, quiet_repeats
from schemas import topics
from schemas.config import SpendstreamConfig
from sinks.clickhouse import connect
from sinks.migrations import migrate
from sinks.sink import ClickHouseSink
from spendstream.broker import EmbeddedBroker
from spendstream.clickhouse_target import engine_dsn, up_is_running
from spendstream.exceptions import StackError
from spendstream.kafka_admin import ensure_topics
from spendstream.settings import Settings
from spendstream.sql_endpoint import SqlEndpoint, load_or_create_token
from streams.app import create_app
from streams.budgets import Budgets
from streams.config import StreamConfig
from streams.detectors.engine import Detectors
from streams.membership import GroupMembership
from streams.pricing import Pricer

logger = logging.getLogger(__name__)


def build_app(settings: Settings, bootstrap: str, config: SpendstreamConfig) -> faust.App:
    dsn = engine_dsn(settings)
    sink = ClickHouseSink(
        lambda: connect(dsn, database=settings.database), settings.database, journal_dir=settings.home / "sink-journal"
    )
    stream_config = StreamConfig(
        bootstrap=bootstrap,
        data_dir=settings.home / "faust",
        partitions=settings.partitions,
        batch_size=settings.batch_size,
        batch_seconds=settings.batch_seconds,
        session_timeout=settings.consumer_session_timeout_s,
        max_event_bytes=settings.max_event_bytes,
        kafka_security=settings.kafka_security(),
        app_id=settings.topic("spendstream"),
        calls_topic=settings.topic(topics.CALLS),
        dlq_topic=settings.topic(topics.CALLS_DLQ),
        outcomes_topic=settings.topic(topics.OUTCOMES),
        alerts_topic=settings.topic(topics.ALERTS),
        budgets_topic=settings.topic(topics.BUDGETS),
        budget_spend_topic=settings.topic(topics.BUDGET_SPEND),
        detector_partials_topic=settings.topic(topics.DETECTOR_PARTIALS),
        user_id_key=settings.user_id_key.get_secret_value().encode() if settings.user_id_key is not None else None,
        require_feature=settings.require_feature,
        user_id_as=settings.userid_as,
        budget_sweep_seconds=settings.budget_sweep_s,
    )
    return create_app(
        stream_config,
        sink=sink,
        pricer=Pricer(config.prices.overrides),
        detectors=Detectors(config.detectors),
        budgets=Budgets(config.budgets),
    )


def build_alerter(settings: Settings, config: SpendstreamConfig) -> Alerter:
    """The alerter, with its scheduled checks.

    Raises:
        ConfigError: a route's webhook variable is unset.
    """
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token is not None else None
    posters = Posters.configured(config.alerts, token, settings.slack_api_url, settings.config)
    dsn = engine_dsn(settings)

    def client() -> Client:
        return connect(dsn, database=settings.database)

    topic = AlertTopic(settings.bootstrap, settings.topic(topics.ALERTS), settings.kafka_security())
    return Alerter(
        client,
        settings.database,
        config.alerts.routes,
        posters,
        group_wait=config.alerts.group_wait_seconds,
        group_interval=config.alerts.group_interval_seconds,
        inhibit=config.alerts.inhibit,
        checks=ScheduledChecks(client, settings.database, config, posters, topic.publish),
    )


def tune_garbage_collector() -> None:
    """Keep Python's cycle collector off the per-event path of a worker.

    Every call allocates a few dozen objects (the validated event, its row, Kafka records), and with
    the default thresholds the collector ran every 700 allocations and walked the whole heap (the
    detectors' windows, the price table, the Faust app) about once a second: 3.4 s of a
    200,000-event bench run, all of it holding the GIL. What exists at start-up lives as long as the
    process, so it is frozen out of collections; the young generation is collected every 50,000
    allocations. Objects are still freed by reference counting as soon as they are unused: only
    reference cycles wait longer to be collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Worker(faust.Worker):
    """Faust's worker, stopped in order, without its idle seconds, and within ``stop_timeout`` seconds.

    ``before_stop`` (if given) runs on the first SIGTERM or SIGINT before the worker stops: ``up``
    drains its broker there. A second signal stops the worker at once. A stop that has not ended
    ``stop_timeout`` seconds after the first signal (a broker or ClickHouse that stopped answering
    can hold Faust's stop for ever) ends the process: that is a kill, which loses nothing, since
    what the worker had not stored is read again at its next start.

    ``membership`` (if given) removes the group member of a predecessor that was killed before the
    app starts, so the consumer's join does not wait for that member's session to expire.
    """

    def __init__(
        self,
        app: faust.App,
        *,
        before_stop: Callable[[], Awaitable[None]] | None = None,
        stop_timeout: float = 10.0,
        membership: GroupMembership | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._membership = membership
        self._before_stop = before_stop
        self._stop_timeout = stop_timeout
        self._stopping = False
        self._deadline: threading.Timer | None = None

    async def on_first_start(self) -> None:
        await super().on_first_start()  # logging is set up there
        if self._membership is not None:
            await self._membership.leave_stale()

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        for stop in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(stop, self._on_stop_signal, stop)

    def _on_stop_signal(self, stop: signal.Signals) -> None:
        if self._stopping or self._before_stop is None:
            self._start_deadline(stop)
            self._schedule_shutdown(stop)
            return
        self._stopping = True
        self._start_deadline(stop)
        before_stop = self._before_stop

        async def then_stop() -> None:
            try:
                await before_stop()
            except Exception:
                logger.exception("stopping in order failed; stopping anyway")
            self._schedule_shutdown(stop)

        self.add_future(then_stop())

    def _start_deadline(self, stop: signal.Signals) -> None:
        if self._deadline is not None:
            return
        self._deadline = threading.Timer(self._stop_timeout, _stop_now, args=(stop, self._stop_timeout))
        self._deadline.daemon = True
        self._deadline.start()

    async def _sentinel_task(self) -> None:
        # mode waits a whole second here before closing the loop, after every service has stopped.
        await asyncio.sleep(0.05)


def _stop_now(stop: signal.Signals, timeout: float) -> None:
    logger.error(
        "still stopping %.0f s after %s (SPENDSTREAM_STOP_TIMEOUT_S): exiting now; "
        "what the worker had not stored is read again at its next start",
        timeout,
        stop.name,
    )
    logging.shutdown()
    os._exit(1)


def run_worker(
    app: faust.App,
    loglevel: str = "WARN",
    before_stop: Callable[[], Awaitable[None]] | None = None,
    stop_timeout: float = 10.0,
) -> None:
    tune_garbage_collector()
    # aiokafka says each failure to reach a broker that is gone several times a second
    quiet_repeats("aiokafka", REPEAT_SECONDS)
    membership = GroupMembership.of(app)
    membership.watch(app)
    # stderr as it is: redirected into logging, a traceback became one log line per fragment
    worker = Worker(
        app, before_stop=before_stop, stop_timeout=stop_timeout, membership=membership, loglevel=loglevel,
        quiet=True, redirect_stdouts=False,
    )  # fmt: skip
    with contextlib.suppress(SystemExit):  # the worker exits the process when stopped; let callers clean up
        worker.execute_from_commandline()
    membership.forget()  # its consumer has left the group (a kill or a stop past its deadline never gets here)


# How long a stopping `up` gives its worker to store and commit what the broker acknowledged before
# it saves the rest to disk (they are produced again at the next start).
DRAIN_SECONDS = 1.0


def _drain_in_order(app: faust.App, broker: EmbeddedBroker) -> Callable[[], Awaitable[None]]:
    """Hold new events at the gate, let the worker commit (nudged every 50 ms), then save what it has not."""

    async def drain() -> None:
        loop = asyncio.get_running_loop()
        draining = loop.run_in_executor(None, broker.drain, DRAIN_SECONDS)
        while not draining.done():
            with contextlib.suppress(Exception):
                await app.consumer.commit()
            await asyncio.wait({draining}, timeout=0.05)
        saved = draining.result()
        if saved:
            logger.warning("saved %d events the worker had not stored yet; they are stored at the next start", saved)

    return drain


def _open_on_assignment(app: faust.App, broker: EmbeddedBroker) -> None:
    """Let new events into the broker once the worker reads its topics (so a stop can drain them)."""
    opened = False

    async def on_assigned(_: Any, /, *args: Any, signal: Any, **__: Any) -> None:
        assigned = args[0] if args else None
        nonlocal opened
        if not opened and assigned:
            opened = True
            await asyncio.get_running_loop().run_in_executor(None, broker.open)

    app.on_partitions_assigned.connect(on_assigned, weak=False)


def _attribution(settings: Settings) -> str:
    """What the worker does otherwise than by default with a call's attribution, for the start-up line."""
    told = []
    if settings.require_feature:
        told.append("calls without feature refused (SPENDSTREAM_REQUIRE_FEATURE)")
    if settings.userid_as != "user_id":
        told.append(f"a usage payload's userId stored as {settings.userid_as} (SPENDSTREAM_USERID_AS)")
    return "".join(f"; {line}" for line in told)


def up(settings: Settings, say: Callable[[str], None], loglevel: str = "WARN") -> None:
    """Run broker (unless external), migrations, SQL endpoint (chDB only) and the worker until stopped."""
    config = settings.load_config()  # refuse a bad config before starting anything
    alerter = build_alerter(settings, config)
    if up_is_running(settings):
        raise StackError(
            f"something already listens on {settings.sql_host}:{settings.sql_port}",
            "another `spendstream up` may be running: stop it, or set SPENDSTREAM_SQL_PORT",
        )
    broker = (
        EmbeddedBroker(
            settings.broker_port,
            settings.home / "broker.log",
            held_topics=(settings.topic(topics.CALLS), settings.topic(topics.OUTCOMES)),
            group=settings.topic("spendstream"),
            tail_dir=settings.home / "broker-tail",
        )
        if settings.embedded_kafka
        else None
    )
    endpoint: SqlEndpoint | None = None
    alerter_stop = threading.Event()
    try:
        if broker is not None:
            broker.start()
        ensure_topics(settings.bootstrap, settings.partitions, settings.kafka_security(), settings.topic_prefix)
        if broker is not None and (replayed := broker.replay_tail()):
            say(f"Kafka: {replayed} events saved when the broker last stopped are in it again")
        say(f"Kafka: {settings.bootstrap} (topic {settings.topic(topics.CALLS)})")
        dsn = engine_dsn(settings)
        migrate(connect(dsn), settings.database)
        if settings.embedded_clickhouse:
            endpoint = SqlEndpoint(
                lambda: connect(dsn, database=settings.database),
                settings.sql_host,
                settings.sql_port,
                settings.database,
                load_or_create_token(settings.home),
                writable=settings.sql_writable,
                limits=settings.query_limits(),
                max_concurrent_queries=settings.sql_max_concurrent_queries,
                max_body_bytes=settings.sql_max_body_bytes,
                request_timeout_s=settings.sql_request_timeout_s,
                max_connections=settings.sql_max_connections,
                max_connections_per_client=settings.sql_max_connections_per_client,
            )
            endpoint.start()
            say(f"SQL: {endpoint.url}/?query=SELECT+count()+FROM+llm_calls  (ClickHouse HTTP interface, sandboxed)")
        threading.Thread(target=alerter.run, args=(alerter_stop,), name="alerter", daemon=True).start()
        say(f"alerter: {alerter.describe()}")
        say(f"worker: pricing calls into ClickHouse{_attribution(settings)}; Ctrl-C stops everything")
        app = build_app(settings, settings.bootstrap, config)
        if broker is not None:
            _open_on_assignment(app, broker)
        run_worker(
            app,
            loglevel,
            before_stop=_drain_in_order(app, broker) if broker is not None else None,
            stop_timeout=settings.stop_timeout_s,
        )
    finally:
        alerter_stop.set()
        if endpoint is not None:
            endpoint.stop()
        if broker is not None:
            broker.stop()
