-- eventwire store, PostgreSQL dialect: the subscriber groups of the SQLite bus
-- (docs/bus-sqlite.md). The bus itself runs on SQLite only; the table exists here too so that
-- both dialects keep one schema and the same store functions work on both.
CREATE TABLE event_store.bus_groups (
    group_name  TEXT        PRIMARY KEY,
    position    BIGINT      NOT NULL, -- the last position the group is done with
    owner       TEXT,                 -- the consumer holding the lease; NULL: nobody
    lease_until TIMESTAMPTZ,          -- when that lease ends unless renewed
    updated_at  TIMESTAMPTZ NOT NULL
);
