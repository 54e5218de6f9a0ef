/* eventwire — the SQLite store: the embedded default (EVENT_STORE_URL=sqlite:PATH).
 *
 * The connection opens ":memory:" and attaches the file as event_store, so the SQL names its
 * tables event_store.<table> exactly as in PostgreSQL. The file is in WAL mode with
 * synchronous=NORMAL, and every write transaction is BEGIN IMMEDIATE with a busy timeout, so
 * several processes can share it: one writer at a time, readers never blocked. Statements are
 * prepared once per connection and reused. */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "core/files.h"
#include "store/migrations.h"
#include "store/store_bus.h"
#include "store/store_impl.h"

#define BUSY_TIMEOUT_MS 10000
/* ew_txn_exec statements kept prepared, by a hash of their SQL into this many slots: a service or
 * the saga engine runs a few dozen distinct statements, and two sharing a slot would be prepared
 * again at every turn. */
#define EXEC_CACHE 256

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_APPEND_STATE,
    S_APPEND_INSERT,
    S_READ_STREAM,
    S_READ_ALL,
    S_READ_ALL_TYPE,
    S_HEAD,
    S_STREAM_VERSION,
    S_PURGE_FLOOR,
    S_PURGE_STREAMS,
    S_PURGE,
    S_DLQ_PUT,
    S_DLQ_LIST,
    S_DLQ_STATUS,
    S_INBOX_SEEN,
    S_INBOX_RECORD,
    S_INBOX_PURGE,
    S_OUTBOX_ADD,
    S_OUTBOX_CLAIM,
    S_OUTBOX_MARK,
    S_MIG_TABLE,
    S_MIG_APPLIED,
    S_MIG_RECORD,
    S_DATA_VERSION,
    S_GROUP_CREATE,
    S_GROUP_GET,
    S_GROUP_LEASE,
    S_GROUP_COMMIT,
    S__COUNT
};

/* The last position handed out and a stream's version: the largest stored, or what the purge
 * recorded when it deleted the newest (positions.position, streams.version). */
#define LAST_POSITION                                                                              \
    "max(coalesce((SELECT max(position) FROM event_store.events), 0), "                            \
    "(SELECT position FROM event_store.positions WHERE id = 1))"
#define VERSION_OF_1                                                                               \
    "max(coalesce((SELECT max(version) FROM event_store.events WHERE stream_id = ?1), 0), "        \
    "coalesce((SELECT version FROM event_store.streams WHERE stream_id = ?1), 0))"
/* The purge's batch: the oldest expired positions. */
#define PURGE_BATCH                                                                                \
    "(SELECT position FROM event_store.events WHERE expires_at <= ?1 ORDER BY position LIMIT ?2)"
#define EVENT_COLUMNS                                                                              \
    "position, stream_id, version, event_type, metadata, data, recorded_at, event_id"

