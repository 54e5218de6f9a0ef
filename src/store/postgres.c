/* eventwire — the PostgreSQL store (EVENT_STORE_URL=postgresql://...), through libpq.
 *
 * Tables live in the schema event_store. Appends are serialised by one transaction-level
 * advisory lock held to commit, so positions are handed out in commit order. The common append
 * is one statement (append_fast); what it leaves (duplicates, conflicts, a busy lock) goes to
 * the function event_store.append_events (001_init.sql). Statements are prepared once per
 * connection. The outbox relay has a connection of its own, so the rows it claims (FOR UPDATE
 * SKIP LOCKED) stay locked while the batch is published without holding up the handle. A
 * connection that broke is re-established by the next call. */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/text.h"
#include "eventwire/clock.h"
#include "store/migrations.h"
#include "store/store_impl.h"

/* Taken by the migration runner of every process: one applies, the others then find it done. */
#define MIGRATION_LOCK "8231632784560172085"
/* Taken by every append and held to its commit (also by append_events in 001_init.sql). */
#define APPEND_LOCK "8231632784560172086"

/* A stream's version and the last position handed out, as append_events computes them: the
 * largest stored, or what the purge recorded when it deleted the newest. */
#define VERSION_OF_1                                                                               \
    "greatest((SELECT max(version) FROM event_store.events WHERE stream_id = $1), "                \
    "(SELECT version FROM event_store.streams WHERE stream_id = $1), 0)"
#define LAST_POSITION                                                                              \
    "greatest((SELECT max(position) FROM event_store.events), "                                    \
    "(SELECT position FROM event_store.positions WHERE id = 1), 0)"
/* Computed once (OFFSET 0 keeps the planner from copying the version into the filter). */
#define APPEND_STATE                                                                               \
    "(SELECT pg_try_advisory_xact_lock(" APPEND_LOCK ") AS locked, " VERSION_OF_1                  \
    " AS v, " LAST_POSITION " AS p OFFSET 0) c"
#define INSERT_EVENTS                                                                              \
    "INSERT INTO event_store.events (position, event_id, stream_id, version, event_type, "         \
    "event_version, data, metadata, recorded_at, expires_at) "

enum {
    P_APPEND_ONE,
    P_APPEND_MANY,
    P_APPEND,
    P_READ_STREAM,
    P_READ_ALL,
    P_READ_ALL_TYPE,
    P_HEAD,
    P_STREAM_VERSION,
    P_PURGE,
    P_DLQ_PUT,
    P_DLQ_LIST,
    P_DLQ_STATUS,
    P_INBOX_SEEN,
    P_INBOX_RECORD,
    P_INBOX_PURGE,
    P_OUTBOX_ADD,
    P_OUTBOX_CLAIM,
    P_OUTBOX_MARK,
    P_GROUP_CREATE,
    P_GROUP_GET,
    P_GROUP_LEASE,
    P_GROUP_COMMIT,
    P__COUNT
};

#define EVENT_COLUMNS                                                                              \
    "position, stream_id, version, event_type, metadata, data, "                                   \
    "(extract(epoch FROM recorded_at) * 1000000)::bigint, event_id"

