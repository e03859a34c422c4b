-- no-transaction
-- Retention: the pruner deletes a group's dedupe rows older than the horizon, oldest first, in
-- small batches. Built CONCURRENTLY so a large existing table keeps taking writes meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS processed_events_age ON processed_events (consumer_group, processed_at);