static const char *const sql_text[S__COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    /* The stream's version and the last position handed out: neither is ever handed out twice. */
    [S_APPEND_STATE] = "SELECT " VERSION_OF_1 ", " LAST_POSITION,
    [S_APPEND_INSERT] = "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                        "event_type, event_version, data, metadata, recorded_at, expires_at) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
                        "ON CONFLICT (event_id) DO NOTHING",
    [S_READ_STREAM] = "SELECT " EVENT_COLUMNS " FROM event_store.events "
                      "WHERE stream_id = ?1 AND version >= ?2 ORDER BY version LIMIT ?3",
    [S_READ_ALL] = "SELECT " EVENT_COLUMNS " FROM event_store.events "
                   "WHERE position > ?1 ORDER BY position LIMIT ?2",
    [S_READ_ALL_TYPE] = "SELECT " EVENT_COLUMNS " FROM event_store.events "
                        "WHERE position > ?1 AND event_type = ?3 ORDER BY position LIMIT ?2",
    [S_HEAD] = "SELECT " LAST_POSITION,
    [S_STREAM_VERSION] = "SELECT " VERSION_OF_1,
    [S_PURGE_FLOOR] = "UPDATE event_store.positions SET position = "
                      "(SELECT max(position) FROM event_store.events) WHERE id = 1 AND "
                      "(SELECT max(position) FROM event_store.events) > position",
    [S_PURGE_STREAMS] = "INSERT INTO event_store.streams (stream_id, version) SELECT stream_id, "
                        "max(version) FROM event_store.events WHERE position IN " PURGE_BATCH
                        " GROUP BY stream_id ON CONFLICT (stream_id) DO UPDATE SET "
                        "version = max(version, excluded.version)",
    [S_PURGE] = "DELETE FROM event_store.events WHERE position IN " PURGE_BATCH,
    [S_DLQ_PUT] = "INSERT INTO event_store.dead_letter_queue (event_id, event_name, handler, "
                  "subscriber_group, event, error, attempts, first_failed_at, last_failed_at, "
                  "status, updated_at, transport) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
                  "'pending', ?10, ?11) "
                  "ON CONFLICT (event_id, handler, subscriber_group) DO UPDATE SET "
                  "attempts = attempts + excluded.attempts, "
                  "first_failed_at = min(first_failed_at, excluded.first_failed_at), "
                  "last_failed_at = excluded.last_failed_at, error = excluded.error, "
                  "event = excluded.event, event_name = excluded.event_name, "
                  "status = 'pending', updated_at = excluded.updated_at, "
                  "transport = excluded.transport",
    [S_DLQ_LIST] = "SELECT id, event_id, event_name, handler, subscriber_group, event, error, "
                   "attempts, first_failed_at, last_failed_at, status, transport "
                   "FROM event_store.dead_letter_queue "
                   "WHERE (?1 IS NULL OR event_name = ?1) AND (?2 IS NULL OR handler = ?2) "
                   "AND (?3 IS NULL OR subscriber_group = ?3) AND (?4 IS NULL OR status = ?4) "
                   "AND (?5 IS NULL OR id = ?5) "
                   "ORDER BY last_failed_at DESC, id DESC LIMIT ?6",
    [S_DLQ_STATUS] = "UPDATE event_store.dead_letter_queue SET status = ?2, updated_at = ?3 "
                     "WHERE id = ?1 AND (?4 IS NULL OR status = ?4)",
    [S_INBOX_SEEN] = "SELECT 1 FROM event_store.processed_events WHERE handler = ?1 AND "
                     "event_id = ?2",
    [S_INBOX_RECORD] = "INSERT INTO event_store.processed_events (handler, event_id, "
                       "processed_at) VALUES (?1, ?2, ?3)",
    [S_INBOX_PURGE] = "DELETE FROM event_store.processed_events WHERE (handler, event_id) IN "
                      "(SELECT handler, event_id FROM event_store.processed_events "
                      "WHERE processed_at < ?1 LIMIT ?2)",
    [S_OUTBOX_ADD] = "INSERT INTO event_store.outbox (event_id, event, created_at) "
                     "VALUES (?1, ?2, ?3) ON CONFLICT (event_id) DO NOTHING",
    [S_OUTBOX_CLAIM] = "SELECT id, event FROM event_store.outbox WHERE sent_at IS NULL "
                       "ORDER BY id LIMIT ?1",
    [S_OUTBOX_MARK] = "UPDATE event_store.outbox SET sent_at = ?2 WHERE id = ?1 AND "
                      "sent_at IS NULL",
    [S_MIG_TABLE] = "CREATE TABLE IF NOT EXISTS event_store.schema_migrations ("
                    "number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    [S_MIG_APPLIED] = "SELECT 1 FROM event_store.schema_migrations WHERE number = ?1",
    [S_MIG_RECORD] = "INSERT INTO event_store.schema_migrations (number, name, applied_at) "
                     "VALUES (?1, ?2, ?3)",
    /* Reads the WAL index in shared memory: no disk I/O. */
    [S_DATA_VERSION] = "PRAGMA event_store.data_version",
    /* One statement, so the head it reads is the head when the row is written. */
    [S_GROUP_CREATE] = "INSERT INTO event_store.bus_groups (group_name, position, owner, "
                       "lease_until, updated_at) SELECT ?1, CASE WHEN ?2 THEN 0 ELSE " LAST_POSITION
                       " END, NULL, NULL, ?3 WHERE true ON CONFLICT (group_name) DO NOTHING",
    [S_GROUP_GET] = "SELECT position, owner, lease_until, updated_at FROM event_store.bus_groups "
                    "WHERE group_name = ?1",
    /* Times are RFC 3339 text of one width: they compare as text. */
    [S_GROUP_LEASE] = "UPDATE event_store.bus_groups SET owner = ?2, lease_until = ?4, "
                      "updated_at = ?3 WHERE group_name = ?1 AND (owner IS NULL OR owner = ?2 OR "
                      "lease_until IS NULL OR lease_until < ?3 OR owner = ?5)",
    [S_GROUP_COMMIT] = "UPDATE event_store.bus_groups SET position = max(position, ?3), "
                       "owner = CASE WHEN ?5 IS NULL THEN NULL ELSE owner END, lease_until = ?5, "
                       "updated_at = ?4 WHERE group_name = ?1 AND owner = ?2",
};

typedef struct cached {
    char *sql;
    sqlite3_stmt *st;
} cached;

typedef struct sq {
    sqlite3 *db;
    const ew__store_log *log;
    sqlite3_stmt *st[S__COUNT];
    cached cache[EXEC_CACHE];
    int signal_fd; /* PATH-signal (EW__STORE_SIGNAL_SUFFIX), open for writing; -1: none */
    bool appended; /* the open transaction added events to the log */
} sq;

/* ---- helpers -------------------------------------------------------------------------------- */

static int fail(sq *c, ew_error *err, const char *what)
{
    return ew_error_set(err, EW_EIO, "sqlite: %s: %s", what, sqlite3_errmsg(c->db));
}