static const struct {
    const char *name, *what, *sql;
} stmts[P__COUNT] = {
    /* The fast path, one statement: written only when the appends' lock is free and the expected
     * version holds. Its snapshot may predate the lock: an append that committed in between holds
     * the next position, so such a stale insert fails on the primary key, as a stored id fails
     * on event_id; then, as when nothing was written, append_events takes over. $1 stream,
     * $2 expected version, $3 ids, $4 types, $5 type versions, $6 metadata, $7 data,
     * $8 recorded, $9 expires. */
    [P_APPEND_ONE] = {"eventwire_append_one", "append",
                      INSERT_EVENTS "SELECT c.p + 1, $3, $1, c.v + 1, $4, $5::integer, $7::json, "
                                    "$6::json, $8::timestamptz, $9::timestamptz FROM " APPEND_STATE
                                    " WHERE c.locked AND ($2::bigint < 0 OR $2::bigint = c.v) "
                                    "RETURNING position, version"},
    [P_APPEND_MANY] = {"eventwire_append_many", "append",
                       INSERT_EVENTS
                       "SELECT c.p + u.n, u.id, $1, c.v + u.n, u.t, u.tv, u.d::json, "
                       "u.m::json, $8::timestamptz, $9::timestamptz FROM " APPEND_STATE
                       ", unnest($3::text[], $4::text[], $5::integer[], $6::text[], "
                       "$7::text[]) WITH ORDINALITY AS u(id, t, tv, m, d, n) "
                       "WHERE c.locked AND ($2::bigint < 0 OR $2::bigint = c.v) "
                       "RETURNING position, version"},
    [P_APPEND] = {"eventwire_append", "append",
                  "SELECT o_version, o_first, o_last, o_appended, o_duplicates FROM "
                  "event_store.append_events($1, $2::bigint, $3::text[], $4::text[], "
                  "$5::integer[], $6::text[], $7::text[], $8::timestamptz, $9::timestamptz)"},
    [P_READ_STREAM] = {"eventwire_read_stream", "read",
                       "SELECT " EVENT_COLUMNS " FROM event_store.events WHERE stream_id = $1 "
                       "AND version >= $2::bigint ORDER BY version LIMIT $3::bigint"},
    [P_READ_ALL] = {"eventwire_read_all", "read",
                    "SELECT " EVENT_COLUMNS " FROM event_store.events WHERE position > $1::bigint "
                    "ORDER BY position LIMIT $2::bigint"},
    [P_READ_ALL_TYPE] = {"eventwire_read_all_type", "read",
                         "SELECT " EVENT_COLUMNS " FROM event_store.events WHERE position > "
                         "$1::bigint AND event_type = $3 ORDER BY position LIMIT $2::bigint"},
    [P_HEAD] = {"eventwire_head", "head", "SELECT " LAST_POSITION},
    [P_STREAM_VERSION] = {"eventwire_stream_version", "stream version", "SELECT " VERSION_OF_1},
    /* One batch, and what it deleted recorded: the last position, and the version of each
     * stream, so that neither is handed out again. */
    [P_PURGE] = {"eventwire_purge", "purge",
                 "WITH d AS (DELETE FROM event_store.events WHERE position IN (SELECT position "
                 "FROM event_store.events WHERE expires_at <= $1::timestamptz ORDER BY position "
                 "LIMIT $2::bigint) RETURNING position, stream_id, version), "
                 "s AS (INSERT INTO event_store.streams AS t (stream_id, version) SELECT "
                 "stream_id, max(version) FROM d GROUP BY stream_id ON CONFLICT (stream_id) DO "
                 "UPDATE SET version = greatest(t.version, excluded.version)), "
                 "p AS (UPDATE event_store.positions SET position = greatest(position, (SELECT "
                 "max(position) FROM d)) WHERE id = 1 AND EXISTS (SELECT 1 FROM d)) "
                 "SELECT count(*) FROM d"},
    [P_DLQ_PUT] = {"eventwire_dlq_put", "dead letter",
                   "INSERT INTO event_store.dead_letter_queue AS d (event_id, event_name, "
                   "handler, subscriber_group, event, error, attempts, first_failed_at, "
                   "last_failed_at, status, updated_at, transport) VALUES ($1, $2, $3, $4, $5, "
                   "$6, $7::integer, $8::timestamptz, $9::timestamptz, 'pending', "
                   "$10::timestamptz, $11) "
                   "ON CONFLICT (event_id, handler, subscriber_group) DO UPDATE SET "
                   "attempts = d.attempts + excluded.attempts, "
                   "first_failed_at = least(d.first_failed_at, excluded.first_failed_at), "
                   "last_failed_at = excluded.last_failed_at, error = excluded.error, "
                   "event = excluded.event, event_name = excluded.event_name, "
                   "status = 'pending', updated_at = excluded.updated_at, "
                   "transport = excluded.transport"},
    [P_DLQ_LIST] = {"eventwire_dlq_list", "dead letters",
                    "SELECT id, event_id, event_name, handler, subscriber_group, event, error, "
                    "attempts, (extract(epoch FROM first_failed_at) * 1000000)::bigint, "
                    "(extract(epoch FROM last_failed_at) * 1000000)::bigint, status, transport "
                    "FROM event_store.dead_letter_queue "
                    "WHERE ($1::text IS NULL OR event_name = $1) "
                    "AND ($2::text IS NULL OR handler = $2) "
                    "AND ($3::text IS NULL OR subscriber_group = $3) "
                    "AND ($4::text IS NULL OR status = $4) AND ($5::bigint IS NULL OR id = $5) "
                    "ORDER BY last_failed_at DESC, id DESC LIMIT $6::bigint"},
    [P_DLQ_STATUS] = {"eventwire_dlq_status", "dead letter status",
                      "UPDATE event_store.dead_letter_queue SET status = $2, "
                      "updated_at = $3::timestamptz WHERE id = $1::bigint "
                      "AND ($4::text IS NULL OR status = $4)"},
    [P_INBOX_SEEN] = {"eventwire_inbox_seen", "inbox",
                      "SELECT 1 FROM event_store.processed_events WHERE handler = $1 AND "
                      "event_id = $2"},
    [P_INBOX_RECORD] = {"eventwire_inbox_record", "inbox",
                        "INSERT INTO event_store.processed_events (handler, event_id, "
                        "processed_at) VALUES ($1, $2, $3::timestamptz)"},
    [P_INBOX_PURGE] = {"eventwire_inbox_purge", "inbox purge",
                       "DELETE FROM event_store.processed_events WHERE (handler, event_id) IN "
                       "(SELECT handler, event_id FROM event_store.processed_events WHERE "
                       "processed_at < $1::timestamptz LIMIT $2::bigint)"},
    [P_OUTBOX_ADD] = {"eventwire_outbox_add", "outbox",
                      "INSERT INTO event_store.outbox (event_id, event, created_at) VALUES ($1, "
                      "$2::json, $3::timestamptz) ON CONFLICT (event_id) DO NOTHING"},
    [P_OUTBOX_CLAIM] = {"eventwire_outbox_claim", "outbox",
                        "SELECT id, event FROM event_store.outbox WHERE sent_at IS NULL "
                        "ORDER BY id LIMIT $1::bigint FOR UPDATE SKIP LOCKED"},
    [P_OUTBOX_MARK] = {"eventwire_outbox_mark", "outbox",
                       "UPDATE event_store.outbox SET sent_at = $2::timestamptz "
                       "WHERE id = ANY($1::bigint[])"},
    /* The subscriber groups of the SQLite bus (002_bus_groups.sql), the same here. */
    [P_GROUP_CREATE] =
        {"eventwire_group_create", "subscriber group",
         "INSERT INTO event_store.bus_groups (group_name, position, owner, "
         "lease_until, updated_at) SELECT $1, CASE WHEN $2::boolean THEN 0 ELSE " LAST_POSITION
         " END, NULL, NULL, $3::timestamptz "
         "ON CONFLICT (group_name) DO NOTHING"},
    [P_GROUP_GET] = {"eventwire_group_get", "subscriber group",
                     "SELECT position, owner, "
                     "(extract(epoch FROM lease_until) * 1000000)::bigint, "
                     "(extract(epoch FROM updated_at) * 1000000)::bigint "
                     "FROM event_store.bus_groups WHERE group_name = $1"},
    [P_GROUP_LEASE] = {"eventwire_group_lease", "subscriber group lease",
                       "UPDATE event_store.bus_groups SET owner = $2, "
                       "lease_until = $4::timestamptz, updated_at = $3::timestamptz "
                       "WHERE group_name = $1 AND (owner IS NULL OR owner = $2 OR "
                       "lease_until IS NULL OR lease_until < $3::timestamptz OR owner = $5)"},
    [P_GROUP_COMMIT] = {"eventwire_group_commit", "subscriber group position",
                        "UPDATE event_store.bus_groups SET "
                        "position = greatest(position, $3::bigint), "
                        "owner = CASE WHEN $5::timestamptz IS NULL THEN NULL ELSE owner END, "
                        "lease_until = $5::timestamptz, updated_at = $4::timestamptz "
                        "WHERE group_name = $1 AND owner = $2"},
};

