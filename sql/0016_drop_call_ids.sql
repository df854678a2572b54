-- 0016: call_ids (0013) goes: the duplicate check reads event_ids (0015), and nothing else read it.
-- Its view was one more table written by every insert into llm_calls.
DROP VIEW IF EXISTS call_ids_mv;
DROP TABLE IF EXISTS call_ids;