/* The prepared statement id, reset and with its bindings cleared after the last use. */
static sqlite3_stmt *stmt(sq *c, int id, ew_error *err)
{
    if (!c->st[id] && sqlite3_prepare_v3(c->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT,
                                         &c->st[id], NULL) != SQLITE_OK) {
        fail(c, err, "prepare");
        return NULL;
    }
    return c->st[id];
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no row. */
static int run(sq *c, int id, ew_error *err)
{
    sqlite3_stmt *st = stmt(c, id, err);
    if (!st) return EW_EIO;
    int rc = sqlite3_step(st);
    done(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(c, err, sql_text[id]);
}

static void bind_time(sqlite3_stmt *st, int i, int64_t us)
{
    char t[EW_TIME_LEN + 1];
    if (us && ew_time_format(us, t) == 0)
        sqlite3_bind_text(st, i, t, EW_TIME_LEN, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void bind_str(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static int64_t col_time(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    int64_t us = 0;
    if (s) ew_time_parse(s, &us);
    return us;
}

static int begin_tx(void *conn, ew_error *err)
{
    return run(conn, S_BEGIN, err);
}

static void rollback_tx(void *conn)
{
    sq *c = conn;
    c->appended = false;
    if (!sqlite3_get_autocommit(c->db)) run(c, S_ROLLBACK, NULL);
}

/* After a commit that added events to the log: a byte written to the signal file, whose
 * IN_MODIFY wakes the consumers of other connections (the SQLite bus's, which watch it with
 * inotify) once per commit that gave them something to read -- not at every write of the WAL,
 * which a commit makes several of and positions, leases and inbox records make too. A failed
 * write only leaves them to their timer. */
static void signal_commit(sq *c)
{
    static const char one = 1;
    if (c->signal_fd >= 0 && pwrite(c->signal_fd, &one, 1, 0) < 0)
        ew__store_logf(c->log, EW_LOG_DEBUG, "sqlite: cannot write the commit signal: %s",
                       strerror(errno));
}

static int commit_tx(void *conn, ew_error *err)
{
    sq *c = conn;
    int rc = run(c, S_COMMIT, err);
    if (rc)
        rollback_tx(c);
    else if (c->appended)
        signal_commit(c);
    c->appended = false;
    return rc;
}

/* ---- open: the file, the pragmas, the migrations --------------------------------------------- */

static int pragma(sq *c, const char *sql, char *out, size_t outsz, ew_error *err)
{
    /* Switching to WAL needs the file to itself for a moment: wait like the busy handler. */
    for (int tries = 0;; tries++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK) return fail(c, err, sql);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && out) {
            const char *v = (const char *)sqlite3_column_text(st, 0);
            snprintf(out, outsz, "%s", v ? v : "");
        }
        sqlite3_finalize(st);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE) return 0;
        if ((rc & 0xff) != SQLITE_BUSY || tries >= BUSY_TIMEOUT_MS / 10) return fail(c, err, sql);
        usleep(10000);
    }
}

static int migrate(sq *c, ew_error *err)
{
    for (size_t i = 0; i < ew__migrations_sqlite_count; i++) {
        const ew_migration *m = &ew__migrations_sqlite[i];
        int rc;
        if ((rc = begin_tx(c, err))) return rc;
        if ((rc = run(c, S_MIG_TABLE, err))) goto fail;
        sqlite3_stmt *st = stmt(c, S_MIG_APPLIED, err);
        if (!st) goto fail;
        sqlite3_bind_int(st, 1, m->number);
        int step = sqlite3_step(st);
        done(st);
        if (step != SQLITE_ROW && step != SQLITE_DONE) {
            rc = fail(c, err, "reading schema_migrations");
            goto fail;
        }
        if (step == SQLITE_DONE) {
            char *msg = NULL;
            if (sqlite3_exec(c->db, m->sql, NULL, NULL, &msg) != SQLITE_OK) {
                rc = ew_error_set(err, EW_EIO, "sqlite: migration %s: %s", m->name,
                                  msg ? msg : sqlite3_errmsg(c->db));
                sqlite3_free(msg);
                goto fail;
            }
            if (!(st = stmt(c, S_MIG_RECORD, err))) goto fail;
            sqlite3_bind_int(st, 1, m->number);
            sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
            bind_time(st, 3, ew_now_us());
            step = sqlite3_step(st);
            done(st);
            if (step != SQLITE_DONE) {
                rc = fail(c, err, "recording a migration");
                goto fail;
            }
            ew__store_logf(c->log, EW_LOG_INFO, "sqlite: applied migration %s", m->name);
        }
        if ((rc = commit_tx(c, err))) return rc;
        continue;
    fail:
        rollback_tx(c);
        return rc ? rc : EW_EIO;
    }
    return 0;
}

static void sq_close(void *conn)
{
    sq *c = conn;
    if (!c) return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(c->st[i]);
    for (int i = 0; i < EXEC_CACHE; i++) {
        sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
    }
    sqlite3_close(c->db);
    if (c->signal_fd >= 0) close(c->signal_fd);
    free(c);
}

/* Another connection holds the write lock: wait for it in short steps. SQLite's own busy timeout
 * sleeps up to 100 ms at a time once it has waited a little, which is what a commit shared by
 * several processes (the SQLite bus, the saga engine, the relays) then costs in latency; here a
 * waiter sleeps 50 us, doubling to 2 ms, and gives up after BUSY_TIMEOUT_MS. */
static int busy_wait(void *ud, int count)
{
    (void)ud;
    static const int64_t limit_us = (int64_t)BUSY_TIMEOUT_MS * 1000;
    int64_t slept = 0, step = 50;
    for (int i = 0; i < count && slept < limit_us; i++) {
        slept += step;
        if (step < 2000) step *= 2;
    }
    if (slept >= limit_us) return 0;
    usleep((useconds_t)step);
    return 1;
}

int ew__sqlite_path_check(const char *path, ew_error *err)
{
    if (!*path)
        return ew_error_set(err, EW_ECONFIG,
                            "EVENT_STORE_URL: sqlite: needs a path, as in "
                            "sqlite:var/eventwire.db");
    if (strncmp(path, "//", 2) == 0)
        return ew_error_set(err, EW_ECONFIG,
                            "EVENT_STORE_URL: write sqlite:PATH (sqlite:var/x.db, "
                            "sqlite:/abs/x.db), not sqlite://");
    return 0;
}

static int sq_open(void **conn, const char *path, const ew__store_log *log, ew_error *err)
{
    int rc;
    if ((rc = ew__sqlite_path_check(path, err))) return rc;
    const int memory = strcmp(path, ":memory:") == 0;
    /* The database file is made 0600 whatever the umask (SQLite would make it 0644 less the
     * umask); its -wal and -shm files take its mode. */
    if (!memory && (ew_mkdirs_for(path) || ew_file_create_empty(path, 0600)))
        return ew_error_set(err, EW_EIO, "sqlite: cannot create %s: %s", path, strerror(errno));
    sq *c = calloc(1, sizeof *c);
    if (!c) return ew_error_set(err, EW_ENOMEM, "out of memory");
    c->log = log;
    c->signal_fd = -1;
    if (sqlite3_open_v2(":memory:", &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = ew_error_set(err, EW_EIO, "sqlite: cannot open: %s",
                          c->db ? sqlite3_errmsg(c->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_handler(c->db, busy_wait, NULL);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c->db, "ATTACH DATABASE ?1 AS event_store", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = fail(c, err, "attach");
        goto fail;
    }
    sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step != SQLITE_DONE) {
        rc = ew_error_set(err, EW_EIO, "sqlite: cannot open %s: %s", path, sqlite3_errmsg(c->db));
        goto fail;
    }
    if (!memory) {
        char mode[16] = "";
        if ((rc = pragma(c, "PRAGMA event_store.journal_mode=WAL", mode, sizeof mode, err)))
            goto fail;
        if (strcmp(mode, "wal") != 0)
            ew__store_logf(log, EW_LOG_WARN,
                           "sqlite: %s is in journal mode %s, not WAL: readers will wait "
                           "for writers",
                           path, mode);
        if ((rc = pragma(c, "PRAGMA event_store.synchronous=NORMAL", NULL, 0, err))) goto fail;
    }
    /* What is deleted is overwritten with zeros in the file, not left in freed pages (an
     * erasure must leave nothing readable: docs/security.md#erasure). */
    if ((rc = pragma(c, "PRAGMA event_store.secure_delete=ON", NULL, 0, err))) goto fail;
    if ((rc = migrate(c, err))) goto fail;
    if (!memory) { /* made 0600 like the database; without it, consumers poll on a timer */
        char sig[4096];
        if (snprintf(sig, sizeof sig, "%s%s", path, EW__STORE_SIGNAL_SUFFIX) < (int)sizeof sig)
            c->signal_fd = open(sig, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (c->signal_fd < 0)
            ew__store_logf(log, EW_LOG_WARN,
                           "sqlite: cannot open %s%s (%s): consumers in other processes will "
                           "learn of this connection's events by their timer only",
                           path, EW__STORE_SIGNAL_SUFFIX, strerror(errno));
    }
    *conn = c;
    return 0;
fail:
    sq_close(c);
    return rc;
}

/* ---- events ------------------------------------------------------------------------------- */

static int sq_append(void *conn, const ew__append_args *a, ew_append_result *res, ew_error *err)
{
    sq *c = conn;
    int rc;
    if ((rc = begin_tx(c, err))) return rc;
    sqlite3_stmt *st = stmt(c, S_APPEND_STATE, err);
    if (!st) goto fail;
    sqlite3_bind_text(st, 1, a->stream_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = fail(c, err, "append");
        done(st);
        goto fail;
    }
    int64_t version = sqlite3_column_int64(st, 0), pos = sqlite3_column_int64(st, 1);
    done(st);

    sqlite3_stmt *ins = stmt(c, S_APPEND_INSERT, err);
    if (!ins) goto fail;
    /* Bindings survive sqlite3_reset: those common to the batch are bound once. */
    sqlite3_bind_text(ins, 3, a->stream_id, -1, SQLITE_STATIC);
    bind_time(ins, 9, a->recorded_us);
    bind_time(ins, 10, a->expires_us);
    size_t appended = 0, dups = 0;
    int64_t first = 0;
    for (size_t i = 0; i < a->n; i++) {
        const ew__store_rec *r = &a->recs[i];
        sqlite3_bind_int64(ins, 1, pos + 1);
        sqlite3_bind_text(ins, 2, r->event_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, version + 1);
        sqlite3_bind_text(ins, 5, r->event_type, -1, SQLITE_STATIC);
        sqlite3_bind_int(ins, 6, r->event_version);
        sqlite3_bind_text(ins, 7, r->data, (int)r->data_len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 8, r->metadata, (int)r->metadata_len, SQLITE_STATIC);
        int step = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (step != SQLITE_DONE) {
            rc = fail(c, err, "append");
            sqlite3_clear_bindings(ins);
            goto fail;
        }
        if (sqlite3_changes(c->db) == 0) { /* the id is stored: a duplicate */
            dups++;
            continue;
        }
        /* The first event actually written: now the expected version matters. */
        if (appended == 0 && a->expected_version >= 0 && a->expected_version != version) {
            sqlite3_clear_bindings(ins);
            rc = ew_error_set(err, EW_ECONFLICT, "stream %s is at version %lld, expected %lld",
                              a->stream_id, (long long)version, (long long)a->expected_version);
            goto fail;
        }
        pos++;
        version++;
        if (!appended++) first = pos;
    }
    sqlite3_clear_bindings(ins);
    if (appended) {
        c->appended = true;
        if ((rc = commit_tx(c, err))) return rc;
    } else {
        rollback_tx(c);
    }
    res->version = version;
    res->first_position = first;
    res->last_position = appended ? pos : 0;
    res->appended = appended;
    res->duplicates = dups;
    return 0;
fail:
    rollback_tx(c);
    return rc ? rc : EW_EIO;
}

static int read_rows(sq *c, sqlite3_stmt *st, ew__event_row_fn fn, void *ud, ew_error *err)
{
    int step, rc = 0;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ew__event_row r;
        r.position = sqlite3_column_int64(st, 0);
        r.stream_id = (const char *)sqlite3_column_text(st, 1);
        r.version = sqlite3_column_int64(st, 2);
        r.event_type = (const char *)sqlite3_column_text(st, 3);
        r.metadata = (const char *)sqlite3_column_text(st, 4);
        r.metadata_len = (size_t)sqlite3_column_bytes(st, 4);
        r.data = (const char *)sqlite3_column_text(st, 5);
        r.data_len = (size_t)sqlite3_column_bytes(st, 5);
        r.recorded_us = col_time(st, 6);
        r.event_id = (const char *)sqlite3_column_text(st, 7);
        if (!r.stream_id || !r.event_type || !r.metadata || !r.data) {
            rc = ew_error_set(err, EW_EIO, "sqlite: event at position %lld has NULL columns",
                              (long long)r.position);
            break;
        }
        if (fn(ud, &r)) break;
    }
    if (!rc && step != SQLITE_ROW && step != SQLITE_DONE) rc = fail(c, err, "read");
    done(st);
    return rc;
}

static int sq_read_stream(void *conn, const char *stream_id, int64_t from_version, size_t limit,
                          ew__event_row_fn fn, void *ud, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_READ_STREAM, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, from_version);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    return read_rows(c, st, fn, ud, err);
}

static int sq_read_all(void *conn, int64_t after, const char *type, size_t limit,
                       ew__event_row_fn fn, void *ud, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, type ? S_READ_ALL_TYPE : S_READ_ALL, err);
    if (!st) return EW_EIO;
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
    if (type) sqlite3_bind_text(st, 3, type, -1, SQLITE_STATIC);
    return read_rows(c, st, fn, ud, err);
}

/* A statement that returns one integer (0 when no row). */
static int one_int(sq *c, int id, const char *arg, int64_t *out, ew_error *err)
{
    sqlite3_stmt *st = stmt(c, id, err);
    if (!st) return EW_EIO;
    if (arg) sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    *out = step == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    done(st);
    return step == SQLITE_ROW || step == SQLITE_DONE ? 0 : fail(c, err, sql_text[id]);
}

static int sq_head(void *conn, int64_t *position, ew_error *err)
{
    return one_int(conn, S_HEAD, NULL, position, err);
}

static int sq_stream_version(void *conn, const char *stream_id, int64_t *version, ew_error *err)
{
    return one_int(conn, S_STREAM_VERSION, stream_id, version, err);
}

static int sq_purge(void *conn, int64_t now_us, size_t limit, size_t *deleted, ew_error *err)
{
    sq *c = conn;
    int rc;
    *deleted = 0;
    if ((rc = begin_tx(c, err))) return rc;
    /* When the newest events go, the next position and version must still follow them. */
    if ((rc = run(c, S_PURGE_FLOOR, err))) goto fail;
    sqlite3_stmt *st = stmt(c, S_PURGE_STREAMS, err);
    if (!st) goto fail;
    bind_time(st, 1, now_us);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
    int step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) {
        rc = fail(c, err, "purge");
        goto fail;
    }
    if (!(st = stmt(c, S_PURGE, err))) goto fail;
    bind_time(st, 1, now_us);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
    step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) {
        rc = fail(c, err, "purge");
        goto fail;
    }
    size_t n = (size_t)sqlite3_changes(c->db);
    if ((rc = commit_tx(c, err))) return rc;
    *deleted = n;
    return 0;
fail:
    rollback_tx(c);
    return rc ? rc : EW_EIO;
}

