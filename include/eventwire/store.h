/* eventwire — the event store: the durable home of events, dead letters, the inbox and the outbox.
 *
 * Two implementations behind one interface, chosen by EVENT_STORE_URL: SQLite (`sqlite:PATH`,
 * the embedded default, WAL mode) and PostgreSQL (`postgresql://...`, libpq). Both keep their
 * tables in one schema named `event_store` (an attached database in SQLite, a schema in
 * PostgreSQL), so the same SQL runs on both:
 *
 *     SELECT * FROM event_store.dead_letter_queue
 *     WHERE event_name = 'user.registered' ORDER BY last_failed_at DESC;
 *
 * The schema is created and upgraded at open by numbered migrations (docs/store.md).
 *
 * Streams and versions: every event belongs to a stream (an aggregate: "user-<id>") and has a
 * version in it, 1 for the first event. Every event also has a global position, increasing in
 * commit order with no gaps that a reader could skip past, so a reader that catches up by
 * position never misses an event that commits later.
 *
 * Threads: a store handle may be used from several threads; calls are serialised on its
 * connection. For parallel work open one handle per thread. Several processes may open the same
 * database. An open transaction (ew_store_begin, or the inbox's from begin() to commit() or
 * rollback()) holds the handle's connection until it ends, on the thread that began it: calls
 * from other threads wait, and calls on the handle from that thread fail with EW_ESTATE (use the
 * transaction, or another handle). Callbacks of reads and listings run without the handle held
 * and may call the store. */
#ifndef EVENTWIRE_STORE_H
#define EVENTWIRE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/config.h"
#include "eventwire/dlq.h"
#include "eventwire/error.h"
#include "eventwire/event.h"
#include "eventwire/inbox.h"
#include "eventwire/log.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_store ew_store;

typedef struct ew_store_options {
    const ew_config
        *config;     /* EVENT_STORE_URL, EVENT_STORE_TTL_DAYS, EVENT_MAX_BYTES; NULL: defaults */
    const char *url; /* overrides EVENT_STORE_URL when not NULL */
    ew_log_fn log;   /* NULL: silent */
    void *log_ud;
} ew_store_options;

/* Opens (creating when needed) the store and applies pending migrations. Caller closes it with
 * ew_store_close(). EW_ECONFIG for a bad URL, EW_ENOTSUP for a scheme this build lacks,
 * EW_ECONNECT when the database cannot be reached, EW_EIO for a database error. */
int ew_store_open(ew_store **out, const ew_store_options *opts, ew_error *err);
void ew_store_close(ew_store *s);

/* "sqlite" or "postgresql". Static string. */
const char *ew_store_backend(const ew_store *s);

/* ---- events ------------------------------------------------------------------------------ */

#define EW_EXPECT_ANY (-1)    /* append whatever the stream's version */
#define EW_EXPECT_NO_STREAM 0 /* the stream must not exist yet */
/* n > 0: the stream's version must be exactly n (its last event has version n). */

typedef struct ew_append_result {
    int64_t version;        /* the stream's version after the append */
    int64_t first_position; /* global position of the first event appended; 0 when none was */
    int64_t last_position;
    size_t appended;   /* events written */
    size_t duplicates; /* events whose id the store already had: skipped, not an error */
} ew_append_result;

/* Appends n events to a stream in one transaction, all or none. An event whose id is already
 * stored is skipped (appending the same event twice is a no-op), so a retried append is safe.
 * EW_ECONFLICT when expected_version does not hold: the message says the stream's version.
 * EW_ETOOBIG when an event encodes larger than EVENT_MAX_BYTES. res may be NULL. */
int ew_store_append(ew_store *s, const char *stream_id, int64_t expected_version,
                    const ew_event *const *evs, size_t n, ew_append_result *res, ew_error *err);

/* One stored event, as a reader sees it. Borrowed for the duration of the callback; take
 * ew_event_ref(event) to keep the event. */
typedef struct ew_stored_event {
    int64_t position;
    const char *stream_id;
    int64_t version;
    int64_t recorded_us;
    const ew_event *event;
} ew_stored_event;

/* Called for each event read, in order. Return 0 to go on, anything else to stop reading (the
 * read then returns 0). */
typedef int (*ew_store_read_fn)(void *ud, const ew_stored_event *se);

/* Reads a stream forwards from version from_version (1 = the beginning), at most max events
 * (0: no limit). */
int ew_store_read_stream(ew_store *s, const char *stream_id, int64_t from_version, size_t max,
                         ew_store_read_fn fn, void *ud, ew_error *err);

/* Reads every stream forwards from global position from_position (exclusive: 0 = the
 * beginning), only types matching pattern (NULL: all; see ew_pattern_match), at most max events
 * (0: no limit). This is how projections, replays and the SQLite bus catch up. */
int ew_store_read_all(ew_store *s, int64_t from_position, const char *pattern, size_t max,
                      ew_store_read_fn fn, void *ud, ew_error *err);

