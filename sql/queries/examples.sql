-- Example queries over spendstream's tables (database spendstream).
-- Run one with: spendstream sql "<query>"  or  curl 'http://127.0.0.1:8123/' --data-binary "<query>"
-- Finance numbers count only real traffic: data_mode = 'real' (the demo sends data_mode 'demo').

-- Q: top features by spend today
SELECT key AS feature, round(sum(cost_usd), 4) AS spend_usd, sum(calls) AS n_calls
FROM rollup_hour
WHERE dimension = 'feature' AND bucket >= toStartOfDay(now()) AND data_mode = 'real'
GROUP BY feature ORDER BY spend_usd DESC LIMIT 10;

-- Q: top models, tenants and users by spend today (five of each)
SELECT dimension, key, round(sum(cost_usd), 4) AS spend_usd
FROM rollup_hour
WHERE dimension IN ('model', 'tenant_id', 'user_id') AND bucket >= toStartOfDay(now()) AND data_mode = 'real'
GROUP BY dimension, key ORDER BY dimension, spend_usd DESC LIMIT 5 BY dimension;

-- Q: cost per 1,000 calls per feature, last 7 days
SELECT key AS feature, round(1000 * sum(cost_usd) / sum(calls), 4) AS usd_per_1k_calls, sum(calls) AS n_calls
FROM rollup_day
WHERE dimension = 'feature' AND bucket >= today() - 7 AND data_mode = 'real'
GROUP BY feature ORDER BY usd_per_1k_calls DESC;

-- Q: cost per 1,000 runs and per 1,000 calls per feature, last 7 days: a run is a request, one trace however
-- many calls and agents it took, and a call without a trace_id is a run of its own. A run that touched several
-- features counts for each (counted from llm_calls: the rollups hold calls, not traces)
SELECT toString(feature) AS feature, round(sum(ifNull(cost_usd, 0)), 4) AS spend_usd, count() AS n_calls,
       uniqExactIf(trace_id, trace_id != '') + countIf(trace_id = '') AS n_runs,
       round(1000 * spend_usd / n_calls, 4) AS usd_per_1k_calls, round(1000 * spend_usd / n_runs, 4) AS usd_per_1k_runs
FROM llm_calls
WHERE ts >= today() - 7 AND data_mode = 'real'
GROUP BY feature ORDER BY usd_per_1k_runs DESC;

-- Q: a budget's burn: a tenant's spend per day this month and the five weeks before (the month-end forecast's
-- input: `spendstream budgets` and the report show the projection)
SELECT toDate(bucket) AS day, toDayOfWeek(day) >= 6 AS weekend, round(sum(cost_usd), 4) AS spend_usd,
       round(sum(spend_usd) OVER (PARTITION BY toStartOfMonth(day) ORDER BY day), 4) AS month_to_date_usd
FROM rollup_day
WHERE dimension = 'tenant_id' AND key = 'tenant_acme' AND data_mode = 'real'
  AND bucket >= least(toStartOfMonth(today()), today() - 35)
GROUP BY day ORDER BY day;

-- Q: spend and tokens per call by prompt version (key is 'feature@version')
SELECT key AS feature_at_version, round(sum(cost_usd), 4) AS spend_usd, sum(calls) AS n_calls,
       round(sum(input_tokens + output_tokens) / sum(calls)) AS tokens_per_call
FROM rollup_day
WHERE dimension = 'prompt_version' AND bucket >= today() - 7 AND data_mode = 'real'
GROUP BY key ORDER BY key;

-- Q: unattributed share of spend today (calls with no feature tag)
SELECT round(sumIf(cost_usd, dimension = 'feature' AND key = 'unattributed')
             / nullIf(sumIf(cost_usd, dimension = 'all'), 0), 4) AS unattributed_share
FROM rollup_hour
WHERE bucket >= toStartOfDay(now()) AND data_mode = 'real';

-- Q: cost per trace: the most expensive requests of the last 24 hours, root call and all under it
SELECT trace_id, any(root_feature) AS root_feature, sum(calls) AS n_calls, round(sum(cost_usd), 4) AS cost_usd,
       dateDiff('millisecond', min(first_ts), max(last_end_ts)) AS duration_ms
FROM trace_rollup
WHERE data_mode = 'real'
GROUP BY trace_id HAVING min(first_ts) >= now() - INTERVAL 1 DAY
ORDER BY cost_usd DESC LIMIT 10;

-- Q: p95 latency and TTFT per model over the last hour (milliseconds)
SELECT key AS model, quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ms)[2] AS p95_latency_ms,
       quantilesTDigestMerge(0.5, 0.95, 0.99)(ttft_ms)[2] AS p95_ttft_ms, sum(calls) AS n_calls
