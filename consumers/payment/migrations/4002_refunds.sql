-- Saga compensation: a cancelled paid order is refunded once, under its own idempotency key.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN ('AUTHORIZED', 'DECLINED', 'REFUNDED'));
ALTER TABLE payments ADD COLUMN refund_reference text;
ALTER TABLE payments ADD COLUMN refunded_at timestamptz;
