-- 0012: llm_calls without its bloom filter on event_id.
-- Every lookup by event_id also bounds ts (the sink's duplicate check, the budget agent's check of
-- recent spends, reprice), so the primary key (toDate(ts), event_id) finds the rows; the bloom
-- filter added nothing to those lookups and cost a quarter of each insert's work.
ALTER TABLE llm_calls DROP INDEX IF EXISTS idx_event_id;