/* The global position of the last event stored (0 when none ever was). When the purge deleted the
 * newest events, the position of the last one: positions are never handed out twice. */
int ew_store_head(ew_store *s, int64_t *position, ew_error *err);

/* The stream's version (0 when it does not exist). A stream keeps its version when the purge
 * deletes its events. */
int ew_store_stream_version(ew_store *s, const char *stream_id, int64_t *version, ew_error *err);

/* Deletes events recorded more than EVENT_STORE_TTL_DAYS ago (none when it is 0), in batches of
 * at most `batch` rows (0: 1000), each its own short transaction so appends wait at most one
 * batch. An event's expiry is fixed when it is appended (expires_at). *purged (when not NULL)
 * gets the number deleted. */
int ew_store_purge(ew_store *s, size_t batch, size_t *purged, ew_error *err);

/* One batch of that: deletes at most `batch` events (0: 1000) that had expired at now_us, in one
 * short transaction; *purged gets how many. Fewer than `batch` means none is left. For callers
 * that report progress or spread the work out. */
int ew_store_purge_batch(ew_store *s, int64_t now_us, size_t batch, size_t *purged, ew_error *err);

/* Retention of the outbox and the dead letters, a batch at a time (at most `batch` rows, 0:
 * 1000, in one short transaction; fewer than `batch` means none is left): outbox rows published
 * before sent_before_us, and dead letters whose last failure was before before_us, whatever
 * their status. *n gets how many went. */
int ew_store_outbox_prune(ew_store *s, int64_t sent_before_us, size_t batch, size_t *n,
                          ew_error *err);
int ew_store_dlq_purge(ew_store *s, int64_t before_us, size_t batch, size_t *n, ew_error *err);

/* ---- dead letters (event_store.dead_letter_queue) --------------------------------------- */

typedef enum ew_dlq_status {
    EW_DLQ_PENDING = 0,  /* waiting for someone to look at it */
    EW_DLQ_RETRIED = 1,  /* handed back to its handler; a new failure makes it pending again */
    EW_DLQ_RESOLVED = 2, /* the retried event was handled */
    EW_DLQ_DISCARDED = 3 /* given up on by a person */
} ew_dlq_status;

/* "pending", "retried", "resolved", "discarded". */
const char *ew_dlq_status_name(ew_dlq_status st);

/* A dead letter as the store keeps it. Strings are owned by the row: release with
 * ew_dlq_row_release(). */
typedef struct ew_dlq_row {
    int64_t id;
    char *event_id, *event_name, *handler, *subscriber_group;
    char *event; /* the CloudEvent JSON, or the raw message when it could not be decoded */
    char *error;
    int attempts;
    int64_t first_failed_us, last_failed_us;
    ew_dlq_status status;
    char *transport; /* where an undecodable message came from (ew_dead_letter.transport); NULL */
} ew_dlq_row;

void ew_dlq_row_release(ew_dlq_row *row);

/* The sink that writes dead letters into this store: give it to ew_bus_options.dlq. A second
 * failure of the same event in the same handler updates its row (attempts, last failure, error)
 * and makes it pending again. s is borrowed and must outlive the bus. */
ew_dlq_sink ew_store_dlq_sink(ew_store *s);

typedef struct ew_dlq_filter {
    const char *event_name; /* NULL: any */
    const char *handler;    /* NULL: any */
    const char *group;      /* NULL: any */
    int status;             /* -1: any; else an ew_dlq_status */
    size_t limit;           /* 0: no limit */
} ew_dlq_filter;

typedef int (*ew_dlq_list_fn)(void *ud, const ew_dlq_row *row);

/* Lists dead letters, newest failure first. */
int ew_store_dlq_list(ew_store *s, const ew_dlq_filter *f, ew_dlq_list_fn fn, void *ud,
                      ew_error *err);

/* One dead letter by id into *row (caller releases). EW_ENOTFOUND when there is none. */
int ew_store_dlq_get(ew_store *s, int64_t id, ew_dlq_row *row, ew_error *err);

int ew_store_dlq_set_status(ew_store *s, int64_t id, ew_dlq_status st, ew_error *err);

/* ---- the inbox (event_store.processed_events) --------------------------------------------- */

/* The inbox that records processed (handler, event id) pairs in this store, in a transaction
 * begun before the handler (ew_ctx_txn() gives it to the handler, see ew_txn_exec) and
 * committed with the record after it. s is borrowed and must outlive the bus. */
ew_inbox ew_store_inbox(ew_store *s);

/* Deletes processed-event records older than max_age_s seconds. */
int ew_store_inbox_purge(ew_store *s, int64_t max_age_s, size_t *purged, ew_error *err);

