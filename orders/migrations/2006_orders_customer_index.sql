-- no-transaction
-- The ops console finds a customer's orders, newest first (support tickets name the customer).
-- Built concurrently: intake keeps writing while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_newest ON orders (customer_id, created_at DESC);