typedef struct session {
    PGconn *conn;
    uint32_t prepared; /* bit i: stmts[i] is prepared on conn */
    int in_txn;
} session;

typedef struct pgs {
    session main, relay;
    bool sync; /* ew__store_sync_commits: synchronous_commit = on in every session */
    char *url;
    const ew__store_log *log;
    ew_buf arr[5]; /* the append's array parameters, reused */
} pgs;

/* ---- connections ---------------------------------------------------------------------------- */

static int fail(session *s, PGresult *r, ew_error *err, const char *what)
{
    char msg[240];
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    ew_one_line(msg, sizeof msg, m && *m ? m : PQerrorMessage(s->conn));
    int code = PQstatus(s->conn) == CONNECTION_BAD ? EW_ECONNECT : EW_EIO;
    PQclear(r);
    return ew_error_set(err, code, "postgresql: %s: %s", what, msg);
}

static void notice(void *arg, const char *message)
{
    pgs *c = arg;
    char msg[240];
    ew_one_line(msg, sizeof msg, message);
    ew__store_logf(c->log, EW_LOG_DEBUG, "postgresql: %s", msg);
}

/* Runs SQL without parameters (several statements allowed). */
static int simple(session *s, const char *sql, ew_error *err)
{
    PGresult *r = PQexec(s->conn, sql);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) return fail(s, r, err, sql);
    PQclear(r);
    return 0;
}

static int session_setup(pgs *c, session *s, ew_error *err)
{
    PQsetNoticeProcessor(s->conn, notice, c);
    s->prepared = 0;
    s->in_txn = 0;
    int rc = simple(s, "SET TIME ZONE 'UTC'; SET client_min_messages = warning", err);
    if (!rc && c->sync) rc = simple(s, "SET synchronous_commit = on", err);
    return rc;
}

static int session_connect(pgs *c, session *s, ew_error *err)
{
    /* Defaults first: what the URL says (dbname is expanded last) wins. */
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"10", "eventwire", c->url, NULL};
    s->conn = PQconnectdbParams(keys, vals, 1);
    if (!s->conn) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (PQstatus(s->conn) != CONNECTION_OK) {
        char msg[240];
        ew_one_line(msg, sizeof msg, PQerrorMessage(s->conn));
        PQfinish(s->conn);
        s->conn = NULL;
        return ew_error_set(err, EW_ECONNECT, "postgresql: cannot connect: %s", msg);
    }
    return session_setup(c, s, err);
}

/* A usable connection: connects the first time, reconnects after it broke. */
static int ready(pgs *c, session *s, ew_error *err)
{
    if (s->conn && PQstatus(s->conn) == CONNECTION_OK) return 0;
    if (!s->conn) return session_connect(c, s, err);
    ew__store_logf(c->log, EW_LOG_WARN, "postgresql: connection lost, reconnecting");
    PQreset(s->conn);
    if (PQstatus(s->conn) != CONNECTION_OK) {
        char msg[240];
        ew_one_line(msg, sizeof msg, PQerrorMessage(s->conn));
        return ew_error_set(err, EW_ECONNECT, "postgresql: cannot reconnect: %s", msg);
    }
    return session_setup(c, s, err);
}

static int result_ok(const PGresult *r)
{
    ExecStatusType t = PQresultStatus(r);
    return t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK;
}

/* Prepares statement id on the session, once. */
static int prepare(session *s, int id, ew_error *err)
{
    if (s->prepared & (1u << id)) return 0;
    PGresult *r = PQprepare(s->conn, stmts[id].name, stmts[id].sql, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) return fail(s, r, err, stmts[id].what);
    PQclear(r);
    s->prepared |= 1u << id;
    return 0;
}

/* Runs prepared statement id (preparing it on first use) and returns its result, failed or not;
 * NULL and *rc when it could not be sent. */
static PGresult *run_any(session *s, int id, int n, const char *const *vals, int *rc, ew_error *err)
{
    if ((*rc = prepare(s, id, err))) return NULL;
    PGresult *r = PQexecPrepared(s->conn, stmts[id].name, n, vals, NULL, NULL, 0);
    if (!r) *rc = fail(s, NULL, err, stmts[id].what);
    return r;
}

/* Runs prepared statement id; NULL and *rc on error. */
static PGresult *run(session *s, int id, int n, const char *const *vals, int *rc, ew_error *err)
{
    PGresult *r = run_any(s, id, n, vals, rc, err);
    if (r && !result_ok(r)) {
        *rc = fail(s, r, err, stmts[id].what);
        return NULL;
    }
    return r;
}

static int64_t to_i64(const char *s)
{
    return s && *s ? strtoll(s, NULL, 10) : 0;
}

static const char *fmt_time(char buf[EW_TIME_LEN + 1], int64_t us)
{
    return ew_time_format(us, buf) == 0 ? buf : NULL;
}

