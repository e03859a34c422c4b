-- The relay deletes a row once the broker acknowledged it, so no published rows accumulate
-- and the clean-up index is dead weight on every insert.
DROP INDEX IF EXISTS outbox_published_at;