/* ---- the log as a bus ---------------------------------------------------------------------- */

static int sq_record(void *conn, const ew__record_args *a, ew_append_result *res, ew_error *err)
{
    sq *c = conn;
    int64_t pos;
    int rc = one_int(c, S_HEAD, NULL, &pos, err);
    if (rc) return rc;
    sqlite3_stmt *ins = stmt(c, S_APPEND_INSERT, err);
    if (!ins) return EW_EIO;
    bind_time(ins, 9, a->recorded_us);
    bind_time(ins, 10, a->expires_us);
    const char *stream = NULL;
    int64_t version = 0;
    size_t appended = 0, dups = 0;
    int64_t first = 0;
    for (size_t i = 0; i < a->n; i++) {
        const ew__store_rec *r = &a->recs[i];
        /* The transaction sees its own rows: a stream met again in the batch reads its new
         * version; the same stream twice in a row needs no reading. */
        if (!stream || strcmp(stream, a->streams[i]) != 0) {
            stream = a->streams[i];
            if ((rc = one_int(c, S_STREAM_VERSION, stream, &version, err))) break;
        }
        sqlite3_bind_int64(ins, 1, pos + 1);
        sqlite3_bind_text(ins, 2, r->event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 3, stream, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, version + 1);
        sqlite3_bind_text(ins, 5, r->event_type, -1, SQLITE_STATIC);
        sqlite3_bind_int(ins, 6, r->event_version);
        sqlite3_bind_text(ins, 7, r->data, (int)r->data_len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 8, r->metadata, (int)r->metadata_len, SQLITE_STATIC);
        int step = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (step != SQLITE_DONE) {
            rc = fail(c, err, "record");
            break;
        }
        if (sqlite3_changes(c->db) == 0) { /* the id is stored: a duplicate */
            dups++;
            continue;
        }
        pos++;
        version++;
        if (!appended++) first = pos;
    }
    sqlite3_clear_bindings(ins);
    if (rc) return rc;
    res->version = version;
    res->first_position = first;
    res->last_position = appended ? pos : 0;
    res->appended = appended;
    res->duplicates = dups;
    if (appended) c->appended = true;
    return 0;
}