/* ---- open: migrations --------------------------------------------------------------------- */

static int migrate(pgs *c, ew_error *err)
{
    session *s = &c->main;
    for (size_t i = 0; i < ew__migrations_postgresql_count; i++) {
        const ew_migration *m = &ew__migrations_postgresql[i];
        int rc = simple(s,
                        "BEGIN; SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ");"
                        "CREATE SCHEMA IF NOT EXISTS event_store;"
                        "CREATE TABLE IF NOT EXISTS event_store.schema_migrations ("
                        "number INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                        err);
        if (rc) goto fail;
        char num[16];
        snprintf(num, sizeof num, "%d", m->number);
        const char *v[2] = {num, m->name};
        PGresult *r = PQexecParams(s->conn,
                                   "SELECT 1 FROM event_store.schema_migrations WHERE number = "
                                   "$1::integer",
                                   1, NULL, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            rc = fail(s, r, err, "reading schema_migrations");
            goto fail;
        }
        int applied = PQntuples(r) > 0;
        PQclear(r);
        if (!applied) {
            r = PQexec(s->conn, m->sql);
            ExecStatusType t = PQresultStatus(r);
            if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) {
                char what[96];
                snprintf(what, sizeof what, "migration %s", m->name);
                rc = fail(s, r, err, what);
                goto fail;
            }
            PQclear(r);
            r = PQexecParams(s->conn,
                             "INSERT INTO event_store.schema_migrations (number, name) VALUES "
                             "($1::integer, $2)",
                             2, NULL, v, NULL, NULL, 0);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                rc = fail(s, r, err, "recording a migration");
                goto fail;
            }
            PQclear(r);
            ew__store_logf(c->log, EW_LOG_INFO, "postgresql: applied migration %s", m->name);
        }
        if ((rc = simple(s, "COMMIT", err))) return rc;
        continue;
    fail:
        if (PQstatus(s->conn) == CONNECTION_OK) simple(s, "ROLLBACK", NULL);
        return rc;
    }
    return 0;
}

static void pg_close(void *conn)
{
    pgs *c = conn;
    if (!c) return;
    if (c->main.conn) PQfinish(c->main.conn);
    if (c->relay.conn) PQfinish(c->relay.conn);
    for (int i = 0; i < 5; i++)
        ew_buf_release(&c->arr[i]);
    free(c->url);
    free(c);
}

int ew__pg_url_check(const char *url, ew_error *err)
{
    char *perr = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &perr);
    if (!o) {
        char msg[200];
        ew_one_line(msg, sizeof msg, perr ? perr : "out of memory");
        PQfreemem(perr);
        return ew_error_set(err, EW_ECONFIG, "EVENT_STORE_URL: %s", msg);
    }
    PQconninfoFree(o);
    return 0;
}

static int pg_open(void **conn, const char *url, const ew__store_log *log, ew_error *err)
{
    int rc = ew__pg_url_check(url, err);
    if (rc) return rc;
    pgs *c = calloc(1, sizeof *c);
    if (!c || !(c->url = strdup(url))) {
        free(c);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    c->log = log;
    for (int i = 0; i < 5; i++)
        ew_buf_init(&c->arr[i]);
    rc = session_connect(c, &c->main, err);
    if (!rc) rc = migrate(c, err);
    if (rc) {
        pg_close(c);
        return rc;
    }
    *conn = c;
    return 0;
}

/* ---- events ------------------------------------------------------------------------------- */

/* An element of a text[] literal: "..." with " and \ escaped. */
static void arr_str(ew_buf *b, const char *s, size_t n)
{
    ew_buf_putc(b, b->len > 1 ? ',' : '{');
    ew_buf_putc(b, '"');
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            ew_buf_append(b, s + start, i - start);
            ew_buf_putc(b, '\\');
            start = i;
        }
    }
    ew_buf_append(b, s + start, n - start);
    ew_buf_putc(b, '"');
}

/* The array parameters $3..$7 of the append statements, for recs[0..n), into v[2..6]. */
static int fill_arrays(pgs *c, const ew__store_rec *recs, size_t n, const char **v, ew_error *err)
{
    ew_buf *ids = &c->arr[0], *types = &c->arr[1], *tv = &c->arr[2], *meta = &c->arr[3],
           *data = &c->arr[4];
    for (int i = 0; i < 5; i++)
        ew_buf_reset(&c->arr[i]);
    for (size_t i = 0; i < n; i++) {
        const ew__store_rec *r = &recs[i];
        arr_str(ids, r->event_id, strlen(r->event_id));
        arr_str(types, r->event_type, strlen(r->event_type));
        ew_buf_printf(tv, "%c%d", i ? ',' : '{', r->event_version);
        arr_str(meta, r->metadata, r->metadata_len);
        arr_str(data, r->data, r->data_len);
    }
    for (int i = 0; i < 5; i++) {
        if (n == 0) ew_buf_putc(&c->arr[i], '{');
        ew_buf_putc(&c->arr[i], '}');
        if (c->arr[i].oom) return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    const char *many[5] = {ids->data, types->data, tv->data, meta->data, data->data};
    memcpy(v + 2, many, sizeof many);
    return 0;
}

/* The fast path (P_APPEND_ONE, P_APPEND_MANY): one statement, its own transaction. 0: appended;
 * 1: nothing was written and append_events must decide (the lock was busy, an id is stored, the
 * expected version does not hold, or the statement saw the log before the last append). */
static int append_fast(pgs *c, const ew__append_args *a, const char *const *v,
                       ew_append_result *res, ew_error *err)
{
    int rc = 0;
    PGresult *r = run_any(&c->main, a->n == 1 ? P_APPEND_ONE : P_APPEND_MANY, 9, v, &rc, err);
    if (!r) return rc;
    if (!result_ok(r)) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "23505") == 0) { /* unique violation: rolled back */
            PQclear(r);
            return 1;
        }
        return fail(&c->main, r, err, "append");
    }
    int n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return 1;
    }
    res->first_position = res->last_position = to_i64(PQgetvalue(r, 0, 0));
    res->version = to_i64(PQgetvalue(r, 0, 1));
    for (int i = 1; i < n; i++) {
        int64_t p = to_i64(PQgetvalue(r, i, 0)), ver = to_i64(PQgetvalue(r, i, 1));
        if (p < res->first_position) res->first_position = p;
        if (p > res->last_position) res->last_position = p;
        if (ver > res->version) res->version = ver;
    }
    res->appended = (size_t)n;
    res->duplicates = 0;
    PQclear(r);
    return 0;
}

