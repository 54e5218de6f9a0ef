/* Benchmark of the event store's append, beside a raw baseline measured in the same run: the same
 * encoded rows (user.registered events of ~480 bytes over 100 streams) inserted into a table with
 * the same columns and indexes, in the same database, with a prepared statement and one
 * transaction per batch, and nothing else: no duplicate check, no version check, no streams
 * table, no encoding. SQLite always; PostgreSQL when EW_PG_URL names a database to use. */
#include <ftw.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/buf.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/store.h"

#define EVENT_BYTES 400
#define STREAMS 100
#define SECONDS 1.5 /* of timed work per figure, in ROUNDS slices alternating raw and append */
#define ROUNDS 5

static size_t pad = 0;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_store: %s: %s\n", what, msg);
    exit(1);
}

/* A user.registered; the user name is padded when the event is shorter than EVENT_BYTES (the
 * envelope alone, with its ids, time and schema, is about 400 bytes: the smallest is ~480). */
static ew_event *make_event(void)
{
    static const char *roles[] = {"user"};
    char id[EW_UUID_LEN + 1], name[EVENT_BYTES + 8];
    ew_uuid7(id);
    snprintf(name, sizeof name, "ada%.*s", (int)pad,
             "lovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelace"
             "lovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelace"
             "lovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelace"
             "lovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelace"
             "lovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelacelovelace");
    ew_user_registered d = {
        .user_id = id, .email = "ada@example.com", .username = name, .roles = {roles, 1}};
    ew_event_attrs a = {.source = "auth-service", .subject = id};
    ew_event *ev;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &a, &err)) die("event", err.msg);
    return ev;
}

/* A row as the store writes it: the envelope without data, and data (both NUL-terminated). */
typedef struct row {
    char id[EW_UUID_LEN + 1];
    const char *type;
    int type_version;
    char *meta, *data;
    size_t meta_len, data_len;
} row;

static void make_row(row *r)
{
    ew_event *ev = make_event();
    char *text;
    size_t len;
    if (ew_event_encode(ev, &text, &len, NULL)) die("encode", "failed");
    char *d = strstr(text, ",\"data\":");
    r->meta_len = (size_t)(d - text) + 1;
    r->data_len = len - 1 - (size_t)(d + 8 - text);
    r->meta = malloc(r->meta_len + 1);
    r->data = malloc(r->data_len + 1);
    memcpy(r->meta, text, r->meta_len - 1);
    memcpy(r->meta + r->meta_len - 1, "}", 2);
    memcpy(r->data, d + 8, r->data_len);
    r->data[r->data_len] = '\0';
    memcpy(r->id, ew_event_id(ev), sizeof r->id);
    r->type = ew_event_type(ev); /* static catalog text */
    r->type_version = ew_event_version(ev);
    free(text);
    ew_event_unref(ev);
}

static void free_rows(row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        free(rows[i].meta);
        free(rows[i].data);
    }
}

/* Events and timed nanoseconds of one figure, summed over its slices. */
typedef struct tally {
    long n;
    int64_t busy;
} tally;

static double rate(const tally *t)
{
    return t->busy > 0 ? (double)t->n / ((double)t->busy / 1e9) : 0;
}

/* One slice: until this much more timed work is done (and at least a few batches). */
static int slice_done(const tally *t, int64_t busy0, long n0)
{
    return t->busy - busy0 >= (int64_t)(SECONDS / ROUNDS * 1e9) && t->n - n0 >= 200;
}

/* ---- the store's append --------------------------------------------------------------------- */

static void bench_append(ew_store *s, const char *prefix, int batch, tally *t)
{
    ew_event *evs[100];
    const int64_t busy0 = t->busy;
    const long n0 = t->n;
    ew_error err = {0};
    for (long j = n0 / batch; !slice_done(t, busy0, n0); j++) {
        for (int i = 0; i < batch; i++)
            evs[i] = make_event();
        char stream[64];
        snprintf(stream, sizeof stream, "%s-%ld", prefix, j % STREAMS);
        int64_t t0 = ew_mono_ns();
        if (ew_store_append(s, stream, EW_EXPECT_ANY, (const ew_event *const *)evs, (size_t)batch,
                            NULL, &err))
            die("append", err.msg);
        t->busy += ew_mono_ns() - t0;
        t->n += batch;
        for (int i = 0; i < batch; i++)
            ew_event_unref(evs[i]);
    }
}

/* ---- SQLite ------------------------------------------------------------------------------ */

static const char *sqlite_raw_ddl =
    "CREATE TABLE event_store.bench_raw (position INTEGER PRIMARY KEY, event_id TEXT NOT NULL "
    "UNIQUE, stream_id TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL, "
    "event_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, recorded_at "
    "TEXT NOT NULL, expires_at TEXT, UNIQUE (stream_id, version));"
    "CREATE INDEX event_store.bench_raw_expires_at ON bench_raw (expires_at) WHERE expires_at IS "
    "NOT NULL;";

