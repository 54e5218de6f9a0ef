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
 * Between ew_store_hold and ew_store_release, the calling thread's own commits on s return at
 * once, before the database commit, which ew_store_release does (or any other use of the handle,
 * earlier): its result is ew_store_release's. For a thread that runs many short transactions in
 * a row and can wait to act on all of them, as a bus worker does before it acknowledges a batch
 * of deliveries (ew_subscribe_opts.batch_store). Other threads' commits on s wait for the
 * release: hold briefly. One holder per handle (EW_EAGAIN) and per thread (EW_ESTATE). */
int ew_store_hold(ew_store *s, ew_error *err);
int ew_store_release(ew_store *s, ew_error *err);

/* Adds an event to the outbox inside the transaction; it is published when the transaction
 * has committed and a relay runs. */
int ew_outbox_add(ew_txn *t, const ew_event *ev, ew_error *err);

/* Publishes up to `batch` unsent outbox events in order, through `publish` (normally a bus
 * publish of the batch), then marks them sent. A crash between the two publishes them again
 * on the next run: at least once, never lost. *sent gets the count. */
typedef int (*ew_outbox_publish_fn)(void *ud, const ew_event *const *evs, size_t n, ew_error *err);
int ew_store_outbox_relay(ew_store *s, size_t batch, ew_outbox_publish_fn publish, void *ud,
                          size_t *sent, ew_error *err);
/* batch 0 means 100. publish runs on the calling thread without the handle held (it may use the
 * store); when it fails nothing is marked, and its error is returned. One relay runs at a time per
 * handle. */

/* ---- the log as a bus (the SQLite bus, docs/bus-sqlite.md) ------------------------------- */

/* Appends n events in one transaction, all or none, each to its own stream: the stream named by
 * its subject, or by its type when it has none, whatever that stream's version (EW_EXPECT_ANY).
 * Positions follow the order of evs, across streams. An event whose id is stored already, or
 * came earlier in evs, is skipped (res->duplicates). EW_ETOOBIG when an event encodes larger than
 * EVENT_MAX_BYTES, EW_EINVAL for a NULL event: nothing is written, and the message names the
 * event's index. res may be NULL; res->version is the version of the last event written in its
 * stream. This is how the SQLite bus publishes. */
int ew_store_record(ew_store *s, const ew_event *const *evs, size_t n, ew_append_result *res,
                    ew_error *err);

/* ew_store_record inside an open transaction: the events are written when it commits, and not at
 * all when it rolls back. */
int ew_txn_record(ew_txn *t, const ew_event *const *evs, size_t n, ew_append_result *res,
                  ew_error *err);

/* The transaction that the calling thread holds, through any handle of this process, on the same
 * SQLite database file as s; NULL when there is none (always on PostgreSQL and sqlite::memory:).
 * While a thread holds an SQLite write transaction, a write through any other connection to the
 * file waits for it, and from that same thread would wait for itself until the busy timeout: such
 * a writer writes through this transaction instead (the SQLite bus publishes a handler's
 * follow-up events in the inbox's transaction this way). Borrowed: valid until it ends. */
ew_txn *ew_store_thread_txn(const ew_store *s);

/* A row of the log as ew_store_scan hands it over, decoded or not. Borrowed for the callback. */
typedef struct ew_store_entry {
    int64_t position;
    const char *event_id;   /* the row's event_id column */
    const char *event_type; /* the row's event_type column */
    const char *stream_id;
    int64_t version;
    int64_t recorded_us;
    const ew_event *event; /* the event; NULL when the row could not be decoded */
    const char *json;      /* the CloudEvent the row holds (metadata and data), decoded or not */
    size_t json_len;
    int error;             /* when event is NULL: why (EW_EJSON, EW_EDATA, EW_ETOOBIG, ...) */
    const char *error_msg; /* and the sentence; "" when event is not NULL */
} ew_store_entry;

/* Called for each entry, in order of position. 0 goes on; nonzero stops (not an error). */
typedef int (*ew_store_scan_fn)(void *ud, const ew_store_entry *e);