static int pg_append(void *conn, const ew__append_args *a, ew_append_result *res, ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    char expected[24], rec[EW_TIME_LEN + 1], exp[EW_TIME_LEN + 1], tv1[16];
    snprintf(expected, sizeof expected, "%lld", (long long)a->expected_version);
    const char *v[9] = {a->stream_id,
                        expected,
                        NULL,
                        NULL,
                        NULL,
                        NULL,
                        NULL,
                        fmt_time(rec, a->recorded_us),
                        a->expires_us ? fmt_time(exp, a->expires_us) : NULL};
    ew_buf *meta = &c->arr[3], *data = &c->arr[4];
    if (a->n == 1) { /* scalars; text parameters end at a NUL, so metadata and data are copied */
        const ew__store_rec *r = &a->recs[0];
        snprintf(tv1, sizeof tv1, "%d", r->event_version);
        ew_buf_reset(meta);
        ew_buf_append(meta, r->metadata, r->metadata_len);
        ew_buf_reset(data);
        ew_buf_append(data, r->data, r->data_len);
        if (meta->oom || data->oom) return ew_error_set(err, EW_ENOMEM, "out of memory");
        const char *one[5] = {r->event_id, r->event_type, tv1, meta->data, data->data};
        memcpy(v + 2, one, sizeof one);
        if ((rc = append_fast(c, a, v, res, err)) <= 0) return rc;
    }
    if ((rc = fill_arrays(c, a->recs, a->n, v, err))) return rc;
    if (a->n > 1 && (rc = append_fast(c, a, v, res, err)) <= 0) return rc;

    /* The general path: duplicates, conflicts, nothing to write. */
    PGresult *r = run_any(&c->main, P_APPEND, 9, v, &rc, err);
    if (!r) return rc;
    if (!result_ok(r)) {
        /* EW409: a conflict, the stream's version in DETAIL (001_init.sql) */
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "EW409") == 0) {
            long long version = to_i64(PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL));
            PQclear(r);
            return ew_error_set(err, EW_ECONFLICT, "stream %s is at version %lld, expected %lld",
                                a->stream_id, version, (long long)a->expected_version);
        }
        return fail(&c->main, r, err, "append");
    }
    if (PQntuples(r) != 1 || PQnfields(r) != 5) {
        PQclear(r);
        return ew_error_set(err, EW_EIO, "postgresql: append: unexpected result");
    }
    res->version = to_i64(PQgetvalue(r, 0, 0));
    res->first_position = to_i64(PQgetvalue(r, 0, 1));
    res->last_position = to_i64(PQgetvalue(r, 0, 2));
    res->appended = (size_t)to_i64(PQgetvalue(r, 0, 3));
    res->duplicates = (size_t)to_i64(PQgetvalue(r, 0, 4));
    PQclear(r);
    return 0;
}

static int event_rows(PGresult *r, ew__event_row_fn fn, void *ud)
{
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        ew__event_row row;
        row.position = to_i64(PQgetvalue(r, i, 0));
        row.stream_id = PQgetvalue(r, i, 1);
        row.version = to_i64(PQgetvalue(r, i, 2));
        row.event_type = PQgetvalue(r, i, 3);
        row.metadata = PQgetvalue(r, i, 4);
        row.metadata_len = (size_t)PQgetlength(r, i, 4);
        row.data = PQgetvalue(r, i, 5);
        row.data_len = (size_t)PQgetlength(r, i, 5);
        row.recorded_us = to_i64(PQgetvalue(r, i, 6));
        row.event_id = PQgetvalue(r, i, 7);
        if (fn(ud, &row)) break;
    }
    PQclear(r);
    return 0;
}

static int pg_read_stream(void *conn, const char *stream_id, int64_t from_version, size_t limit,
                          ew__event_row_fn fn, void *ud, ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    char from[24], lim[24];
    snprintf(from, sizeof from, "%lld", (long long)from_version);
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *v[3] = {stream_id, from, lim};
    PGresult *r = run(&c->main, P_READ_STREAM, 3, v, &rc, err);
    return r ? event_rows(r, fn, ud) : rc;
}

static int pg_read_all(void *conn, int64_t after, const char *type, size_t limit,
                       ew__event_row_fn fn, void *ud, ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    char from[24], lim[24];
    snprintf(from, sizeof from, "%lld", (long long)after);
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *v[3] = {from, lim, type};
    PGresult *r = run(&c->main, type ? P_READ_ALL_TYPE : P_READ_ALL, type ? 3 : 2, v, &rc, err);
    return r ? event_rows(r, fn, ud) : rc;
}

