-- GET /orders/{id}?wait_for=… is woken, not polled: every status change announces the order on
-- `orderflow_order_changed` at commit (a rolled-back change announces nothing). One order-api
-- LISTEN connection per instance fans it out to the requests waiting on that order.
CREATE FUNCTION orderflow_announce_order_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderflow_order_changed', NEW.order_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_announce_change
    AFTER UPDATE OF status, version ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION orderflow_announce_order_change();
