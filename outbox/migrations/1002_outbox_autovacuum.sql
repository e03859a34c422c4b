-- The outbox is a queue: it grows and shrinks by thousands of rows a second. Keep statistics
-- and dead tuples in step with it rather than with the default 10-20 % thresholds.
ALTER TABLE outbox SET (
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000
);