static int sq_data_version(void *conn, int64_t *version, ew_error *err)
{
    return one_int(conn, S_DATA_VERSION, NULL, version, err);
}

static int sq_group_create(void *conn, const char *group, int from_beginning, int64_t now_us,
                           ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_GROUP_CREATE, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, from_beginning);
    bind_time(st, 3, now_us);
    int step = sqlite3_step(st);
    done(st);
    return step == SQLITE_DONE ? 0 : fail(c, err, "subscriber group");
}

static int sq_group_get(void *conn, const char *group, int (*fn)(void *, const ew__group_row *),
                        void *ud, int *found, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_GROUP_GET, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    *found = step == SQLITE_ROW;
    if (step == SQLITE_ROW) {
        ew__group_row r = {sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
                           col_time(st, 2), col_time(st, 3)};
        fn(ud, &r);
    }
    done(st);
    return step == SQLITE_ROW || step == SQLITE_DONE ? 0 : fail(c, err, "subscriber group");
}

static int sq_group_lease(void *conn, const char *group, const char *owner, const char *from,
                          int64_t now_us, int64_t until_us, int *held, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_GROUP_LEASE, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    bind_time(st, 3, now_us);
    bind_time(st, 4, until_us);
    bind_str(st, 5, from);
    int step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) return fail(c, err, "subscriber group lease");
    *held = sqlite3_changes(c->db) > 0;
    return 0;
}

