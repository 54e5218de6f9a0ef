-- eventwire store, PostgreSQL dialect: the initial schema, in the schema event_store (which the
-- migration runner creates). Every name is event_store.<table>, as in SQLite. data, metadata and
-- event are JSON (not JSONB): the exact text is kept, so an event reads back byte for byte.
-- Indexes are kept to those a query needs: each one costs every append.

-- The log. Every append takes one transaction-level advisory lock and holds it to its commit, so
-- appends follow one another: position is the last position + 1, contiguous and in commit order,
-- and a reader catching up by position never skips an event that commits later (a sequence would
-- allow that). A stream's version is the largest of its events', found through UNIQUE
-- (stream_id, version); the purge records in streams and positions what it deletes, so that
-- neither a position nor a version is ever handed out twice.
CREATE TABLE event_store.events (
    position      BIGINT      PRIMARY KEY,
    event_id      TEXT        NOT NULL UNIQUE,
    stream_id     TEXT        NOT NULL,
    version       BIGINT      NOT NULL,
    event_type    TEXT        NOT NULL,
    event_version INTEGER     NOT NULL,
    data          JSON        NOT NULL, -- the JSON of the event's data
    metadata      JSON        NOT NULL, -- the CloudEvents envelope without data
    recorded_at   TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ,          -- NULL: kept forever (EVENT_STORE_TTL_DAYS was 0)
    UNIQUE (stream_id, version)
);
CREATE INDEX events_expires_at ON event_store.events (expires_at) WHERE expires_at IS NOT NULL;

-- The version of each stream whose newest events the purge deleted (its version is then this).
CREATE TABLE event_store.streams (
    stream_id TEXT   PRIMARY KEY,
    version   BIGINT NOT NULL
);

-- One row: the last position when the purge last ran, so that positions go on after it even when
-- it deleted the newest events.
CREATE TABLE event_store.positions (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT  NOT NULL
);
INSERT INTO event_store.positions (id, position) VALUES (1, 0);

CREATE TABLE event_store.dead_letter_queue (
    id               BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         TEXT,                 -- NULL when the message could not be read
    event_name       TEXT,                 -- the event type, e.g. user.registered
    handler          TEXT        NOT NULL,
    subscriber_group TEXT        NOT NULL,
    event            TEXT        NOT NULL, -- the CloudEvent JSON, or the raw message
    error            TEXT        NOT NULL,
    attempts         INTEGER     NOT NULL,
    first_failed_at  TIMESTAMPTZ NOT NULL,
    last_failed_at   TIMESTAMPTZ NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'retried', 'resolved', 'discarded')),
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (event_id, handler, subscriber_group)
);
CREATE INDEX dead_letter_queue_name ON event_store.dead_letter_queue (event_name, last_failed_at);
CREATE INDEX dead_letter_queue_last ON event_store.dead_letter_queue (last_failed_at);

-- The inbox: which handler ("group/name") processed which event.
CREATE TABLE event_store.processed_events (
    handler      TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (handler, event_id)
);
CREATE INDEX processed_events_at ON event_store.processed_events (processed_at);

CREATE TABLE event_store.outbox (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   TEXT        NOT NULL UNIQUE,
    event      JSON        NOT NULL, -- the CloudEvent JSON
    created_at TIMESTAMPTZ NOT NULL,
    sent_at    TIMESTAMPTZ           -- NULL until a relay published it
);
CREATE INDEX outbox_unsent ON event_store.outbox (id) WHERE sent_at IS NULL;

-- The general append, for what the fast path of postgres.c leaves to it (a batch holding stored
-- ids, a version that does not hold). The caller passes each id once. Under the appends' lock,
-- held to commit, it skips stored ids (duplicates); when none is left nothing is written; else
-- it checks the expected version (-1 any, 0 no stream, n exact) against the stream's (a conflict
-- raises SQLSTATE EW409 with the version in DETAIL) and writes the events after the last
-- position. The version and position expressions are those of postgres.c.
CREATE FUNCTION event_store.append_events(
    p_stream text, p_expected bigint, p_ids text[], p_types text[], p_type_versions integer[],
    p_metadata text[], p_data text[], p_recorded timestamptz, p_expires timestamptz,
    OUT o_version bigint, OUT o_first bigint, OUT o_last bigint, OUT o_appended integer,
    OUT o_duplicates integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_dup text[];
BEGIN
    PERFORM pg_advisory_xact_lock(8231632784560172086);
    SELECT array_agg(e.event_id) INTO v_dup FROM event_store.events e
     WHERE e.event_id = ANY (p_ids);
    o_duplicates := coalesce(array_length(v_dup, 1), 0);
    o_appended := coalesce(array_length(p_ids, 1), 0) - o_duplicates;
    o_version := greatest((SELECT max(e.version) FROM event_store.events e
                            WHERE e.stream_id = p_stream),
                          (SELECT s.version FROM event_store.streams s
                            WHERE s.stream_id = p_stream), 0);
    o_first := 0;
    o_last := 0;
    IF o_appended = 0 THEN
        RETURN;
    END IF;
    IF p_expected >= 0 AND p_expected <> o_version THEN
        RAISE EXCEPTION 'stream % is at version %, expected %', p_stream, o_version, p_expected
            USING ERRCODE = 'EW409', DETAIL = o_version::text;
    END IF;
    o_first := greatest((SELECT max(e.position) FROM event_store.events e),
                        (SELECT p.position FROM event_store.positions p WHERE p.id = 1), 0) + 1;
    INSERT INTO event_store.events (position, event_id, stream_id, version, event_type,
                                    event_version, data, metadata, recorded_at, expires_at)
    SELECT o_first - 1 + k.n, k.id, p_stream, o_version + k.n, k.t, k.tv, k.d::json, k.m::json,
           p_recorded, p_expires
      FROM (SELECT u.*, row_number() OVER (ORDER BY u.ord) AS n
              FROM unnest(p_ids, p_types, p_type_versions, p_data, p_metadata)
                   WITH ORDINALITY AS u(id, t, tv, d, m, ord)
             WHERE u.id <> ALL (coalesce(v_dup, '{}'))) k;
    o_last := o_first + o_appended - 1;
    o_version := o_version + o_appended;
END
$$;
