-- 0001: one row per priced call, deduplicated by event_id.
-- The sink inserts only event_ids it has not stored yet, so the materialized views that read this
-- table see every call once; ReplacingMergeTree collapses any duplicate that slips past it.
CREATE TABLE IF NOT EXISTS llm_calls
(
    -- identity and time
    event_id String,
    ts DateTime64(3, 'UTC'),
    provider LowCardinality(String),
    model LowCardinality(String),
    kind LowCardinality(String),
    tool_name LowCardinality(String),

    -- attribution (empty string: not given; feature 'unattributed' when missing)
    feature LowCardinality(String),
    prompt_version LowCardinality(String),
    agent_id String,
    task_id String,
    session_id String,
    trace_id String,
    parent_id String,
    user_id String,
    tenant_id String,
    team LowCardinality(String),
    environment LowCardinality(String),
    data_mode LowCardinality(String),
    tags Map(String, String),
    prompt_hash String,

    -- usage: input_tokens counts every prompt token (cached included), output_tokens every generated one
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    reasoning_tokens UInt64,

    -- behaviour
    latency_ms Nullable(Float32),
    ttft_ms Nullable(Float32),
    status LowCardinality(String),
    error_type String,
    attempt UInt16,

    -- price: the unit prices used (USD per million tokens) and where they came from
    cost_usd Nullable(Float64),
    priced UInt8,
    price_source LowCardinality(String),
    input_price_per_mtok Float64,
    output_price_per_mtok Float64,
    cache_read_price_per_mtok Float64,
    cache_write_price_per_mtok Float64,

    -- provenance
    source_partition UInt32,
    source_offset UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),

    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), event_id);
