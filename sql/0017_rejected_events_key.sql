-- 0017: a rejection keeps its row when the broker starts its offsets again.
-- rejected_events was keyed by (topic, partition, offset) alone. The embedded broker keeps its log in
-- memory: after a restart its offsets start at 0 again, new rejections took the keys of earlier ones
-- and ReplacingMergeTree replaced them (1,086 lost in one restart). raw_hash, a hash of the bytes kept
-- and the record's size written by the sink, ends the key: a record delivered again (a worker that
-- crashed before it acknowledged) still collapses to one row, another record at the same position has
-- its own. A metadata change: rows stored before keep raw_hash 0.
ALTER TABLE rejected_events
    ADD COLUMN IF NOT EXISTS raw_hash UInt64,
    MODIFY ORDER BY (topic, partition, offset, raw_hash);

-- raw holds at most the first SPENDSTREAM_MAX_EVENT_BYTES of a record (it is cut only when the record
-- was refused as oversize); raw_size is the record's full length, so length(raw) < raw_size says it was cut.
ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS raw_size UInt64 DEFAULT length(raw) AFTER raw;