static void sq_check(sqlite3 *db, int rc, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        die(what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

/* The raw loop's connection: the file attached as the store attaches it, same pragmas. */
typedef struct sq_raw {
    sqlite3 *db;
    sqlite3_stmt *ins, *begin, *commit;
    int64_t pos, versions[STREAMS];
} sq_raw;

static void sq_raw_open(sq_raw *r, const char *path)
{
    memset(r, 0, sizeof *r);
    sqlite3_stmt *att;
    sq_check(NULL, sqlite3_open(":memory:", &r->db), "open");
    sqlite3_busy_timeout(r->db, 10000);
    sq_check(r->db, sqlite3_prepare_v2(r->db, "ATTACH DATABASE ?1 AS event_store", -1, &att, NULL),
             "attach");
    sqlite3_bind_text(att, 1, path, -1, SQLITE_STATIC);
    sq_check(r->db, sqlite3_step(att), "attach");
    sqlite3_finalize(att);
    sq_check(r->db,
             sqlite3_exec(r->db,
                          "PRAGMA event_store.journal_mode=WAL; PRAGMA "
                          "event_store.synchronous=NORMAL; DROP TABLE IF EXISTS "
                          "event_store.bench_raw",
                          NULL, NULL, NULL),
             "pragma");
    sq_check(r->db, sqlite3_exec(r->db, sqlite_raw_ddl, NULL, NULL, NULL), "create");
    sq_check(r->db,
             sqlite3_prepare_v2(r->db,
                                "INSERT INTO event_store.bench_raw (position, event_id, stream_id, "
                                "version, event_type, event_version, data, metadata, recorded_at, "
                                "expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                                -1, &r->ins, NULL),
             "prepare");
    sq_check(r->db, sqlite3_prepare_v2(r->db, "BEGIN IMMEDIATE", -1, &r->begin, NULL), "prepare");
    sq_check(r->db, sqlite3_prepare_v2(r->db, "COMMIT", -1, &r->commit, NULL), "prepare");
}

static void sq_raw_close(sq_raw *r)
{
    sqlite3_finalize(r->ins);
    sqlite3_finalize(r->begin);
    sqlite3_finalize(r->commit);
    sq_check(r->db, sqlite3_exec(r->db, "DROP TABLE event_store.bench_raw", NULL, NULL, NULL),
             "drop");
    sqlite3_close(r->db);
}

static void sq_raw_slice(sq_raw *r, int batch, tally *t)
{
    row rows[100];
    const int64_t busy0 = t->busy;
    const long n0 = t->n;
    for (long j = n0 / batch; !slice_done(t, busy0, n0); j++) {
        for (int i = 0; i < batch; i++)
            make_row(&rows[i]);
        char stream[32], rec[EW_TIME_LEN + 1], exp[EW_TIME_LEN + 1];
        snprintf(stream, sizeof stream, "raw-%ld", j % STREAMS);
        int64_t t0 = ew_mono_ns();
        int64_t now = ew_now_us();
        ew_time_format(now, rec);
        ew_time_format(now + 90LL * 86400 * 1000000, exp);
        sq_check(r->db, sqlite3_step(r->begin), "begin");
        sqlite3_reset(r->begin);
        sqlite3_bind_text(r->ins, 3, stream, -1, SQLITE_STATIC);
        sqlite3_bind_text(r->ins, 9, rec, -1, SQLITE_STATIC);
        sqlite3_bind_text(r->ins, 10, exp, -1, SQLITE_STATIC);
        for (int i = 0; i < batch; i++) {
            sqlite3_bind_int64(r->ins, 1, ++r->pos);
            sqlite3_bind_text(r->ins, 2, rows[i].id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(r->ins, 4, ++r->versions[j % STREAMS]);
            sqlite3_bind_text(r->ins, 5, rows[i].type, -1, SQLITE_STATIC);
            sqlite3_bind_int(r->ins, 6, rows[i].type_version);
            sqlite3_bind_text(r->ins, 7, rows[i].data, (int)rows[i].data_len, SQLITE_STATIC);
            sqlite3_bind_text(r->ins, 8, rows[i].meta, (int)rows[i].meta_len, SQLITE_STATIC);
            sq_check(r->db, sqlite3_step(r->ins), "insert");
            sqlite3_reset(r->ins);
        }
        sq_check(r->db, sqlite3_step(r->commit), "commit");
        sqlite3_reset(r->commit);
        t->busy += ew_mono_ns() - t0;
        t->n += batch;
        free_rows(rows, batch);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void report(const char *backend, const tally raw[2], const tally app[2])
{
    const int batches[2] = {1, 100};
    for (int k = 0; k < 2; k++)
        printf("bench: store.%s.raw_insert.batch%d %.0f events/s\n", backend, batches[k],
               rate(&raw[k]));
    for (int k = 0; k < 2; k++)
        printf("bench: store.%s.append.batch%d %.0f events/s ratio=%.2f "
               "baseline=store.%s.raw_insert.batch%d\n",
               backend, batches[k], rate(&app[k]), rate(&app[k]) / rate(&raw[k]), backend,
               batches[k]);
}

static void bench_sqlite(void)
{
    char dir[] = "/tmp/ew-bench-store-XXXXXX", url[128], path[96];
    if (!mkdtemp(dir)) die("mkdtemp", "failed");
    snprintf(path, sizeof path, "%s/eventwire.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", path);
    ew_store *s;
    ew_error err = {0};
    ew_store_options o = {.url = url};
    if (ew_store_open(&s, &o, &err)) die("open", err.msg);
    const int batches[2] = {1, 100};
    tally raw[2] = {{0}}, app[2] = {{0}};
    for (int k = 0; k < 2; k++) {
        sq_raw r;
        sq_raw_open(&r, path);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "append%d", batches[k]);
        for (int round = 0; round < ROUNDS; round++) {
            sq_raw_slice(&r, batches[k], &raw[k]);
            bench_append(s, prefix, batches[k], &app[k]);
        }
        sq_raw_close(&r);
    }
    report("sqlite", raw, app);
    ew_store_close(s);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- PostgreSQL ------------------------------------------------------------------------ */

static PGresult *pg_ok(PGconn *c, PGresult *r, const char *what)
{
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) die(what, PQerrorMessage(c));
    return r;
}

static void arr_str(ew_buf *b, const char *s, size_t n)
{
    ew_buf_putc(b, b->len > 1 ? ',' : '{');
    ew_buf_putc(b, '"');
    size_t start = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '"' || s[i] == '\\') {
            ew_buf_append(b, s + start, i - start);
            ew_buf_putc(b, '\\');
            start = i;
        }
    ew_buf_append(b, s + start, n - start);
    ew_buf_putc(b, '"');
}

typedef struct pg_raw {
    PGconn *c;
    char table[64];
    int64_t pos, versions[STREAMS];
    ew_buf a[7];
} pg_raw;

static void pg_raw_open(pg_raw *r, const char *url, int batch)
{
    memset(r, 0, sizeof *r);
    snprintf(r->table, sizeof r->table, "bench_raw_%d", (int)getpid());
    r->c = PQconnectdb(url);
    if (PQstatus(r->c) != CONNECTION_OK) die("connect", PQerrorMessage(r->c));
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning; DROP TABLE IF EXISTS event_store.%s; "
             "CREATE TABLE event_store.%s (position BIGINT PRIMARY KEY, event_id TEXT NOT NULL "
             "UNIQUE, stream_id TEXT NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL, "
             "event_version INTEGER NOT NULL, data JSON NOT NULL, metadata JSON NOT NULL, "
             "recorded_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ, UNIQUE (stream_id, "
             "version)); CREATE INDEX ON event_store.%s (expires_at) WHERE expires_at IS NOT NULL",
             r->table, r->table, r->table);
    PQclear(pg_ok(r->c, PQexec(r->c, sql), "create"));
    /* One row: a plain INSERT. A batch: one INSERT of the rows unnested from arrays, the fastest
     * plain form (one round trip, as the store's append). Either way one transaction. */
    if (batch == 1)
        snprintf(sql, sizeof sql,
                 "INSERT INTO event_store.%s (position, event_id, stream_id, version, event_type, "
                 "event_version, data, metadata, recorded_at, expires_at) VALUES ($1::bigint, $2, "
                 "$3, $4::bigint, $5, $6::integer, $7::json, $8::json, $9::timestamptz, "
                 "$10::timestamptz)",
                 r->table);
    else
        snprintf(sql, sizeof sql,
                 "INSERT INTO event_store.%s (position, event_id, stream_id, version, event_type, "
                 "event_version, data, metadata, recorded_at, expires_at) SELECT u.p, u.i, $3, "
                 "u.v, u.t, u.tv, u.d::json, u.m::json, $9::timestamptz, $10::timestamptz FROM "
                 "unnest($1::bigint[], $2::text[], $4::bigint[], $5::text[], $6::integer[], "
                 "$7::text[], $8::text[]) AS u(p, i, v, t, tv, d, m)",
                 r->table);
    PQclear(pg_ok(r->c, PQprepare(r->c, "raw", sql, 0, NULL), "prepare"));
    for (int i = 0; i < 7; i++)
        ew_buf_init(&r->a[i]);
}

static void pg_raw_close(pg_raw *r)
{
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE event_store.%s", r->table);
    PQclear(pg_ok(r->c, PQexec(r->c, sql), "drop"));
    for (int i = 0; i < 7; i++)
        ew_buf_release(&r->a[i]);
    PQfinish(r->c);
}

static void pg_raw_slice(pg_raw *r, int batch, tally *t)
{
    row rows[100];
    ew_buf *a = r->a;
    const int64_t busy0 = t->busy;
    const long n0 = t->n;
    for (long j = n0 / batch; !slice_done(t, busy0, n0); j++) {
        for (int i = 0; i < batch; i++)
            make_row(&rows[i]);
        char stream[32], rec[EW_TIME_LEN + 1], exp[EW_TIME_LEN + 1], p[24], v[24], tv[8];
        snprintf(stream, sizeof stream, "raw-%ld", j % STREAMS);
        int64_t t0 = ew_mono_ns();
        int64_t now = ew_now_us();
        ew_time_format(now, rec);
        ew_time_format(now + 90LL * 86400 * 1000000, exp);
        const char *vals[10];
        if (batch == 1) {
            snprintf(p, sizeof p, "%lld", (long long)++r->pos);
            snprintf(v, sizeof v, "%lld", (long long)++r->versions[j % STREAMS]);
            snprintf(tv, sizeof tv, "%d", rows[0].type_version);
            const char *one[10] = {p,  rows[0].id,   stream,       v,   rows[0].type,
                                   tv, rows[0].data, rows[0].meta, rec, exp};
            memcpy(vals, one, sizeof one);
        } else {
            for (int k = 0; k < 7; k++)
                ew_buf_reset(&a[k]);
            for (int i = 0; i < batch; i++) {
                const char *sep = i ? "," : "{";
                ew_buf_printf(&a[0], "%s%lld", sep, (long long)++r->pos);
                arr_str(&a[1], rows[i].id, EW_UUID_LEN);
                ew_buf_printf(&a[2], "%s%lld", sep, (long long)++r->versions[j % STREAMS]);
                arr_str(&a[3], rows[i].type, strlen(rows[i].type));
                ew_buf_printf(&a[4], "%s%d", sep, rows[i].type_version);
                arr_str(&a[5], rows[i].data, rows[i].data_len);
                arr_str(&a[6], rows[i].meta, rows[i].meta_len);
            }
            for (int k = 0; k < 7; k++)
                ew_buf_putc(&a[k], '}');
            const char *many[10] = {a[0].data, a[1].data, stream,    a[2].data, a[3].data,
                                    a[4].data, a[5].data, a[6].data, rec,       exp};
            memcpy(vals, many, sizeof many);
        }
        PQclear(pg_ok(r->c, PQexecPrepared(r->c, "raw", 10, vals, NULL, NULL, 0), "insert"));
        t->busy += ew_mono_ns() - t0;
        t->n += batch;
        free_rows(rows, batch);
    }
}

static void bench_postgres(void)
{
    const char *url = getenv("EW_PG_URL");
    if (!url || !*url) {
        printf("# store.postgres: skipped (EW_PG_URL unset)\n");
        return;
    }
    ew_store *s;
    ew_error err = {0};
    ew_store_options o = {.url = url};
    if (ew_store_open(&s, &o, &err)) die("open", err.msg);
    const int batches[2] = {1, 100};
    tally raw[2] = {{0}}, app[2] = {{0}};
    for (int k = 0; k < 2; k++) {
        pg_raw r;
        pg_raw_open(&r, url, batches[k]);
        char prefix[64];
        snprintf(prefix, sizeof prefix, "bench-%d-%lld-%d", (int)getpid(), (long long)ew_now_us(),
                 batches[k]);
        for (int round = 0; round < ROUNDS; round++) {
            pg_raw_slice(&r, batches[k], &raw[k]);
            bench_append(s, prefix, batches[k], &app[k]);
        }
        pg_raw_close(&r);
    }
    report("postgres", raw, app);
    ew_store_close(s);
}

int main(void)
{
    /* pad the data so that the encoded event is EVENT_BYTES long */
    ew_event *ev = make_event();
    size_t len;
    char *text;
    ew_event_encode(ev, &text, &len, NULL);
    free(text);
    ew_event_unref(ev);
    pad = len < EVENT_BYTES ? EVENT_BYTES - len : 0;
    ev = make_event();
    ew_event_encode(ev, &text, &len, NULL);
    free(text);
    ew_event_unref(ev);
    printf("# store: %zu-byte user.registered events over %d streams; raw = the same rows, "
           "same table layout, prepared, one transaction per batch; %d alternating slices each\n",
           len, STREAMS, ROUNDS);
    bench_sqlite();
    bench_postgres();
    return 0;
}
