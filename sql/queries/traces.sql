-- Hierarchical attribution: one request (a trace) as a tree of calls, and agents across requests.
-- Every call carries trace_id and parent_id (the SDK's track() sets them for nested calls, across
-- threads and asyncio tasks); a trace's root call is its call with no parent_id.
-- Run one with parameters: spendstream trace TRACE_ID (the first four), or
--   curl 'http://127.0.0.1:8123/?param_trace_id=...' --data-binary @query.sql
-- Each query starts at a "-- name:" line; spendstream reads them from this file.

-- name: call_tree
-- Q: every call of one trace with its depth (root 0), its own cost, and the cost of it and everything under it
WITH RECURSIVE tree AS (
    SELECT event_id, 0 AS depth, [(ts, event_id)] AS path
    FROM llm_calls WHERE trace_id = {trace_id:String} AND parent_id = ''
    UNION ALL
    SELECT c.event_id, t.depth + 1, arrayPushBack(t.path, (c.ts, c.event_id))
    FROM llm_calls AS c INNER JOIN tree AS t ON c.parent_id = t.event_id
    WHERE c.trace_id = {trace_id:String} AND t.depth < 64
),
calls AS (
    SELECT event_id, agent_id, kind, if(kind = 'tool', toString(tool_name), toString(model)) AS what,
           ifNull(cost_usd, 0) AS cost, latency_ms
    FROM llm_calls WHERE trace_id = {trace_id:String}
),
under AS (
    SELECT arrayJoin(path).2 AS event_id, sum(cost) AS total
    FROM tree INNER JOIN calls USING (event_id) GROUP BY event_id
)
SELECT depth, event_id, agent_id, kind, what, round(cost, 6) AS own_usd, round(total, 6) AS total_usd, latency_ms
FROM tree INNER JOIN calls USING (event_id) INNER JOIN under USING (event_id)
ORDER BY path;

-- name: cost_by_depth_and_agent
-- Q: one trace's cost per depth and agent
WITH RECURSIVE tree AS (
    SELECT event_id, 0 AS depth FROM llm_calls WHERE trace_id = {trace_id:String} AND parent_id = ''
    UNION ALL
    SELECT c.event_id, t.depth + 1 FROM llm_calls AS c INNER JOIN tree AS t ON c.parent_id = t.event_id
    WHERE c.trace_id = {trace_id:String} AND t.depth < 64
)
SELECT depth, agent_id, count() AS n_calls, round(sum(ifNull(cost_usd, 0)), 6) AS usd
FROM tree
INNER JOIN (SELECT event_id, agent_id, cost_usd FROM llm_calls WHERE trace_id = {trace_id:String}) AS c USING (event_id)
GROUP BY depth, agent_id ORDER BY depth, usd DESC, agent_id;

-- name: critical_path
-- Q: one trace's critical path: the chain of calls from the root to the call with no children that
-- finished last, when each step ended after the request's start, and how long the request took
WITH RECURSIVE tree AS (
    SELECT event_id, parent_id, [event_id] AS path FROM llm_calls WHERE trace_id = {trace_id:String} AND parent_id = ''
    UNION ALL
    SELECT c.event_id, c.parent_id, arrayPushBack(t.path, c.event_id)
    FROM llm_calls AS c INNER JOIN tree AS t ON c.parent_id = t.event_id
    WHERE c.trace_id = {trace_id:String} AND length(t.path) < 64
),
calls AS (
    SELECT event_id, ts, ts + toIntervalMillisecond(toUInt64(ifNull(latency_ms, 0))) AS ends, agent_id,
           if(kind = 'tool', toString(tool_name), toString(model)) AS what, latency_ms
    FROM llm_calls WHERE trace_id = {trace_id:String}
),
last_leaf AS (
    SELECT path FROM tree INNER JOIN calls USING (event_id)
    WHERE event_id NOT IN (SELECT parent_id FROM tree) ORDER BY ends DESC, event_id LIMIT 1
)
SELECT step, event_id, agent_id, what, latency_ms,
       dateDiff('millisecond', (SELECT min(ts) FROM calls), ends) AS ends_after_ms,
       (SELECT dateDiff('millisecond', min(ts), max(ends)) FROM calls) AS request_ms
FROM (SELECT arrayJoin(arrayEnumerate(path)) AS step, path[step] AS event_id FROM last_leaf) AS p
INNER JOIN calls USING (event_id)
ORDER BY step;

-- name: unreached_calls
-- Q: calls of one trace that no chain from its root reaches (a parent never stored): not in the tree above
WITH RECURSIVE tree AS (
    SELECT event_id, 0 AS depth FROM llm_calls WHERE trace_id = {trace_id:String} AND parent_id = ''
    UNION ALL
    SELECT c.event_id, t.depth + 1 FROM llm_calls AS c INNER JOIN tree AS t ON c.parent_id = t.event_id
    WHERE c.trace_id = {trace_id:String} AND t.depth < 64
)
SELECT count() AS n_calls, round(sum(ifNull(cost_usd, 0)), 6) AS usd
FROM llm_calls WHERE trace_id = {trace_id:String} AND event_id NOT IN (SELECT event_id FROM tree);

-- name: agents_by_workflow
-- Q: across requests: which agent is the expensive one in each workflow (the root call's feature), last N days
SELECT r.root_feature AS workflow, c.agent_id AS agent_id, count() AS n_calls, uniqExact(c.trace_id) AS n_traces,
       round(sum(ifNull(c.cost_usd, 0)), 6) AS usd, round(usd / n_traces, 6) AS usd_per_trace,
       round(usd / sum(usd) OVER (PARTITION BY workflow), 4) AS share
FROM llm_calls AS c
INNER JOIN (SELECT trace_id, max(root_feature) AS root_feature FROM trace_rollup
            WHERE data_mode = {data_mode:String} GROUP BY trace_id) AS r ON c.trace_id = r.trace_id
WHERE c.data_mode = {data_mode:String} AND c.trace_id != '' AND c.ts >= now() - toIntervalDay({days:UInt32})
GROUP BY workflow, agent_id ORDER BY workflow, usd DESC, agent_id;
