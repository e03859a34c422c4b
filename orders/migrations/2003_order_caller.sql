-- An Idempotency-Key belongs to its caller (the token's subject): two callers sending one key no
-- longer meet, and one cannot get another's answer replayed. Orders accepted before this keep
-- caller '' and are still found by key alone (order-api checks them while any exist), so a
-- client retrying across the upgrade still gets its order once. 2004 builds the new unique
-- index CONCURRENTLY (orders keep being accepted meanwhile; alone in its file, since Postgres
-- runs a multi-statement string in one transaction), 2005 drops the key-only constraint.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS caller text NOT NULL DEFAULT '';