FROM rollup_minute
WHERE dimension = 'model' AND bucket >= now() - INTERVAL 1 HOUR
GROUP BY model ORDER BY p95_latency_ms DESC;

-- Q: sessions that called one tool with the same arguments again and again, last 24 hours (retries aside;
-- args_hash is a digest of the arguments: the arguments themselves never left the application)
SELECT if(session_id != '', session_id, trace_id) AS session, tool_name, args_hash, count() AS times,
       min(ts) AS first_ts, max(ts) AS last_ts, any(feature) AS feature, any(agent_id) AS agent_id
FROM llm_calls
WHERE kind = 'tool' AND args_hash != '' AND attempt = 1 AND status != 'cancelled'
  AND ts >= now() - INTERVAL 1 DAY AND data_mode = 'real'
GROUP BY session, tool_name, args_hash HAVING times >= 3
ORDER BY times DESC LIMIT 20;

-- Q: rejected events of the last day and why
SELECT error_kind, reason, count() AS events, any(event_id) AS example_event_id
FROM rejected_events
WHERE received_at >= now() - INTERVAL 1 DAY
GROUP BY error_kind, reason ORDER BY events DESC LIMIT 20;

-- Q: cost per outcome per feature, last 7 days: the feature's whole spend over its outcomes
SELECT o.feature AS feature, o.outcome AS outcome, o.n_outcomes AS n_outcomes, round(s.usd, 2) AS spend_usd,
       round(s.usd / o.n_outcomes, 4) AS usd_per_outcome
FROM
(
    SELECT feature, outcome, count() AS n_outcomes
    FROM outcomes FINAL
    WHERE ts >= today() - 7 AND data_mode = 'real' AND feature != ''
    GROUP BY feature, outcome
) AS o
LEFT JOIN
(
    SELECT key AS feature, sum(cost_usd) AS usd
    FROM rollup_day
    WHERE dimension = 'feature' AND bucket >= today() - 7 AND data_mode = 'real'
    GROUP BY key
) AS s ON s.feature = o.feature
ORDER BY usd_per_outcome DESC;

-- Q: cost per outcome from the requests that reached it, last 7 days: each outcome joins the calls of
-- its trace (or, without a trace_id, of its session)
WITH
    by_trace AS (SELECT trace_id, sum(ifNull(cost_usd, 0)) AS usd FROM llm_calls
                 WHERE ts >= today() - 8 AND data_mode = 'real' AND trace_id != '' GROUP BY trace_id),
    by_session AS (SELECT session_id, sum(ifNull(cost_usd, 0)) AS usd FROM llm_calls
                   WHERE ts >= today() - 8 AND data_mode = 'real' AND session_id != '' GROUP BY session_id)
SELECT o.outcome AS outcome, count() AS n_outcomes,
       round(sum(if(o.trace_id != '', t.usd, s.usd)), 6) AS spend_usd,
       round(spend_usd / n_outcomes, 6) AS usd_per_outcome
FROM (SELECT outcome, trace_id, session_id FROM outcomes FINAL WHERE ts >= today() - 7 AND data_mode = 'real') AS o
LEFT JOIN by_trace AS t ON t.trace_id = o.trace_id
LEFT JOIN by_session AS s ON s.session_id = o.session_id
GROUP BY outcome ORDER BY usd_per_outcome DESC;

-- Q: tokens per successful outcome per feature and prompt version, last 7 days: the tokens of the calls
-- of the requests (traces, else sessions) that reached an outcome, over the outcomes they reached
SELECT feature, prompt_version, uniqExact(outcome_id) AS n_outcomes, sum(tokens) AS n_tokens,
       round(n_tokens / n_outcomes) AS tokens_per_outcome
FROM
(
    SELECT c.feature AS feature, c.prompt_version AS prompt_version, o.event_id AS outcome_id,
           c.input_tokens + c.output_tokens AS tokens
    FROM (SELECT event_id, trace_id FROM outcomes FINAL
          WHERE ts >= today() - 7 AND data_mode = 'real' AND trace_id != '') AS o
    INNER JOIN (SELECT * FROM llm_calls WHERE ts >= today() - 8 AND data_mode = 'real') AS c
        ON c.trace_id = o.trace_id
    UNION ALL
    SELECT c.feature, c.prompt_version, o.event_id, c.input_tokens + c.output_tokens
    FROM (SELECT event_id, session_id FROM outcomes FINAL
          WHERE ts >= today() - 7 AND data_mode = 'real' AND trace_id = '' AND session_id != '') AS o
    INNER JOIN (SELECT * FROM llm_calls WHERE ts >= today() - 8 AND data_mode = 'real') AS c
        ON c.session_id = o.session_id
)
GROUP BY feature, prompt_version ORDER BY feature, prompt_version;