static int sq_group_commit(void *conn, const char *group, const char *owner, int64_t position,
                           int64_t now_us, int64_t until_us, int *held, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_GROUP_COMMIT, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, position);
    bind_time(st, 4, now_us);
    bind_time(st, 5, until_us); /* 0: NULL, which gives the lease up */
    int step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) return fail(c, err, "subscriber group position");
    *held = sqlite3_changes(c->db) > 0;
    return 0;
}

static int sq_sync_commits(void *conn, int on, ew_error *err)
{
    sq *c = conn;
    if (!sqlite3_get_autocommit(c->db))
        return ew_error_set(err, EW_ESTATE, "sqlite: synchronous cannot change in a transaction");
    return pragma(
        c, on ? "PRAGMA event_store.synchronous=FULL" : "PRAGMA event_store.synchronous=NORMAL",
        NULL, 0, err);
}

/* ---- dead letters ------------------------------------------------------------------------- */

static int sq_dlq_put(void *conn, const ew__dlq_put *p, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_DLQ_PUT, err);
    if (!st) return EW_EIO;
    bind_str(st, 1, p->event_id);
    bind_str(st, 2, p->event_name);
    bind_str(st, 3, p->handler);
    bind_str(st, 4, p->group);
    bind_str(st, 5, p->event);
    bind_str(st, 6, p->error);
    sqlite3_bind_int(st, 7, p->attempts);
    bind_time(st, 8, p->first_failed_us);
    bind_time(st, 9, p->last_failed_us);
    bind_time(st, 10, p->now_us);
    bind_str(st, 11, p->transport);
    int step = sqlite3_step(st);
    done(st);
    return step == SQLITE_DONE ? 0 : fail(c, err, "dead letter");
}

