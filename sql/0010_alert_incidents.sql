-- 0010: alerts form incidents. Alerts with the same dedup_key are one incident until one of them
-- says 'resolved'; the alerter posts an incident's first alert as a message and later ones in its
-- thread (thread_ts), at most once per group interval.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'firing' AFTER data_mode;

-- when the alert was first stored (wall clock): the group wait counts from here
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS raised_at DateTime64(3, 'UTC') DEFAULT now64(3) AFTER status;

-- the Slack message the alert was posted as, or in whose thread; '' before delivery or for webhooks
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS thread_ts String DEFAULT '' AFTER attempts;
