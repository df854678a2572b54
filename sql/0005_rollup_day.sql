-- 0005: the per-minute rollup folded into days (same columns as rollup_minute).
-- Fed by a view on rollup_minute, so repricing deltas written to rollup_minute reach it too.
CREATE TABLE IF NOT EXISTS rollup_day AS rollup_minute
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (dimension, key, data_mode, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_day_mv TO rollup_day AS
SELECT
    toDateTime(toStartOfDay(bucket), 'UTC') AS bucket,
    data_mode,
    dimension,
    key,
    sum(calls) AS calls,
    sum(llm_calls) AS llm_calls,
    sum(tool_calls) AS tool_calls,
    sum(errors) AS errors,
    sum(retries) AS retries,
    sum(unpriced_calls) AS unpriced_calls,
    sum(cost_usd) AS cost_usd,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms,
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(ttft_ms) AS ttft_ms
FROM rollup_minute
GROUP BY bucket, data_mode, dimension, key;

-- spendstream:backfill rollup_day_mv