static int sq_dlq_list(void *conn, const ew_dlq_filter *f, int64_t id, ew__dlq_row_fn fn, void *ud,
                       ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_DLQ_LIST, err);
    if (!st) return EW_EIO;
    bind_str(st, 1, f->event_name);
    bind_str(st, 2, f->handler);
    bind_str(st, 3, f->group);
    bind_str(st, 4, f->status >= 0 ? ew_dlq_status_name((ew_dlq_status)f->status) : NULL);
    if (id > 0) sqlite3_bind_int64(st, 5, id);
    sqlite3_bind_int64(st, 6, f->limit ? (sqlite3_int64)f->limit : -1);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ew_dlq_row r;
        r.id = sqlite3_column_int64(st, 0);
        r.event_id = (char *)sqlite3_column_text(st, 1);
        r.event_name = (char *)sqlite3_column_text(st, 2);
        r.handler = (char *)sqlite3_column_text(st, 3);
        r.subscriber_group = (char *)sqlite3_column_text(st, 4);
        r.event = (char *)sqlite3_column_text(st, 5);
        r.error = (char *)sqlite3_column_text(st, 6);
        r.attempts = sqlite3_column_int(st, 7);
        r.first_failed_us = col_time(st, 8);
        r.last_failed_us = col_time(st, 9);
        int status = ew__dlq_status_parse((const char *)sqlite3_column_text(st, 10));
        r.status = status < 0 ? EW_DLQ_PENDING : (ew_dlq_status)status;
        r.transport = (char *)sqlite3_column_text(st, 11);
        if (fn(ud, &r)) break;
    }
    int rc = step == SQLITE_ROW || step == SQLITE_DONE ? 0 : fail(c, err, "dead letters");
    done(st);
    return rc;
}

static int sq_dlq_set_status(void *conn, int64_t id, int from, ew_dlq_status status, int64_t now_us,
                             int *changed, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_DLQ_STATUS, err);
    if (!st) return EW_EIO;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, ew_dlq_status_name(status), -1, SQLITE_STATIC);
    bind_time(st, 3, now_us);
    bind_str(st, 4, from >= 0 ? ew_dlq_status_name((ew_dlq_status)from) : NULL);
    int step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) return fail(c, err, "dead letter status");
    *changed = sqlite3_changes(c->db) > 0;
    return 0;
}

/* ---- transactions: a service's statements ------------------------------------------------- */

/* The prepared statement of sql into *out, from the cache or new. */
static int exec_stmt(sq *c, const char *sql, sqlite3_stmt **out, ew_error *err)
{
    uint32_t h = 2166136261u;
    for (const char *p = sql; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    cached *e = &c->cache[h % EXEC_CACHE];
    if (e->st && strcmp(e->sql, sql) == 0) {
        *out = e->st;
        return 0;
    }
    sqlite3_stmt *st;
    const char *tail;
    if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail) != SQLITE_OK)
        return fail(c, err, "prepare");
    if (!st) return ew_error_set(err, EW_EINVAL, "sqlite: the statement is empty");
    tail += strspn(tail, " \t\r\n;");
    if (*tail) {
        sqlite3_finalize(st);
        return ew_error_set(err, EW_EINVAL, "sqlite: one statement at a time, not '%.40s'", tail);
    }
    char *copy = strdup(sql);
    if (!copy) {
        sqlite3_finalize(st);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    sqlite3_finalize(e->st);
    free(e->sql);
    e->st = st;
    e->sql = copy;
    *out = st;
    return 0;
}

/* Binds $1, $2, ... by name, wherever they appear; a parameter with no value is an error. */
static int bind_params(sqlite3_stmt *st, const char *const *params, size_t n, ew_error *err)
{
    int count = sqlite3_bind_parameter_count(st);
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        char *end;
        long k = name && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
        if (!name || name[0] != '$' || *end || k < 1 || (size_t)k > n)
            return ew_error_set(err, EW_EINVAL,
                                "sqlite: parameter %s has no value (%zu given; "
                                "write $1, $2, ...)",
                                name ? name : "?", n);
        bind_str(st, i, params[k - 1]);
    }
    return 0;
}

static int sq_script(void *conn, const char *sql, ew_error *err)
{
    sq *c = conn;
    return sqlite3_exec(c->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : fail(c, err, sql);
}

static int sq_exec(void *conn, const char *sql, const char *const *params, size_t nparams,
                   ew__exec_row_fn fn, void *ud, int64_t *changes, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = NULL;
    int rc = exec_stmt(c, sql, &st, err);
    if (rc) return rc;
    if ((rc = bind_params(st, params, nparams, err))) {
        done(st);
        return rc;
    }
    const char *names_s[16], *values_s[16];
    const char **names = names_s, **values = values_s;
    int ncols = sqlite3_column_count(st);
    if (fn && ncols > 16) {
        names = malloc((size_t)ncols * sizeof *names);
        values = malloc((size_t)ncols * sizeof *values);
        if (!names || !values) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            goto out;
        }
    }
    const sqlite3_int64 total0 = sqlite3_total_changes64(c->db);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (!fn) continue;
        for (int i = 0; i < ncols; i++) {
            names[i] = sqlite3_column_name(st, i);
            values[i] = (const char *)sqlite3_column_text(st, i);
        }
        ew_row row = {(size_t)ncols, names, values};
        if (fn(ud, &row)) break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = fail(c, err, "statement");
    else if (changes) /* rows this statement changed (sqlite3_changes keeps the last DML's) */
        *changes = sqlite3_total_changes64(c->db) - total0;
out:
    done(st);
    if (names != names_s) free(names);
    if (values != values_s) free(values);
    return rc;
}

