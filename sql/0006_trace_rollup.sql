-- 0006: one row per trace: the total cost of a root call and everything under it.
CREATE TABLE IF NOT EXISTS trace_rollup
(
    -- the trace and its root call (the call with no parent_id)
    trace_id String,
    data_mode LowCardinality(String),
    root_event_id SimpleAggregateFunction(max, String),
    root_feature SimpleAggregateFunction(max, String),
    tenant_id SimpleAggregateFunction(max, String),
    session_id SimpleAggregateFunction(max, String),

    -- extent in time
    first_ts SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_end_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC')),

    -- counts, spend and tokens of every call in the trace
    calls SimpleAggregateFunction(sum, UInt64),
    tool_calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Float64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),

    -- who took part
    agents SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    features SimpleAggregateFunction(groupUniqArrayArray, Array(String))
)
ENGINE = AggregatingMergeTree
ORDER BY (trace_id, data_mode);

CREATE MATERIALIZED VIEW IF NOT EXISTS trace_rollup_mv TO trace_rollup AS
SELECT
    trace_id,
    data_mode,
    max(if(parent_id = '', event_id, '')) AS root_event_id,
    max(if(parent_id = '', toString(feature), '')) AS root_feature,
    max(tenant_id) AS tenant_id,
    max(session_id) AS session_id,
    min(ts) AS first_ts,
    max(ts + toIntervalMillisecond(toUInt64(ifNull(latency_ms, 0)))) AS last_end_ts,
    count() AS calls,
    countIf(kind = 'tool') AS tool_calls,
    countIf(status != 'success') AS errors,
    sum(ifNull(cost_usd, 0)) AS cost_usd,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    groupUniqArrayIf(agent_id, agent_id != '') AS agents,
    groupUniqArray(toString(feature)) AS features
FROM llm_calls
WHERE trace_id != ''
GROUP BY trace_id, data_mode;

-- spendstream:backfill trace_rollup_mv