/* Makes the rows deleted from the named tables of the schema event_store (names without the
 * schema: "user_profiles") leave nothing readable in the database's files, as an erasure needs.
 * PostgreSQL keeps a deleted row in its table's and indexes' pages until VACUUM, and a plain
 * VACUUM may leave its bytes in a page's free space: this runs VACUUM FULL on each table, which
 * writes the live rows and indexes into new files and empties the old ones at once — holding an
 * ACCESS EXCLUSIVE lock on the table while it rewrites it, for a time that grows with the
 * table. The write-ahead log keeps what it logged until PostgreSQL recycles its segments (after
 * checkpoints), and backups keep what they hold. On SQLite there is nothing to do (the store runs
 * with secure_delete: a deleted row is overwritten at once) and it returns 0. Outside any
 * transaction of s. EW_EINVAL for a name that is not [a-z0-9_], 1 to 63 characters. */
int ew_store_compact(ew_store *s, const char *const *tables, size_t n, ew_error *err);

/* A transaction on the store's database, as a handler sees it through ew_ctx_txn(). */
typedef struct ew_txn ew_txn;

/* Runs one SQL statement in the transaction. Parameters are text, written $1, $2, ... in the SQL
 * (the same SQL runs on SQLite and PostgreSQL); NULL is SQL NULL. *changes (when not NULL) gets
 * the rows changed. */
int ew_txn_exec(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                int64_t *changes, ew_error *err);

/* One result row of ew_txn_query: column names and values as text (NULL for SQL NULL), in the
 * database's own text form (PostgreSQL prints timestamptz its way, SQLite keeps RFC 3339).
 * Borrowed for the duration of the callback. */
typedef struct ew_row {
    size_t ncols;
    const char *const *names;
    const char *const *values;
} ew_row;

/* Called for each row. Return 0 to go on, anything else to stop (the query then returns 0). */
typedef int (*ew_row_fn)(void *ud, const ew_row *row);

/* Runs one statement in the transaction, like ew_txn_exec, and hands each result row to fn: a
 * handler reads its own tables in the transaction it writes them in. */
int ew_txn_query(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                 ew_row_fn fn, void *ud, ew_error *err);

/* ---- the outbox (event_store.outbox) ----------------------------------------------------- */

/* Begins a transaction for a service's own writes and the events they publish (ew_txn_exec,
 * ew_outbox_add), ended by ew_txn_commit() or ew_txn_rollback(). */
int ew_store_begin(ew_store *s, ew_txn **out, ew_error *err);
int ew_txn_commit(ew_txn *t, ew_error *err);
void ew_txn_rollback(ew_txn *t);

/* Group commit. A handle runs one transaction at a time; when one commits while other threads
 * wait to begin theirs, the next ones go on in the same database transaction (each as a
 * savepoint: its rollback undoes only itself) and one database commit ends them all. Every
 * ew_txn_commit still returns only once its writes are committed, and a failed database commit
 * fails each of them. Nothing to do for this: it happens by itself under load.
 *
 * A bus worker goes further for the store its subscription names (ew_subscribe_opts.batch_store)
 * and for this store's inbox (ew_store_inbox): while it runs several queued deliveries, its
 * handlers' commits on the handle return at once and one database commit, before the worker
 * acknowledges the deliveries, ends them all (docs/store.md, "Group commit"). Another thread's
 * commit on the handle does not wait for the worker: it commits at once, with what the worker
 * held so far. */

/* Adds an event to the outbox inside the transaction; it is published when the transaction
 * has committed and a relay runs. */
int ew_outbox_add(ew_txn *t, const ew_event *ev, ew_error *err);

/* Makes the data keys that events about subjects[0..n) (user ids) are encrypted under, those the
 * key store lacks, before a transaction that adds such events: otherwise the first
 * ew_outbox_add of a new subject makes its key inside the transaction, and the key store's
 * commit (durable: synced to disk) is then made while the transaction holds the handle, one at
 * a time. The n keys take one commit of the key store, and threads calling it at once share
 * one. The keys are durable when it returns, before anything encrypted under them is written.
 * Nothing to do (0) when the store does not encrypt (EVENT_ENCRYPTION=off); EW_EINVAL when a
 * subject cannot name a key. */
int ew_store_prepare_keys(ew_store *s, const char *const *subjects, size_t n, ew_error *err);

/* Publishes up to `batch` unsent outbox events in order, through `publish` (normally a bus
 * publish of the batch), then marks them sent. A crash between the two publishes them again
 * on the next run: at least once, never lost. *sent gets the count. */
typedef int (*ew_outbox_publish_fn)(void *ud, const ew_event *const *evs, size_t n, ew_error *err);
int ew_store_outbox_relay(ew_store *s, size_t batch, ew_outbox_publish_fn publish, void *ud,
                          size_t *sent, ew_error *err);
/* batch 0 means 100. publish runs on the calling thread without the handle held (it may use the
 * store); when it fails nothing is marked, and its error is returned. One relay runs at a time per
 * handle. */

#ifdef __cplusplus
}
#endif
#endif