/* ---- the inbox and the outbox ------------------------------------------------------------- */

static int sq_inbox_seen(void *conn, const char *handler, const char *event_id, int *seen,
                         ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_INBOX_SEEN, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, handler, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, event_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    done(st);
    *seen = step == SQLITE_ROW;
    return step == SQLITE_ROW || step == SQLITE_DONE ? 0 : fail(c, err, "inbox");
}

static int sq_inbox_record(void *conn, const char *handler, const char *event_id, int64_t now_us,
                           ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_INBOX_RECORD, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, handler, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, event_id, -1, SQLITE_STATIC);
    bind_time(st, 3, now_us);
    int step = sqlite3_step(st);
    done(st);
    return step == SQLITE_DONE ? 0 : fail(c, err, "inbox");
}

static int sq_inbox_purge(void *conn, int64_t before_us, size_t limit, size_t *deleted,
                          ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_INBOX_PURGE, err);
    if (!st) return EW_EIO;
    bind_time(st, 1, before_us);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
    int step = sqlite3_step(st);
    done(st);
    if (step != SQLITE_DONE) return fail(c, err, "inbox purge");
    *deleted = (size_t)sqlite3_changes(c->db);
    return 0;
}

static int sq_outbox_add(void *conn, const char *event_id, const char *event, size_t len,
                         int64_t now_us, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_OUTBOX_ADD, err);
    if (!st) return EW_EIO;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, event, (int)len, SQLITE_STATIC);
    bind_time(st, 3, now_us);
    int step = sqlite3_step(st);
    done(st);
    return step == SQLITE_DONE ? 0 : fail(c, err, "outbox");
}

/* No lock is held while the batch is published: the write lock of the file would stop every
 * other writer, the bus's appends among them. Two relays on one file may both send a row. */
static int sq_outbox_claim(void *conn, size_t limit, ew__outbox_row_fn fn, void *ud, ew_error *err)
{
    sq *c = conn;
    sqlite3_stmt *st = stmt(c, S_OUTBOX_CLAIM, err);
    if (!st) return EW_EIO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)limit);
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ew__outbox_row r = {sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
                            (size_t)sqlite3_column_bytes(st, 1)};
        if (!r.event) r.event = "";
        if (fn(ud, &r)) break;
    }
    int rc = step == SQLITE_ROW || step == SQLITE_DONE ? 0 : fail(c, err, "outbox");
    done(st);
    return rc;
}

static int sq_outbox_mark(void *conn, const int64_t *ids, size_t n, int64_t now_us, ew_error *err)
{
    sq *c = conn;
    int rc;
    if ((rc = begin_tx(c, err))) return rc;
    sqlite3_stmt *st = stmt(c, S_OUTBOX_MARK, err);
    if (!st) goto fail;
    bind_time(st, 2, now_us);
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_int64(st, 1, ids[i]);
        int step = sqlite3_step(st);
        sqlite3_reset(st);
        if (step != SQLITE_DONE) {
            rc = fail(c, err, "outbox");
            sqlite3_clear_bindings(st);
            goto fail;
        }
    }
    sqlite3_clear_bindings(st);
    return commit_tx(c, err);
fail:
    rollback_tx(c);
    return rc ? rc : EW_EIO;
}

static void sq_outbox_release(void *conn)
{
    (void)conn; /* nothing is held */
}

const ew_store_ops ew__store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .append = sq_append,
    .read_stream = sq_read_stream,
    .read_all = sq_read_all,
    .head = sq_head,
    .stream_version = sq_stream_version,
    .purge = sq_purge,
    .dlq_put = sq_dlq_put,
    .dlq_list = sq_dlq_list,
    .dlq_set_status = sq_dlq_set_status,
    .begin = begin_tx,
    .commit = commit_tx,
    .rollback = rollback_tx,
    .exec = sq_exec,
    .inbox_seen = sq_inbox_seen,
    .inbox_record = sq_inbox_record,
    .inbox_purge = sq_inbox_purge,
    .outbox_add = sq_outbox_add,
    .outbox_claim = sq_outbox_claim,
    .outbox_mark = sq_outbox_mark,
    .outbox_release = sq_outbox_release,
    .record = sq_record,
    .data_version = sq_data_version,
    .group_create = sq_group_create,
    .group_get = sq_group_get,
    .group_lease = sq_group_lease,
    .group_commit = sq_group_commit,
    .sync_commits = sq_sync_commits,
    .script = sq_script,
};
