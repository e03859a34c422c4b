-- no-transaction
-- See 2003: the per-caller uniqueness of idempotency keys.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_caller_idempotency_key ON orders (caller, idempotency_key);