static int one_int(pgs *c, int id, const char *arg, int64_t *out, ew_error *err)
{
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    const char *v[1] = {arg};
    PGresult *r = run(&c->main, id, arg ? 1 : 0, v, &rc, err);
    if (!r) return rc;
    *out = PQntuples(r) > 0 ? to_i64(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return 0;
}

static int pg_head(void *conn, int64_t *position, ew_error *err)
{
    return one_int(conn, P_HEAD, NULL, position, err);
}

static int pg_stream_version(void *conn, const char *stream_id, int64_t *version, ew_error *err)
{
    return one_int(conn, P_STREAM_VERSION, stream_id, version, err);
}

/* A statement run on its own (its own transaction); *changed gets the rows it changed. */
static int changing(pgs *c, int id, int n, const char *const *v, size_t *changed, ew_error *err)
{
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    PGresult *r = run(&c->main, id, n, v, &rc, err);
    if (!r) return rc;
    if (changed) *changed = (size_t)to_i64(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

static int pg_purge(void *conn, int64_t now_us, size_t limit, size_t *deleted, ew_error *err)
{
    char now[EW_TIME_LEN + 1], lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    int64_t n = 0;
    const char *v[2] = {fmt_time(now, now_us), lim};
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    PGresult *r = run(&c->main, P_PURGE, 2, v, &rc, err);
    if (!r) return rc;
    if (PQntuples(r) == 1) n = to_i64(PQgetvalue(r, 0, 0));
    PQclear(r);
    *deleted = (size_t)n;
    return 0;
}

/* ---- dead letters ------------------------------------------------------------------------- */

static int pg_dlq_put(void *conn, const ew__dlq_put *p, ew_error *err)
{
    char attempts[16], first[EW_TIME_LEN + 1], last[EW_TIME_LEN + 1], now[EW_TIME_LEN + 1];
    snprintf(attempts, sizeof attempts, "%d", p->attempts);
    const char *v[11] = {p->event_id,
                         p->event_name,
                         p->handler,
                         p->group,
                         p->event,
                         p->error,
                         attempts,
                         fmt_time(first, p->first_failed_us),
                         fmt_time(last, p->last_failed_us),
                         fmt_time(now, p->now_us),
                         p->transport};
    return changing(conn, P_DLQ_PUT, 11, v, NULL, err);
}

static int pg_dlq_list(void *conn, const ew_dlq_filter *f, int64_t id, ew__dlq_row_fn fn, void *ud,
                       ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    char ids[24], lim[24];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    snprintf(lim, sizeof lim, "%zu", f->limit);
    const char *v[6] = {f->event_name,
                        f->handler,
                        f->group,
                        f->status >= 0 ? ew_dlq_status_name((ew_dlq_status)f->status) : NULL,
                        id > 0 ? ids : NULL,
                        f->limit ? lim : NULL};
    PGresult *r = run(&c->main, P_DLQ_LIST, 6, v, &rc, err);
    if (!r) return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        ew_dlq_row row;
        row.id = to_i64(PQgetvalue(r, i, 0));
        row.event_id = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
        row.event_name = PQgetisnull(r, i, 2) ? NULL : PQgetvalue(r, i, 2);
        row.handler = PQgetvalue(r, i, 3);
        row.subscriber_group = PQgetvalue(r, i, 4);
        row.event = PQgetvalue(r, i, 5);
        row.error = PQgetvalue(r, i, 6);
        row.attempts = (int)to_i64(PQgetvalue(r, i, 7));
        row.first_failed_us = to_i64(PQgetvalue(r, i, 8));
        row.last_failed_us = to_i64(PQgetvalue(r, i, 9));
        int st = ew__dlq_status_parse(PQgetvalue(r, i, 10));
        row.status = st < 0 ? EW_DLQ_PENDING : (ew_dlq_status)st;
        row.transport = PQgetisnull(r, i, 11) ? NULL : PQgetvalue(r, i, 11);
        if (fn(ud, &row)) break;
    }
    PQclear(r);
    return 0;
}

static int pg_dlq_set_status(void *conn, int64_t id, int from, ew_dlq_status status, int64_t now_us,
                             int *changed, ew_error *err)
{
    char ids[24], now[EW_TIME_LEN + 1];
    snprintf(ids, sizeof ids, "%lld", (long long)id);
    const char *v[4] = {ids, ew_dlq_status_name(status), fmt_time(now, now_us),
                        from >= 0 ? ew_dlq_status_name((ew_dlq_status)from) : NULL};
    size_t n = 0;
    int rc = changing(conn, P_DLQ_STATUS, 4, v, &n, err);
    *changed = n > 0;
    return rc;
}

/* ---- the log as a bus ---------------------------------------------------------------------- */

/* In the caller's transaction: each run of events of one stream through append_events, which
 * takes the appends' lock (held to the commit) and skips stored ids. */
static int pg_record(void *conn, const ew__record_args *a, ew_append_result *res, ew_error *err)
{
    pgs *c = conn;
    char rec[EW_TIME_LEN + 1], exp[EW_TIME_LEN + 1];
    const char *v[9] = {NULL,
                        "-1",
                        NULL,
                        NULL,
                        NULL,
                        NULL,
                        NULL,
                        fmt_time(rec, a->recorded_us),
                        a->expires_us ? fmt_time(exp, a->expires_us) : NULL};
    memset(res, 0, sizeof *res);
    for (size_t i = 0, j; i < a->n; i = j) {
        for (j = i + 1; j < a->n && strcmp(a->streams[j], a->streams[i]) == 0;)
            j++;
        v[0] = a->streams[i];
        int rc = fill_arrays(c, a->recs + i, j - i, v, err);
        if (rc) return rc;
        PGresult *r = run(&c->main, P_APPEND, 9, v, &rc, err);
        if (!r) return rc;
        if (PQntuples(r) != 1 || PQnfields(r) != 5) {
            PQclear(r);
            return ew_error_set(err, EW_EIO, "postgresql: record: unexpected result");
        }
        size_t appended = (size_t)to_i64(PQgetvalue(r, 0, 3));
        if (appended) {
            res->version = to_i64(PQgetvalue(r, 0, 0));
            if (!res->first_position) res->first_position = to_i64(PQgetvalue(r, 0, 1));
            res->last_position = to_i64(PQgetvalue(r, 0, 2));
        }
        res->appended += appended;
        res->duplicates += (size_t)to_i64(PQgetvalue(r, 0, 4));
        PQclear(r);
    }
    return 0;
}

static int pg_data_version(void *conn, int64_t *version, ew_error *err)
{
    *version = 0;
    return ew_error_set(err, EW_ENOTSUP, "postgresql has no data version: poll ew_store_head");
}

static int pg_group_create(void *conn, const char *group, int from_beginning, int64_t now_us,
                           ew_error *err)
{
    char now[EW_TIME_LEN + 1];
    const char *v[3] = {group, from_beginning ? "true" : "false", fmt_time(now, now_us)};
    return changing(conn, P_GROUP_CREATE, 3, v, NULL, err);
}

static int pg_group_get(void *conn, const char *group, int (*fn)(void *, const ew__group_row *),
                        void *ud, int *found, ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (rc) return rc;
    const char *v[1] = {group};
    PGresult *r = run(&c->main, P_GROUP_GET, 1, v, &rc, err);
    if (!r) return rc;
    *found = PQntuples(r) > 0;
    if (*found) {
        ew__group_row row = {to_i64(PQgetvalue(r, 0, 0)),
                             PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1),
                             to_i64(PQgetvalue(r, 0, 2)), to_i64(PQgetvalue(r, 0, 3))};
        fn(ud, &row);
    }
    PQclear(r);
    return 0;
}

static int pg_group_lease(void *conn, const char *group, const char *owner, const char *from,
                          int64_t now_us, int64_t until_us, int *held, ew_error *err)
{
    char now[EW_TIME_LEN + 1], until[EW_TIME_LEN + 1];
    const char *v[5] = {group, owner, fmt_time(now, now_us), fmt_time(until, until_us), from};
    size_t changed = 0;
    int rc = changing(conn, P_GROUP_LEASE, 5, v, &changed, err);
    *held = !rc && changed > 0;
    return rc;
}

static int pg_group_commit(void *conn, const char *group, const char *owner, int64_t position,
                           int64_t now_us, int64_t until_us, int *held, ew_error *err)
{
    char pos[24], now[EW_TIME_LEN + 1], until[EW_TIME_LEN + 1];
    snprintf(pos, sizeof pos, "%lld", (long long)position);
    const char *v[5] = {group, owner, pos, fmt_time(now, now_us),
                        until_us ? fmt_time(until, until_us) : NULL};
    size_t changed = 0;
    int rc = changing(conn, P_GROUP_COMMIT, 5, v, &changed, err);
    *held = !rc && changed > 0;
    return rc;
}

static int pg_sync_commits(void *conn, int on, ew_error *err)
{
    /* The server's synchronous_commit may be off (a deployment's choice, or the tests'): on = 1
     * sets it on for the handle's session, and again after a reconnect (session_setup); on = 0
     * gives the session the server's setting back. (The relay's session marks rows sent, which
     * a crash at worst sends again: it keeps what it had when it connected.) */
    pgs *c = conn;
    if (c->main.in_txn) return ew_error_set(err, EW_ESTATE, "postgresql: not inside a transaction");
    c->sync = on;
    int rc = ready(c, &c->main, err);
    if (!rc)
        rc = simple(&c->main, on ? "SET synchronous_commit = on" : "RESET synchronous_commit", err);
    return rc;
}

/* ---- transactions ------------------------------------------------------------------------- */

static int pg_begin(void *conn, ew_error *err)
{
    pgs *c = conn;
    int rc = ready(c, &c->main, err);
    if (!rc) rc = simple(&c->main, "BEGIN", err);
    c->main.in_txn = !rc;
    return rc;
}

static int pg_commit(void *conn, ew_error *err)
{
    pgs *c = conn;
    c->main.in_txn = 0;
    PGresult *r = PQexec(c->main.conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) return fail(&c->main, r, err, "commit");
    /* COMMIT of a transaction that had failed answers ROLLBACK, not an error. */
    int rolled_back = strcmp(PQcmdStatus(r), "ROLLBACK") == 0;
    PQclear(r);
    if (rolled_back)
        return ew_error_set(err, EW_EIO,
                            "postgresql: commit: the transaction was rolled back "
                            "(a statement in it failed)");
    return 0;
}

static void pg_rollback(void *conn)
{
    pgs *c = conn;
    c->main.in_txn = 0;
    if (PQstatus(c->main.conn) == CONNECTION_OK) simple(&c->main, "ROLLBACK", NULL);
}

static int pg_script(void *conn, const char *sql, ew_error *err)
{
    pgs *c = conn;
    session *s = &c->main;
    PGresult *r = PQexec(s->conn, sql); /* the simple protocol: several statements at once */
    if (PQresultStatus(r) != PGRES_COMMAND_OK) return fail(s, r, err, sql);
    PQclear(r);
    return 0;
}

static int pg_exec(void *conn, const char *sql, const char *const *params, size_t nparams,
                   ew__exec_row_fn fn, void *ud, int64_t *changes, ew_error *err)
{
    pgs *c = conn;
    session *s = &c->main;
    PGresult *r = PQexecParams(s->conn, sql, (int)nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) return fail(s, r, err, "statement");
    int rc = 0;
    if (fn && t == PGRES_TUPLES_OK) {
        int ncols = PQnfields(r), n = PQntuples(r);
        const char *names_s[16], *values_s[16];
        const char **names = names_s, **values = values_s;
        if (ncols > 16) {
            names = malloc((size_t)ncols * sizeof *names);
            values = malloc((size_t)ncols * sizeof *values);
        }
        if (!names || !values) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        } else {
            for (int j = 0; j < ncols; j++)
                names[j] = PQfname(r, j);
            for (int i = 0; i < n; i++) {
                for (int j = 0; j < ncols; j++)
                    values[j] = PQgetisnull(r, i, j) ? NULL : PQgetvalue(r, i, j);
                ew_row row = {(size_t)ncols, names, values};
                if (fn(ud, &row)) break;
            }
        }
        if (names != names_s) free(names);
        if (values != values_s) free(values);
    }
    if (changes) /* rows changed: a SELECT changes none, INSERT ... RETURNING does */
        *changes = strncmp(PQcmdStatus(r), "SELECT", 6) == 0 ? 0 : to_i64(PQcmdTuples(r));
    PQclear(r);
    return rc;
}

