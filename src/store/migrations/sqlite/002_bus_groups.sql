-- eventwire store, SQLite dialect: the subscriber groups of the SQLite bus (EVENT_BUS_TYPE=sqlite,
-- docs/bus-sqlite.md), for which the log is the bus. A group's row says where it is in the log
-- and which consumer reads for it. Position and lease are changed by single-row UPDATEs that
-- only the holder of the lease makes (WHERE owner = ...), so they stay cheap.
CREATE TABLE event_store.bus_groups (
    group_name  TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL, -- the last position the group is done with: it resumes after it
    owner       TEXT,             -- the consumer holding the lease (host/pid namespace/pid/random)
    lease_until TEXT,             -- when that lease ends unless renewed; NULL: nobody holds it
    updated_at  TEXT    NOT NULL
) WITHOUT ROWID;
