-- 0009: every alert ever raised, with its dedup key and delivery state.
-- An alert raised twice (a restarted worker re-raising it) has the same alert_id and collapses here.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    ts DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    severity LowCardinality(String),
    dimension LowCardinality(String),
    key String,
    value Float64,
    baseline Nullable(Float64),
    threshold Nullable(Float64),
    window LowCardinality(String),
    message String,
    query String,
    dedup_key String,
    data_mode LowCardinality(String),

    -- delivery: 'pending' until delivered to its route's channel ('delivered'), or 'unrouted' when
    -- no route matches; every change is a new row version (read with FINAL)
    delivery_state LowCardinality(String) DEFAULT 'pending',
    channel String DEFAULT '',
    delivery_error String DEFAULT '',
    attempts UInt32 DEFAULT 0,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (alert_id);