/* ---- the inbox and the outbox ------------------------------------------------------------- */

static int pg_inbox_seen(void *conn, const char *handler, const char *event_id, int *seen,
                         ew_error *err)
{
    pgs *c = conn;
    int rc = 0;
    const char *v[2] = {handler, event_id};
    PGresult *r = run(&c->main, P_INBOX_SEEN, 2, v, &rc, err);
    if (!r) return rc;
    *seen = PQntuples(r) > 0;
    PQclear(r);
    return 0;
}

static int pg_inbox_record(void *conn, const char *handler, const char *event_id, int64_t now_us,
                           ew_error *err)
{
    pgs *c = conn;
    int rc = 0;
    char now[EW_TIME_LEN + 1];
    const char *v[3] = {handler, event_id, fmt_time(now, now_us)};
    PGresult *r = run(&c->main, P_INBOX_RECORD, 3, v, &rc, err);
    if (!r) return rc;
    PQclear(r);
    return 0;
}

static int pg_inbox_purge(void *conn, int64_t before_us, size_t limit, size_t *deleted,
                          ew_error *err)
{
    char before[EW_TIME_LEN + 1], lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *v[2] = {fmt_time(before, before_us), lim};
    return changing(conn, P_INBOX_PURGE, 2, v, deleted, err);
}

