-- Each running consumer instance's view of its partitions — how many it holds, which are paused
-- (their queue full: the worker is behind) and what each worker is waiting for — written every
-- few seconds by the runtime (consumers/runtime/src/status.rs), so the ops console can say why a
-- partition stands still without reaching the instances. A stopping instance deletes its row.
CREATE TABLE IF NOT EXISTS consumer_instances (
    consumer_group  text NOT NULL,
    instance        text NOT NULL,
    assigned        integer NOT NULL,
    -- [{"topic": …, "partition": …, "waiting": "why" | null, "since": rfc3339 | null}]
    paused          jsonb NOT NULL,
    -- the same for partitions not paused (yet) whose worker waits
    waiting         jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, instance)
);
