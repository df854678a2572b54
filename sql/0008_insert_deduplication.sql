-- 0008: remember recent insert blocks, so a retried insert (same insert_deduplication_token) is
-- written exactly once to llm_calls and to every rollup its materialized views feed.
-- The sink retries an interrupted batch as the same insert: see sinks/journal.py.
ALTER TABLE llm_calls MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE rollup_minute MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE rollup_hour MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE rollup_day MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE trace_rollup MODIFY SETTING non_replicated_deduplication_window = 10000;
