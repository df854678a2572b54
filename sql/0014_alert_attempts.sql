-- 0014: a post to Slack is recorded before it is made. The alerter writes delivery_state 'posting'
-- with a new attempt_id, then posts with the attempt_id in the message's metadata; when Slack's
-- answer is lost, the alert stays 'posting' until the alerter has looked for that attempt_id in the
-- channel: found, it is 'delivered' (with the message's ts); not found, it is posted again.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS attempt_id String DEFAULT '' AFTER thread_ts;