static int pg_outbox_add(void *conn, const char *event_id, const char *event, size_t len,
                         int64_t now_us, ew_error *err)
{
    pgs *c = conn;
    int rc = 0;
    char now[EW_TIME_LEN + 1];
    (void)len; /* event is NUL-terminated */
    const char *v[3] = {event_id, event, fmt_time(now, now_us)};
    PGresult *r = run(&c->main, P_OUTBOX_ADD, 3, v, &rc, err);
    if (!r) return rc;
    PQclear(r);
    return 0;
}

static void pg_outbox_release(void *conn)
{
    pgs *c = conn;
    if (!c->relay.in_txn) return;
    c->relay.in_txn = 0;
    if (PQstatus(c->relay.conn) == CONNECTION_OK) simple(&c->relay, "ROLLBACK", NULL);
}

static int pg_outbox_claim(void *conn, size_t limit, ew__outbox_row_fn fn, void *ud, ew_error *err)
{
    pgs *c = conn;
    session *s = &c->relay;
    int rc = ready(c, s, err);
    if (!rc) rc = simple(s, "BEGIN", err);
    if (rc) return rc;
    s->in_txn = 1;
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *v[1] = {lim};
    PGresult *r = run(s, P_OUTBOX_CLAIM, 1, v, &rc, err);
    if (!r) {
        pg_outbox_release(c);
        return rc;
    }
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        ew__outbox_row row = {to_i64(PQgetvalue(r, i, 0)), PQgetvalue(r, i, 1),
                              (size_t)PQgetlength(r, i, 1)};
        if (fn(ud, &row)) break;
    }
    PQclear(r);
    return 0;
}

static int pg_outbox_mark(void *conn, const int64_t *ids, size_t n, int64_t now_us, ew_error *err)
{
    pgs *c = conn;
    session *s = &c->relay;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++)
        ew_buf_printf(&b, "%s%lld", i ? "," : "", (long long)ids[i]);
    ew_buf_putc(&b, '}');
    int rc = 0;
    if (b.oom) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else {
        char now[EW_TIME_LEN + 1];
        const char *v[2] = {b.data, fmt_time(now, now_us)};
        PGresult *r = run(s, P_OUTBOX_MARK, 2, v, &rc, err);
        if (r) {
            PQclear(r);
            s->in_txn = 0;
            rc = simple(s, "COMMIT", err);
        }
    }
    ew_buf_release(&b);
    if (rc) pg_outbox_release(c);
    return rc;
}

const ew_store_ops ew__store_postgres = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .append = pg_append,
    .read_stream = pg_read_stream,
    .read_all = pg_read_all,
    .head = pg_head,
    .stream_version = pg_stream_version,
    .purge = pg_purge,
    .dlq_put = pg_dlq_put,
    .dlq_list = pg_dlq_list,
    .dlq_set_status = pg_dlq_set_status,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .exec = pg_exec,
    .inbox_seen = pg_inbox_seen,
    .inbox_record = pg_inbox_record,
    .inbox_purge = pg_inbox_purge,
    .outbox_add = pg_outbox_add,
    .outbox_claim = pg_outbox_claim,
    .outbox_mark = pg_outbox_mark,
    .outbox_release = pg_outbox_release,
    .record = pg_record,
    .data_version = pg_data_version,
    .group_create = pg_group_create,
    .group_get = pg_group_get,
    .group_lease = pg_group_lease,
    .group_commit = pg_group_commit,
    .sync_commits = pg_sync_commits,
    .script = pg_script,
};
