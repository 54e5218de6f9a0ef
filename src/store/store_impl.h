/* eventwire — the store's internal interface: what a database backend implements.
 *
 * store.c owns everything that does not depend on the database: the URL, the configuration,
 * turning events into rows (data + metadata) and rows back into events, paging, and the DLQ
 * sink and inbox glue; handle.c the mutex that serialises a handle's connection and transactions
 * as the API sees them (group commit, holds). A backend (sqlite.c, postgres.c) fills one struct
 * ew_store_ops with the SQL of its dialect. Adding a backend is a new file and a line in store.c's
 * table.
 *
 * Calling convention: store.c and handle.c call every op (but open and close) with the handle's
 * mutex held, so a backend never locks. `conn` is what open() returned. Strings passed in are
 * borrowed for the call; rows passed to callbacks are borrowed for the callback. Every error
 * becomes an EW_E... code with the database's own message in err: EW_EIO (or EW_ECONNECT when the
 * connection is gone, EW_ECONFLICT for versions). */
#ifndef EW_STORE_IMPL_H
#define EW_STORE_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include "core/log.h"
#include "eventwire/store.h"

/* The handle's logger, given to the backend at open. */
typedef ew__log_sink ew__store_log;

void ew__store_logf(const ew__store_log *log, ew_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* One event as stored: the envelope without data (metadata) and data, both JSON text. */
typedef struct ew__store_rec {
    const char *event_id;
    const char *event_type;
    int event_version;
    const char *metadata; /* not NUL-terminated: metadata_len bytes */
    size_t metadata_len;
    const char *data; /* not NUL-terminated: data_len bytes */
    size_t data_len;
} ew__store_rec;

typedef struct ew__append_args {
    const char *stream_id;
    int64_t expected_version; /* EW_EXPECT_ANY, EW_EXPECT_NO_STREAM or n > 0 */
    const ew__store_rec *recs;
    size_t n;
    int64_t recorded_us;
    int64_t expires_us; /* 0: never (TTL 0) */
} ew__append_args;

/* A row of event_store.events as a reader gets it. */
typedef struct ew__event_row {
    int64_t position;
    const char *stream_id;
    int64_t version;
    const char *event_type;
    const char *metadata;
    size_t metadata_len;
    const char *data;
    size_t data_len;
    int64_t recorded_us;
    const char *event_id; /* added for ew__store_scan; every read fills it */
} ew__event_row;

/* 0: go on; 1: stop reading (not an error). */
typedef int (*ew__event_row_fn)(void *ud, const ew__event_row *row);

/* Events for ew__store_record: recs[i] goes to the stream streams[i], whatever its version; each id
 * appears once (store.c drops repeats first). */
typedef struct ew__record_args {
    const ew__store_rec *recs;
    const char *const *streams;
    size_t n;
    int64_t recorded_us;
    int64_t expires_us; /* 0: never */
} ew__record_args;

/* A row of event_store.bus_groups. */
typedef struct ew__group_row {
    int64_t position;
    const char *owner; /* NULL when nobody holds the lease */
    int64_t lease_until_us, updated_us;
} ew__group_row;

/* A dead letter to put, its text fields valid UTF-8. */
typedef struct ew__dlq_put {
    const char *event_id;   /* may be NULL */
    const char *event_name; /* may be NULL */
    const char *handler;
    const char *group;
    const char *event; /* the CloudEvent JSON or the raw payload */
    const char *error;
    int attempts;
    int64_t first_failed_us, last_failed_us, now_us;
    const char *transport; /* may be NULL */
} ew__dlq_put;

/* The rows of a DLQ query: the row and its strings are borrowed for the call. */
typedef int (*ew__dlq_row_fn)(void *ud, const ew_dlq_row *row);

/* One unsent outbox row. */
typedef struct ew__outbox_row {
    int64_t id;
    const char *event;
    size_t len;
} ew__outbox_row;

typedef int (*ew__outbox_row_fn)(void *ud, const ew__outbox_row *row);

/* A row of an ew_txn_query result (store.h's ew_row), produced by exec. */
typedef int (*ew__exec_row_fn)(void *ud, const ew_row *row);

/* Both backends are compiled into the library with it: the table has no version. */
typedef struct ew_store_ops {
    const char *name; /* "sqlite", "postgresql": ew_store_backend() */

    /* Connects to `target` (what follows "sqlite:", or the whole postgresql:// URL), creates
     * the schema event_store when missing and applies pending migrations. EW_ECONFIG for a bad
     * target, EW_ECONNECT when the database cannot be reached. */
    int (*open)(void **conn, const char *target, const ew__store_log *log, ew_error *err);
    void (*close)(void *conn);

    /* ---- events -------------------------------------------------------------------------- */

    /* One transaction: skips events whose id is stored (duplicates); when any remain, checks
     * expected_version against the stream's version (EW_ECONFLICT, nothing written), then writes
     * them with versions and positions following the current ones. */
    int (*append)(void *conn, const ew__append_args *a, ew_append_result *res, ew_error *err);
    /* Up to limit rows of a stream with version >= from_version, by version. */
    int (*read_stream)(void *conn, const char *stream_id, int64_t from_version, size_t limit,
                       ew__event_row_fn fn, void *ud, ew_error *err);
    /* Up to limit rows with position > after, by position; only event_type `type` when not
     * NULL. */
    int (*read_all)(void *conn, int64_t after, const char *type, size_t limit, ew__event_row_fn fn,
                    void *ud, ew_error *err);
    /* The last position handed out (0 when none was). */
    int (*head)(void *conn, int64_t *position, ew_error *err);
    int (*stream_version)(void *conn, const char *stream_id, int64_t *version, ew_error *err);
    /* Deletes at most limit events with expires_at <= now, oldest position first, in one
     * transaction of its own; *deleted gets the count. */
    int (*purge)(void *conn, int64_t now_us, size_t limit, size_t *deleted, ew_error *err);

    /* ---- dead letters -------------------------------------------------------------------- */

    /* Inserts, or on the same (event_id, handler, subscriber_group) adds the attempts up,
     * replaces the error, the event and last_failed_at, and makes it pending again. */
    int (*dlq_put)(void *conn, const ew__dlq_put *p, ew_error *err);
    /* Rows matching f, newest last failure first; only the row with this id when id > 0. */
    int (*dlq_list)(void *conn, const ew_dlq_filter *f, int64_t id, ew__dlq_row_fn fn, void *ud,
                    ew_error *err);
    /* Sets the row's status to st when its status is `from` (-1: whatever it is). *changed: 1
     * when the row was changed, else 0. */
    int (*dlq_set_status)(void *conn, int64_t id, int from, ew_dlq_status st, int64_t now_us,
                          int *changed, ew_error *err);

    /* ---- transactions (the inbox's, the outbox's, a service's) ---------------------------- */

    int (*begin)(void *conn, ew_error *err);  /* a write transaction */
    int (*commit)(void *conn, ew_error *err); /* ends the transaction, also when it fails */
    void (*rollback)(void *conn);
    /* One statement with text parameters written $1, $2, ... (NULL: SQL NULL). With fn, every
     * result row goes to fn (a nonzero return stops). *changes gets the rows changed. */
    int (*exec)(void *conn, const char *sql, const char *const *params, size_t nparams,
                ew__exec_row_fn fn, void *ud, int64_t *changes, ew_error *err);
    /* In a transaction: is (handler, event_id) in processed_events? */
    int (*inbox_seen)(void *conn, const char *handler, const char *event_id, int *seen,
                      ew_error *err);
    /* In a transaction: records (handler, event_id). */
    int (*inbox_record)(void *conn, const char *handler, const char *event_id, int64_t now_us,
                        ew_error *err);
    /* Deletes at most limit records processed before before_us, in a transaction of its own. */
    int (*inbox_purge)(void *conn, int64_t before_us, size_t limit, size_t *deleted, ew_error *err);
    /* In a transaction: adds an event to the outbox (a second add of the same id is a no-op). */
    int (*outbox_add)(void *conn, const char *event_id, const char *event, size_t len,
                      int64_t now_us, ew_error *err);

    /* ---- the outbox relay: claim, then mark or release ------------------------------------
     * claim() hands out up to limit unsent rows in id order; the backend may keep them locked
     * (PostgreSQL: on a connection of the relay's own, FOR UPDATE SKIP LOCKED) until mark()
     * records them sent or release() gives them back. store.c lets go of the handle's mutex
     * between the calls, while the events are published, and runs one relay at a time.
     * release() touches only what claim() set up: it may run without the handle's mutex. */
    int (*outbox_claim)(void *conn, size_t limit, ew__outbox_row_fn fn, void *ud, ew_error *err);
    int (*outbox_mark)(void *conn, const int64_t *ids, size_t n, int64_t now_us, ew_error *err);
    void (*outbox_release)(void *conn);

    /* ---- the log as a bus (ew__store_record, ew__store_data_version, the groups) ---------- */

    /* In a transaction the caller began: appends each event to its stream (EW_EXPECT_ANY),
     * skipping stored ids, with positions in the order of recs. */
    int (*record)(void *conn, const ew__record_args *a, ew_append_result *res, ew_error *err);
    /* A number that changes when another connection commits (SQLite: PRAGMA data_version);
     * EW_ENOTSUP where there is none. */
    int (*data_version)(void *conn, int64_t *version, ew_error *err);
    /* Inserts the group at the last position handed out (at 0 with from_beginning) unless it
     * exists. Its own transaction. */
    int (*group_create)(void *conn, const char *group, int from_beginning, int64_t now_us,
                        ew_error *err);
    /* Hands the group's row to fn (*found 0 when there is none); the row is borrowed. */
    int (*group_get)(void *conn, const char *group, int (*fn)(void *ud, const ew__group_row *row),
                     void *ud, int *found, ew_error *err);
    /* Sets owner and lease_until when the lease is free, expired (lease_until < now), owner's
     * already, or held by `from` (not NULL). *held: 1 when owner holds it now. */
    int (*group_lease)(void *conn, const char *group, const char *owner, const char *from,
                       int64_t now_us, int64_t until_us, int *held, ew_error *err);
    /* While owner holds the lease: position = max(position, new), lease_until = until (0:
     * releases the lease: owner and lease_until NULL). *held: 0 when owner did not hold it
     * (nothing changed). */
    int (*group_commit)(void *conn, const char *group, const char *owner, int64_t position,
                        int64_t now_us, int64_t until_us, int *held, ew_error *err);
    /* on: each commit of this connection returns once it is on disk (SQLite: synchronous=FULL);
     * off: the backend's default. Outside a transaction. */
    int (*sync_commits)(void *conn, int on, ew_error *err);
    /* Statements without parameters, separated by ';', in one round trip (handle.c's
     * savepoints). */
    int (*script)(void *conn, const char *sql, ew_error *err);
} ew_store_ops;

extern const ew_store_ops ew__store_sqlite;
extern const ew_store_ops ew__store_postgres;

/* EVENT_STORE_URL, parsed as ew_store_open() does, shared with the fuzzers
 * (tests/fuzz/fuzz_url.c). ew__store_url_arg: the backend the URL's scheme names (*ops) and what
 * its open() is given (the path after sqlite:, the whole URL for PostgreSQL), or NULL for another
 * scheme. The checks each backend's open() makes before it touches a file or a server:
 * ew__sqlite_path_check on that path, ew__pg_url_check (libpq's PQconninfoParse) on that URL;
 * 0 or EW_ECONFIG naming EVENT_STORE_URL. */
const char *ew__store_url_arg(const char *url, const ew_store_ops **ops);
int ew__sqlite_path_check(const char *path, ew_error *err);
int ew__pg_url_check(const char *url, ew_error *err);

/* The status names stored in dead_letter_queue.status; -1 for an unknown name. */
int ew__dlq_status_parse(const char *name);

#endif
