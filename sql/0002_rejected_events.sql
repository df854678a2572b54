-- 0002: every event that failed validation, with its raw bytes and a readable reason.
-- Keyed by its source position, so a redelivered bad event collapses to one row.
CREATE TABLE IF NOT EXISTS rejected_events
(
    -- where it came from
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    received_at DateTime64(3, 'UTC'),

    -- what was wrong
    error_kind LowCardinality(String),
    reason String,
    event_id String,

    -- what arrived, byte for byte
    raw String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (topic, partition, offset);
