-- eventwire store, PostgreSQL dialect: the saga engine's state (include/eventwire/saga.h,
-- docs/sagas.md). One row per instance in sagas, changed only by
-- UPDATE ... WHERE id = $1 AND version = $2 (optimistic concurrency: a writer that read an older
-- version changes nothing and tries again); every change leaves rows in saga_transitions, and
-- the events an instance applied in saga_consumed, in the same transaction.

CREATE TABLE event_store.sagas (
    id               TEXT        PRIMARY KEY, -- UUIDv7
    saga_type        TEXT        NOT NULL,    -- the declaration's name, e.g. UserRegistration
    correlation_key  TEXT        NOT NULL,    -- what its events are matched on (a user id, ...)
    correlation_id   TEXT        NOT NULL,    -- the CloudEvents correlationid of what it issues
    subject          TEXT,                    -- the start event's subject
    status           TEXT        NOT NULL
                     CHECK (status IN ('running', 'completed', 'compensating', 'compensated',
                                       'failed', 'timed_out')),
    step             TEXT,                    -- the current step (where it ended, when finished)
    step_index       INTEGER     NOT NULL,
    step_attempts    INTEGER     NOT NULL DEFAULT 0, -- re-issues of the current step
    steps_done       TEXT        NOT NULL DEFAULT '[]', -- JSON array of completed steps' names
    data             JSON        NOT NULL,    -- the saga's own data
    reason           TEXT,                    -- why it failed or timed out
    version          BIGINT      NOT NULL,    -- 1 at creation, +1 at every change
    last_seq         BIGINT      NOT NULL,    -- the last saga_transitions.seq written for it
    started_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    deadline_at      TIMESTAMPTZ,             -- the instance's deadline
    step_deadline_at TIMESTAMPTZ,             -- the current step's deadline
    wake_at          TIMESTAMPTZ,             -- the earlier of the two while running; else NULL
    UNIQUE (saga_type, correlation_key)
);
-- The timer's query: the earliest deadline of a saga type (running instances only).
CREATE INDEX sagas_wake ON event_store.sagas (saga_type, wake_at) WHERE wake_at IS NOT NULL;
-- Events without the correlation field find their instance by correlation id.
CREATE INDEX sagas_correlation_id ON event_store.sagas (saga_type, correlation_id);
-- ewctl saga list --status S, most recently changed first.
CREATE INDEX sagas_status ON event_store.sagas (status, updated_at);

-- How every instance got where it is: one row per transition, seq 1, 2, ... per instance.
CREATE TABLE event_store.saga_transitions (
    saga_id     TEXT        NOT NULL,
    seq         BIGINT      NOT NULL,
    from_status TEXT,                 -- NULL for the first
    to_status   TEXT        NOT NULL,
    from_step   TEXT,
    to_step     TEXT,
    event_id    TEXT,                 -- the event that caused it; NULL for a deadline
    event_type  TEXT,
    recorded_at TIMESTAMPTZ NOT NULL,
    note        TEXT        NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- The events each instance applied: a redelivered event finds its row and changes nothing.
CREATE TABLE event_store.saga_consumed (
    saga_id     TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    event_type  TEXT        NOT NULL,
    consumed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (saga_id, event_id)
);

-- Events that came before their instance existed (the services of a flow answer the start event
-- in any order, and brokers keep no order across types): applied when the instance is created,
-- deleted unused after the saga type's timeout.
CREATE TABLE event_store.saga_parked (
    saga_type       TEXT        NOT NULL,
    event_id        TEXT        NOT NULL,
    correlation_key TEXT        NOT NULL, -- its correlation key, or its correlation id
    event           JSON        NOT NULL, -- the CloudEvent
    parked_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (saga_type, event_id)
);
CREATE INDEX saga_parked_key ON event_store.saga_parked (saga_type, correlation_key);
CREATE INDEX saga_parked_at ON event_store.saga_parked (parked_at);
