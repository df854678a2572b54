-- 0019: the kill switches set and lifted with `spendstream kill` / `unkill`, kept where a restart
-- cannot lose them (the embedded broker keeps spendstream.budgets in memory): a worker publishes the
-- active ones to spendstream.budgets again when it starts, and a tombstone for each lifted one.
-- One row per kill or unkill; a scope's latest row (updated_at) says whether it is set.
CREATE TABLE IF NOT EXISTS kill_switches
(
    -- what it covers: its scope on spendstream.budgets (kill:*, kill:agent_id=coder, ...)
    scope String,
    -- set (1) or lifted (0), and the state a guard reads (BudgetState JSON; '' when lifted)
    active UInt8,
    state String,
    -- when, by the ClickHouse server's clock (one clock orders the kills and unkills of every machine)
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY scope;
