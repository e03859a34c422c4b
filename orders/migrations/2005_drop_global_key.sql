-- See 2003: keys are unique per caller now (index orders_caller_idempotency_key), no longer alone.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_idempotency_key_key;
