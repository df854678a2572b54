-- 0011: the morning digests posted, one row per (day, channel, data_mode): a digest is posted once,
-- and one that Slack did not take is tried again at the alerter's next check.
CREATE TABLE IF NOT EXISTS digests
(
    day Date,
    channel String,
    data_mode LowCardinality(String),
    posted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(posted_at)
ORDER BY (day, channel, data_mode);
