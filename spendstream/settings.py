"""Settings from ``SPENDSTREAM_*`` environment variables; the config file path is one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.config import SpendstreamConfig, load_config
from schemas.privacy import MIN_KEY_BYTES
from schemas.usage_payload import UserIdAs
from spendstream.sql_policy import QueryLimits


class Settings(BaseSettings):
    """Everything the commands read from the environment. Secrets never print."""

    model_config = SettingsConfigDict(env_prefix="SPENDSTREAM_", frozen=True, extra="ignore")

    home: Path = Path(".spendstream")
    """Where the embedded mode keeps its data (chDB files, Faust state, the SQL endpoint's write token)."""
    config: Path | None = None
    """The YAML config file (price overrides; later budgets, routes, thresholds)."""

    kafka_bootstrap: str | None = None
    """A Kafka cluster (``host:9092,host2:9092``). Unset: the embedded broker of ``spendstream up``."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Prefix of every topic and of the consumer group, to run several installations on one cluster."""
    broker_port: int = Field(default=9092, ge=1, le=65535)
    """Port of the embedded broker on 127.0.0.1."""
    partitions: int = Field(default=4, ge=1, le=1024)
    """Partitions of ``llm.calls`` when spendstream creates it."""
    session_timeout_s: float | None = Field(default=None, ge=1, le=300)
    """Kafka consumer session timeout: how long a dead worker holds its partitions. Unset: see
    :attr:`consumer_session_timeout_s`."""
    stop_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """How long a worker (or ``up``) may take to stop after SIGTERM or Ctrl-C; past it the process exits
    at once, which loses nothing: what the worker had not stored is read again at its next start."""
    budget_sweep_s: float = Field(default=600.0, ge=1, le=86_400)
    """How often a worker forgets the budget keys with no spend left in their periods (a session long over),
    and removes their states from ``spendstream.budgets``."""

    clickhouse_url: SecretStr | None = None
    """A ClickHouse server: ``http(s)://user:pass@host:8123/db``. Unset: chDB under ``home``."""
    database: str = Field(default="spendstream", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The ClickHouse database of spendstream's tables."""
    sql_host: str = "127.0.0.1"
    sql_port: int = Field(default=8123, ge=0, le=65535)
    """Port of the embedded SQL endpoint (ClickHouse's HTTP interface shape)."""
    sql_writable: bool = False
    """Let anonymous clients of the embedded SQL endpoint insert into spendstream's tables (default: read-only)."""
    sql_max_execution_time_s: int = Field(default=30, ge=1, le=86_400)
    """Seconds one query of an endpoint client (not ``admin``) may run."""
    sql_max_memory_bytes: int = Field(default=2 * 1024**3, ge=16 * 1024**2)
    """Memory one query of an endpoint client may take."""
    sql_max_rows_to_read: int = Field(default=2_000_000_000, ge=1)
    """Rows one query of an endpoint client may read."""
    sql_max_result_rows: int = Field(default=5_000_000, ge=1)
    sql_max_result_bytes: int = Field(default=256 * 1024**2, ge=1024)
    sql_max_threads: int = Field(default=2, ge=1, le=256)
    """Threads one query of an endpoint client may use (ingestion keeps the rest)."""
    sql_max_concurrent_queries: int = Field(default=2, ge=1, le=256)
    """Queries of endpoint clients running at once; the next waits up to the request timeout, then gets 503."""
    sql_max_body_bytes: int = Field(default=64 * 1024**2, ge=1024)
    """The largest request body the endpoint takes, before and after decompression."""
    sql_max_query_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024**2)
    """The longest query text of an endpoint client (ClickHouse's ``max_query_size``); longer ones are refused
    before they are parsed."""
    sql_request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a request may take to arrive whole (request line, headers and body, from its first byte;
    408 past it), and an idle kept-alive connection stays open."""
    sql_max_connections: int = Field(default=64, ge=1, le=10_000)
    """Open connections to the endpoint at once; more are refused with 503."""
    sql_max_connections_per_client: int | None = Field(default=None, ge=1, le=10_000)
    """Open connections from one address other than loopback (every local process is 127.0.0.1, and is not
    capped so); more are refused with 503. Unset: half of ``sql_max_connections``."""

    slack_bot_token: SecretStr | None = None
    """A Slack bot token with ``chat:write``: alerts go to the channels of the config's routes."""
    slack_api_url: str = Field(default="https://slack.com/api/", pattern=r"^https?://")
    """The Slack Web API base URL (Enterprise Grid, or a stand-in in tests)."""

    batch_size: int = Field(default=25_000, ge=1, le=1_000_000)
    """The most events one batch holds (a batch is cut sooner after ``batch_seconds``). Larger batches
    cost less per event: against 10,000, 25,000 ran the bench 12% faster with 20% less CPU per event;
    50,000 gained nothing more."""
    batch_seconds: float = Field(default=0.5, gt=0, le=60)
    """The longest an event waits for its batch to fill. After a full batch (a burst, a backlog), the
    rest is written as soon as the worker has read all there is, without waiting this long."""
    max_event_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    user_id_key: SecretStr | None = None
    """The HMAC key of user ids, the SDK's (at least 16 bytes). On the worker, a ``user_id`` not yet
    pseudonymous (a raw id, an e-mail address) is replaced by the SDK's pseudonym of it, the same for
    the same key. Unset: such a user_id that looks like personal data is refused."""
    require_feature: bool = False
    """Tag or reject: refuse every call without a ``feature`` (``error_kind`` ``missing_feature``, in
    ``rejected_events`` and the dead-letter topic) instead of storing it in the ``unattributed`` bucket."""
    userid_as: UserIdAs = "user_id"
    """What the ``userId`` of a hosted cost tracker's usage payload is stored as: ``user_id``, or
    ``tenant_id`` when those SDKs send a tenant or account hash there. ``user_id`` is unchanged."""

    @field_validator("user_id_key")
    @classmethod
    def _user_id_key_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is None or key.get_secret_value() == "":  # set but empty: unset, as the SDK reads it
            return None
        length = len(key.get_secret_value().encode())
        if length < MIN_KEY_BYTES:
            raise ValueError(
                f"the user id key is {length} bytes long; use at least {MIN_KEY_BYTES} random bytes "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`), the SDK's key"
            )
        return key

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def consumer_session_timeout_s(self) -> float:
        """``session_timeout_s``, or 2 s with the embedded broker and 6 s against a Kafka cluster.

        The embedded broker answers a worker's first join to its group after half the session
        timeout, so a restarted ``up`` reads again 1 s after its worker starts rather than 3 s. A
        Kafka cluster refuses a session timeout under its ``group.min.session.timeout.ms`` (6 s
        unless its operators lowered it).
        """
        if self.session_timeout_s is not None:
            return self.session_timeout_s
        return 2.0 if self.embedded_kafka else 6.0

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url is None

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def chdb_path(self) -> Path:
        return (self.home / "chdb").resolve()

    def query_limits(self) -> QueryLimits:
        """The limits of every query of an endpoint client who is not ``admin`` (and of the server-mode profile)."""
        return QueryLimits(
            max_execution_time_s=self.sql_max_execution_time_s,
            max_memory_bytes=self.sql_max_memory_bytes,
            max_rows_to_read=self.sql_max_rows_to_read,
            max_result_rows=self.sql_max_result_rows,
            max_result_bytes=self.sql_max_result_bytes,
            max_threads=self.sql_max_threads,
            max_query_bytes=self.sql_max_query_bytes,
        )

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def kafka_security(self) -> dict[str, Any]:
        """librdkafka-style security settings (empty for PLAINTEXT)."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        conf: dict[str, Any] = {"security.protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        if self.kafka_ssl_ca_location is not None:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        return conf

    def load_config(self) -> SpendstreamConfig:
        return load_config(self.config)
