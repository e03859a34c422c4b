-- Retention: completed provider calls past the dedupe horizon are pruned, oldest first.
CREATE INDEX provider_calls_completed ON provider_calls (completed_at) WHERE status <> 'PENDING';
