"""The Faust app: its settings, topics and agents, built for one deployment."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.auth import SASLCredentials, SSLCredentials

from sinks.sink import ClickHouseSink
from streams.agents import (
    PartialsRouting,
    SpendRouting,
    alert_raiser,
    register_ingest,
    register_outcomes,
    send_until_acked,
)
from streams.batching import ChunkingApp
from streams.budget_agent import BudgetOwner, register_budgets
from streams.budgets import BudgetBook, Budgets
from streams.config import StreamConfig
from streams.detector_agent import DetectorOwner, register_detectors
from streams.detectors.engine import Detectors
from streams.detectors.routing import PartialsRouter
from streams.ingest import Ingestor
from streams.kill_switches import register_kill_switches
from streams.outcomes import OutcomeIngestor
from streams.pricing import Pricer

# The ingest agent's batch arrives in this many chunks at most: few enough that Faust's per-message
# cost vanishes, enough that a trickle of events still fills a batch before it is written.
CHUNKS_PER_BATCH = 20


def _credentials(security: dict[str, Any]) -> Any:
    protocol = str(security.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=security.get("ssl.ca.location")) if "SSL" in protocol else None
    if protocol.startswith("SASL"):
        return SASLCredentials(
            username=security.get("sasl.username"),
            password=security.get("sasl.password"),
            mechanism=security.get("sasl.mechanism", "PLAIN"),
            ssl_context=context,
        )
    return SSLCredentials(context)


def create_app(
    config: StreamConfig,
    *,
    sink: ClickHouseSink,
    pricer: Pricer,
    detectors: Detectors | None = None,
    budgets: Budgets | None = None,
) -> faust.App:
    """A Faust app consuming ``llm.calls`` and writing priced calls through ``sink``.

    ``detectors`` watch the stored calls: each key's in the worker owning its partition of
    ``spendstream.detector-partials`` (the detector agent); ``budgets`` (when any) get the budget agent.
    """
    chunk_records = max(1, config.batch_size // CHUNKS_PER_BATCH)
    app = ChunkingApp(
        config.app_id,
        batched_topics=frozenset({config.calls_topic, config.outcomes_topic}),
        chunk_records=chunk_records,
        broker=[f"kafka://{server}" for server in config.bootstrap.split(",")],
        broker_credentials=_credentials(config.kafka_security),
        datadir=str(config.data_dir),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=config.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.session_timeout,
        broker_heartbeat_interval=config.session_timeout / 5,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=2 * CHUNKS_PER_BATCH,
        broker_max_poll_records=config.batch_size,
    )
    calls = app.topic(config.calls_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    dlq = app.topic(config.dlq_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    alerts = app.topic(config.alerts_topic, value_type=bytes, key_type=bytes, partitions=1)
    outcomes = app.topic(config.outcomes_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    ingestor = Ingestor(
        pricer, config.calls_topic, config.max_event_bytes, user_id_key=config.user_id_key,
        require_feature=config.require_feature, user_id_as=config.user_id_as,
    )  # fmt: skip
    max_chunks = -(-config.batch_size // chunk_records)
    routing = None
    states = app.topic(config.budgets_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    register_kill_switches(app, states, sink, send_until_acked, config.partitions)
    if budgets:
        spend = app.topic(config.budget_spend_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
        owner = BudgetOwner(BudgetBook(budgets, config.budget_sweep_seconds), sink, config.partitions)
        register_budgets(app, spend, states, owner, alert_raiser(alerts, sink), send_until_acked)
        routing = SpendRouting(spend, budgets, config.partitions)
    partials = None
    if detectors is not None:
        topic = app.topic(
            config.detector_partials_topic, value_type=bytes, key_type=bytes, partitions=config.partitions
        )
        detector_owner = DetectorOwner(detectors.config, config.partitions)
        register_detectors(app, topic, detector_owner, sink, alert_raiser(alerts, sink))
        partials = PartialsRouting(topic, PartialsRouter(detectors, config.partitions))
    register_ingest(
        app, calls, dlq, alerts, ingestor, sink, max_chunks, config.batch_seconds, partials, routing,
        max_raw_bytes=config.max_event_bytes,
    )  # fmt: skip
    outcome_ingestor = OutcomeIngestor(config.outcomes_topic, config.max_event_bytes)
    register_outcomes(
        app, outcomes, dlq, outcome_ingestor, sink, max_chunks, config.batch_seconds,
        max_raw_bytes=config.max_event_bytes,
    )  # fmt: skip
    return app
