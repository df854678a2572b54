-- 0003: spend, tokens, calls, errors and latency per minute, per dimension and key.
-- One row per (minute, data_mode, dimension, key): dimension is 'all' (key 'all') or an event field
-- (feature, model, provider, prompt_version as 'feature@version', agent_id, tenant_id, user_id, team,
-- environment). Finance queries filter data_mode = 'real'.
CREATE TABLE IF NOT EXISTS rollup_minute
(
    -- what and when
    bucket DateTime('UTC'),
    data_mode LowCardinality(String),
    dimension LowCardinality(String),
    key String,

    -- counts
    calls SimpleAggregateFunction(sum, UInt64),
    llm_calls SimpleAggregateFunction(sum, UInt64),
    tool_calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    retries SimpleAggregateFunction(sum, UInt64),
    unpriced_calls SimpleAggregateFunction(sum, UInt64),

    -- spend (USD)
    cost_usd SimpleAggregateFunction(sum, Float64),

    -- tokens
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_tokens SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens SimpleAggregateFunction(sum, UInt64),

    -- latency quantiles (p50, p95, p99): read with quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ms)
    latency_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    ttft_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (dimension, key, data_mode, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_mv TO rollup_minute AS
SELECT
    toStartOfMinute(ts) AS bucket,
    data_mode,
    dim.1 AS dimension,
    dim.2 AS key,
    count() AS calls,
    countIf(kind = 'llm') AS llm_calls,
    countIf(kind = 'tool') AS tool_calls,
    countIf(status != 'success') AS errors,
    countIf(attempt > 1) AS retries,
    countIf(priced = 0) AS unpriced_calls,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(assumeNotNull(latency_ms), isNotNull(latency_ms)) AS latency_ms,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), isNotNull(ttft_ms)) AS ttft_ms
FROM llm_calls
ARRAY JOIN [
    ('all', 'all'),
    ('feature', toString(feature)),
    ('model', toString(model)),
    ('provider', toString(provider)),
    ('prompt_version', if(prompt_version = '', '', concat(toString(feature), '@', toString(prompt_version)))),
    ('agent_id', agent_id),
    ('tenant_id', tenant_id),
    ('user_id', user_id),
    ('team', toString(team)),
    ('environment', toString(environment))
] AS dim
WHERE dim.2 != ''
GROUP BY bucket, data_mode, dimension, key;

-- spendstream:backfill rollup_minute_mv