/* Reads the log forwards from from_position (exclusive), looking at no more than max rows (0: no
 * limit), and hands to fn every row whose type matches one of patterns[0..npatterns)
 * (ew_pattern_match; npatterns 0: every row). Unlike ew_store_read_all a row that does not decode
 * does not end the read: it is handed over with event NULL and the reason, and so is a row whose
 * CloudEvent is longer than max_bytes (0: no limit), without decoding it (EW_ETOOBIG).
 * *last_position (may be NULL) gets the position of the last row looked at, wanted or not
 * (from_position when there was none), so that a reader can move past rows it does not want;
 * when fn stops the read, the position of the row it stopped at. EW_EINVAL for a bad pattern. */
int ew_store_scan(ew_store *s, int64_t from_position, const char *const *patterns, size_t npatterns,
                  size_t max, size_t max_bytes, ew_store_scan_fn fn, void *ud,
                  int64_t *last_position, ew_error *err);

/* A number that changes whenever another connection, of this process or another, commits to the
 * database: SQLite's PRAGMA data_version, which reads shared memory, not the disk. A reader that
 * has caught up polls it to learn cheaply whether there may be more to read. EW_ENOTSUP on
 * PostgreSQL. */
int ew_store_data_version(ew_store *s, int64_t *version, ew_error *err);

/* Makes every commit of this handle wait until it is on disk (on = 1), or not (on = 0, the
 * default). SQLite: PRAGMA synchronous=FULL, which syncs the WAL at each commit, instead of
 * NORMAL, which syncs it only at checkpoints — a commit is then safe from a crash of the process
 * but not from one of the machine. The setting is the handle's own (other handles and processes
 * keep theirs); a sync also makes every commit before it on disk. PostgreSQL: the session's
 * synchronous_commit = on (whatever the server's default, which may be off), kept across
 * reconnects; on = 0 gives it the server's default back. Not inside a transaction (EW_ESTATE). */
int ew_store_sync_commits(ew_store *s, int on, ew_error *err);

/* ---- subscriber groups of the SQLite bus (event_store.bus_groups) -------------------------- */

#define EW_STORE_OWNER_MAX 128 /* the longest owner name, with its NUL */

/* A subscriber group's row: where it is in the log and which consumer holds it. */
typedef struct ew_store_group {
    int64_t position;               /* the last position the group is done with */
    char owner[EW_STORE_OWNER_MAX]; /* the consumer holding the lease; "" when none does */
    int64_t lease_until_us;         /* when that lease ends unless renewed; 0 when none */
    int64_t updated_us;             /* the row's last change */
} ew_store_group;

/* Creates group, unless it exists, at the last position handed out (ew_store_head; at 0 with
 * from_beginning), in one transaction; *g (may be NULL) gets its row either way. Group names are
 * what ew_bus_subscribe allows (1 to 200 of a-z, A-Z, 0-9, '.', '_', '-'). */
int ew_store_group_open(ew_store *s, const char *group, int from_beginning, ew_store_group *g,
                        ew_error *err);

/* The group's row into *g; EW_ENOTFOUND when there is none. */
int ew_store_group_get(ew_store *s, const char *group, ew_store_group *g, ew_error *err);

/* Takes or renews the group's lease for owner (1 to EW_STORE_OWNER_MAX - 1 bytes) for lease_ms
 * from now: when nobody holds it, owner does, the lease expired, or its holder is `from` (not
 * NULL: a holder the caller knows to be dead). *held gets 1 when owner holds it now, 0 when
 * another does. EW_ENOTFOUND when the group does not exist. */
int ew_store_group_lease(ew_store *s, const char *group, const char *owner, const char *from,
                         int64_t lease_ms, int *held, ew_error *err);

/* While owner holds the group's lease: moves its position forwards to position (never back) and
 * renews the lease for lease_ms (0: gives it up). *held gets 0, and nothing changes, when owner
 * does not hold it (another took it over after it expired). */
int ew_store_group_commit(ew_store *s, const char *group, const char *owner, int64_t position,
                          int64_t lease_ms, int *held, ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
