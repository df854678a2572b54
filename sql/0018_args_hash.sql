-- 0018: llm_calls keeps each tool call's args_hash, a digest of its arguments (the SDK makes it from
-- track(args=...); the arguments themselves never leave the application), so that loop detection and
-- a query can see one tool called with the same arguments again and again. Empty: not given.
-- A metadata change: calls stored before read ''. No view reads it: the rollups group by the same
-- dimensions as before, and each view selects its columns by name.
ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS args_hash String AFTER prompt_hash;
