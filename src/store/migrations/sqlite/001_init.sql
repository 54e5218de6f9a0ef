-- eventwire store, SQLite dialect: the initial schema. The database file is attached to the
-- connection as event_store, so every name here is event_store.<table>, as in PostgreSQL.
-- Times are TEXT, RFC 3339 UTC with microseconds ("2026-11-27T02:24:45.123456Z"): they sort.
-- Indexes are kept to those a query needs: each one costs every append a page write.

-- The log. position is the rowid, handed out by the single writer (BEGIN IMMEDIATE) as the last
-- position + 1, so it is gap-free and in commit order. A stream's version is the largest of its
-- events', found through UNIQUE (stream_id, version); the purge records in streams and positions
-- what it deletes, so that neither a position nor a version is ever handed out twice.
CREATE TABLE event_store.events (
    position      INTEGER PRIMARY KEY,
    event_id      TEXT    NOT NULL UNIQUE,
    stream_id     TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    event_type    TEXT    NOT NULL,
    event_version INTEGER NOT NULL,
    data          TEXT    NOT NULL, -- the JSON of the event's data
    metadata      TEXT    NOT NULL, -- the CloudEvents envelope without data, a JSON object
    recorded_at   TEXT    NOT NULL,
    expires_at    TEXT,             -- NULL: kept forever (EVENT_STORE_TTL_DAYS was 0)
    UNIQUE (stream_id, version)
);

-- The purge finds expired events here; expiry grows with position, so appends touch one page.
CREATE INDEX event_store.events_expires_at ON events (expires_at) WHERE expires_at IS NOT NULL;

-- The version of each stream whose newest events the purge deleted (its version is then this).
CREATE TABLE event_store.streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL
) WITHOUT ROWID;

-- One row: the last position when the purge last ran, so that positions go on after it even when
-- it deleted the newest events.
CREATE TABLE event_store.positions (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO event_store.positions (id, position) VALUES (1, 0);

CREATE TABLE event_store.dead_letter_queue (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT,             -- NULL when the message could not be read
    event_name       TEXT,             -- the event type, e.g. user.registered
    handler          TEXT    NOT NULL,
    subscriber_group TEXT    NOT NULL,
    event            TEXT    NOT NULL, -- the CloudEvent JSON, or the raw message
    error            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    first_failed_at  TEXT    NOT NULL,
    last_failed_at   TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'retried', 'resolved', 'discarded')),
    updated_at       TEXT    NOT NULL,
    UNIQUE (event_id, handler, subscriber_group)
);
CREATE INDEX event_store.dead_letter_queue_name ON dead_letter_queue (event_name, last_failed_at);
CREATE INDEX event_store.dead_letter_queue_last ON dead_letter_queue (last_failed_at);

-- The inbox: which handler ("group/name") processed which event.
CREATE TABLE event_store.processed_events (
    handler      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (handler, event_id)
) WITHOUT ROWID;
CREATE INDEX event_store.processed_events_at ON processed_events (processed_at);

CREATE TABLE event_store.outbox (
    id         INTEGER PRIMARY KEY,
    event_id   TEXT    NOT NULL UNIQUE,
    event      TEXT    NOT NULL, -- the CloudEvent JSON
    created_at TEXT    NOT NULL,
    sent_at    TEXT              -- NULL until a relay published it
);
CREATE INDEX event_store.outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
