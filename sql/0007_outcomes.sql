-- 0007: outcome events (llm.outcomes): what a trace or session achieved, for cost per outcome.
-- Deduplicated by event_id at merge time: query with FINAL (or count distinct event_id).
CREATE TABLE IF NOT EXISTS outcomes
(
    event_id String,
    ts DateTime64(3, 'UTC'),
    outcome LowCardinality(String),
    value Float64,

    -- what it joins to: llm_calls.trace_id / llm_calls.session_id
    trace_id String,
    session_id String,
    feature LowCardinality(String),
    tenant_id String,
    data_mode LowCardinality(String),

    -- where it came from
    source_partition UInt32,
    source_offset UInt64,

    INDEX idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), event_id);
