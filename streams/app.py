"""The Faust app: its settings, topics and agents, built for one deployment."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.auth import SASLCredentials, SSLCredentials

from sinks.sink import ClickHouseSink
from streams.agents import register_ingest
from streams.config import StreamConfig
from streams.ingest import Ingestor
from streams.pricing import Pricer


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


def create_app(config: StreamConfig, *, sink: ClickHouseSink, pricer: Pricer) -> faust.App:
    """A Faust app consuming ``llm.calls`` and writing priced calls through ``sink``."""
    app = faust.App(
        config.app_id,
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
        broker_heartbeat_interval=max(1.0, config.session_timeout / 5),
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, config.batch_size * 2),
        broker_max_poll_records=config.batch_size,
    )
    calls = app.topic(config.calls_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    dlq = app.topic(config.dlq_topic, value_type=bytes, key_type=bytes, partitions=config.partitions)
    ingestor = Ingestor(pricer, config.calls_topic, config.max_event_bytes)
    register_ingest(app, calls, dlq, ingestor, sink, config.batch_size, config.batch_seconds)
    return app
