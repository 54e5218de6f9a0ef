/* Tests of the event store: one conformance suite run against both backends. Each behaviour is a
 * function of an open store, registered twice (test_sqlite_x, test_postgres_x). SQLite cases
 * get a temporary folder, PostgreSQL cases a database of their own on the fixture server.
 * ew-fixture: postgres */
#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "support/pg.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/store.h"
#include "store/handle.h"
#include "store/migrations.h"

#include "store/store_env.h"

/* ---- events ---------------------------------------------------------------------------------- */

static const char *roles[] = {"user", "admin"};

static ew_event *ev_registered(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_registered d = {.user_id = id,
                            .email = "ada.lovelace@example.com",
                            .username = "ada \"the first\" \xc3\xa9",
                            .roles = {roles, 2}};
    ew_event_attrs a = {.source = "auth-service", .subject = id};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("event: %s", err.msg);
    return ev;
}

/* ew_uuid7 keeps its generator state per thread, and a forked child inherits it: two children
 * make the same ids. Events built in forked children take an id with the pid mixed in. */
static ew_event *ev_registered_in_child(int n)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(id + 24, 13, "%06x%06x", (unsigned)getpid() & 0xffffff, (unsigned)n & 0xffffff);
    ew_user_registered d = {
        .user_id = id, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event_attrs a = {.source = "auth-service", .subject = id, .id = id};
    ew_event *ev = NULL;
    if (ew_user_registered_new(&ev, &d, &a, NULL)) _exit(4);
    return ev;
}

static ew_event *ev_logged_in(void)
{
    char id[EW_UUID_LEN + 1], cause[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_uuid7(cause);
    ew_user_logged_in d = {.user_id = id, .session_id = "s-1", .ip_address = "10.0.0.1"};
    ew_event_attrs a = {.source = "auth-service",
                        .subject = id,
                        .correlation_id = "corr-42",
                        .causation_id = cause,
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_user_logged_in_new(&ev, &d, &a, &err)) fail_msg("event: %s", err.msg);
    return ev;
}

static ew_event *ev_email_sent(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_notification_email_sent d = {
        .user_id = id, .email = "ada@example.com", .template_name = "welcome", .message_id = "m-1"};
    ew_event_attrs a = {.source = "notification-service", .subject = id};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_notification_email_sent_new(&ev, &d, &a, &err)) fail_msg("event: %s", err.msg);
    return ev;
}

/* user.data_collected with an object of pad bytes of padding and awkward JSON. */
static ew_event *ev_collected(size_t pad)
{
    char id[EW_UUID_LEN + 1], ex[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_uuid7(ex);
    char *obj = malloc(pad + 200);
    int n = snprintf(obj, pad + 200,
                     "{\"n\": [1, 2.5, -3e2, {\"b\": null}], \"q\": \"quote \\\" back \\\\ "
                     "\\u00e9 \xe2\x82\xac\", \"pad\": \"");
    memset(obj + n, 'x', pad);
    strcpy(obj + n + pad, "\"}");
    ew_user_data_collected d = {
        .export_id = ex, .user_id = id, .service = "user-service", .data = obj};
    ew_event_attrs a = {.source = "user-service", .subject = id};
    ew_event *ev = NULL;
    ew_error err = {0};
    int rc = ew_user_data_collected_new(&ev, &d, &a, &err);
    free(obj);
    if (rc) fail_msg("event: %s", err.msg);
    return ev;
}

static void unref_all(ew_event **evs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ew_event_unref(evs[i]);
}

static ew_append_result append(ew_store *s, const char *stream, int64_t expected,
                               ew_event *const *evs, size_t n)
{
    ew_append_result r;
    ew_error err = {0};
    int rc = ew_store_append(s, stream, expected, (const ew_event *const *)evs, n, &r, &err);
    if (rc) fail_msg("append to %s: %s: %s", stream, ew_err_name(rc), err.msg);
    return r;
}

/* ---- reading --------------------------------------------------------------------------------- */

typedef struct got {
    const ew_store *s; /* set by read_all and read_stream: decrypts what it reads */
    size_t n, cap, stop_after;
    ew_event **ev;
    int64_t *pos, *ver, *rec;
    char **stream;
} got;

static int collect(void *ud, const ew_stored_event *se)
{
    got *g = ud;
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 64;
        g->ev = realloc(g->ev, g->cap * sizeof *g->ev);
        g->pos = realloc(g->pos, g->cap * sizeof *g->pos);
        g->ver = realloc(g->ver, g->cap * sizeof *g->ver);
        g->rec = realloc(g->rec, g->cap * sizeof *g->rec);
        g->stream = realloc(g->stream, g->cap * sizeof *g->stream);
    }
    g->ev[g->n] = ew_event_ref(se->event);
    /* the store keeps personal fields encrypted (docs/encryption.md): read them back as a
     * reader with the keys does */
    if (g->s && ew__store_unseal(g->s, &g->ev[g->n], NULL))
        fail_msg("cannot decrypt a stored event");
    g->pos[g->n] = se->position;
    g->ver[g->n] = se->version;
    g->rec[g->n] = se->recorded_us;
    g->stream[g->n] = strdup(se->stream_id);
    g->n++;
    return g->stop_after && g->n >= g->stop_after;
}

static void got_free(got *g)
{
    for (size_t i = 0; i < g->n; i++) {
        ew_event_unref(g->ev[i]);
        free(g->stream[i]);
    }
    free(g->ev);
    free(g->pos);
    free(g->ver);
    free(g->rec);
    free(g->stream);
    memset(g, 0, sizeof *g);
}

static void read_all(ew_store *s, int64_t from, const char *pattern, size_t max, got *g)
{
    ew_error err = {0};
    g->s = s;
    int rc = ew_store_read_all(s, from, pattern, max, collect, g, &err);
    if (rc) fail_msg("read_all: %s: %s", ew_err_name(rc), err.msg);
}

static void read_stream(ew_store *s, const char *stream, int64_t from, size_t max, got *g)
{
    ew_error err = {0};
    g->s = s;
    int rc = ew_store_read_stream(s, stream, from, max, collect, g, &err);
    if (rc) fail_msg("read_stream: %s: %s", ew_err_name(rc), err.msg);
}

/* ---- queries through a transaction --------------------------------------------------------- */

typedef struct rows {
    size_t n, ncols;
    char names[16][32];
    char *v[64][16];
} rows;

static int row_collect(void *ud, const ew_row *r)
{
    rows *q = ud;
    q->ncols = r->ncols;
    for (size_t j = 0; j < r->ncols && j < 16; j++) {
        snprintf(q->names[j], sizeof q->names[j], "%s", r->names[j]);
        if (q->n < 64) q->v[q->n][j] = r->values[j] ? strdup(r->values[j]) : NULL;
    }
    q->n++;
    return 0;
}

static void rows_free(rows *q)
{
    for (size_t i = 0; i < q->n && i < 64; i++)
        for (size_t j = 0; j < q->ncols && j < 16; j++)
            free(q->v[i][j]);
    memset(q, 0, sizeof *q);
}

static void query(ew_store *s, const char *sql, const char *const *params, size_t n, rows *q)
{
    ew_txn *t;
    ew_error err = {0};
    memset(q, 0, sizeof *q);
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    int rc = ew_txn_query(t, sql, params, n, row_collect, q, &err);
    ew_txn_rollback(t);
    if (rc) fail_msg("%s: %s: %s", sql, ew_err_name(rc), err.msg);
}

static int64_t query_int(ew_store *s, const char *sql, const char *const *params, size_t n)
{
    rows q;
    query(s, sql, params, n, &q);
    int64_t v = q.n && q.v[0][0] ? strtoll(q.v[0][0], NULL, 10) : -1;
    rows_free(&q);
    return v;
}

static void exec_sql(ew_store *s, const char *sql, const char *const *params, size_t n,
                     int64_t *changes)
{
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    int rc = ew_txn_exec(t, sql, params, n, changes, &err);
    if (rc) {
        ew_txn_rollback(t);
        fail_msg("%s: %s: %s", sql, ew_err_name(rc), err.msg);
    }
    assert_int_equal(ew_txn_commit(t, &err), 0);
}

/* ---- migrations ------------------------------------------------------------------------------ */

static size_t migration_count(const env *e)
{
    return e->pg ? ew__migrations_postgresql_count : ew__migrations_sqlite_count;
}

static void check_migrations(const env *e, ew_store *s)
{
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.schema_migrations", NULL, 0),
                     (int64_t)migration_count(e));
    rows q;
    query(s, "SELECT number, name, applied_at FROM event_store.schema_migrations ORDER BY number",
          NULL, 0, &q);
    assert_string_equal(q.v[0][0], "1");
    assert_string_equal(q.v[0][1], "001_init");
    assert_non_null(q.v[0][2]);
    rows_free(&q);
}

static void migrations_twice(env *e)
{
    assert_string_equal(ew_store_backend(e->s), e->pg ? "postgresql" : "sqlite");
    check_migrations(e, e->s);
    /* a second handle while the first is open, then again after closing it */
    ew_store *s2 = open_url(e->url, NULL);
    check_migrations(e, s2);
    ew_store_close(s2);
    ew_store_close(e->s);
    e->s = open_url(e->url, NULL);
    check_migrations(e, e->s);
}
BOTH(migrations_twice)

/* Two processes open a database nobody has opened yet, at the same moment. */
static void migrations_concurrent(env *e)
{
    char msg[512], *url;
    if (e->pg) {
        url = ew_test_pg_create(msg, sizeof msg);
        if (!url) fail_msg("%s", msg);
    } else {
        url = malloc(128);
        snprintf(url, 128, "sqlite:%s/fresh/concurrent.db", e->dir);
    }
    ew_store_close(e->s); /* nothing open across fork */
    e->s = NULL;
    int go[2];
    pid_t kids[2];
    assert_int_equal(pipe(go), 0);
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) { /* waits for the starting shot, then opens */
            char c;
            close(go[1]);
            if (read(go[0], &c, 1) != 1) _exit(3);
            ew_store *s = NULL;
            ew_error err = {0};
            ew_store_options o = {.url = url};
            int rc = ew_store_open(&s, &o, &err);
            if (rc) fprintf(stderr, "child %d: %s\n", i, err.msg);
            ew_store_close(s);
            _exit(rc ? 1 : 0);
        }
    }
    close(go[0]);
    assert_int_equal(write(go[1], "gg", 2), 2);
    close(go[1]);
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    ew_store *s = open_url(url, NULL);
    check_migrations(e, s);
    ew_store_close(s);
    if (e->pg)
        ew_test_pg_drop(url);
    else
        free(url);
    e->s = open_url(e->url, NULL);
}
BOTH(migrations_concurrent)

/* ---- append and read ------------------------------------------------------------------------- */

static void append_and_read_stream(env *e)
{
    ew_store *s = e->s;
    char stream[64];
    snprintf(stream, sizeof stream, "user-%d", e->pg);
    ew_event *evs[4] = {ev_registered(), ev_collected(100), ev_logged_in(), ev_email_sent()};
    int64_t before = ew_now_us();

    ew_append_result r = append(s, stream, EW_EXPECT_NO_STREAM, evs, 1);
    assert_int_equal(r.version, 1);
    assert_int_equal(r.first_position, 1);
    assert_int_equal(r.last_position, 1);
    assert_int_equal(r.appended, 1);
    assert_int_equal(r.duplicates, 0);
    r = append(s, stream, 1, evs + 1, 3);
    assert_int_equal(r.version, 4);
    assert_int_equal(r.first_position, 2);
    assert_int_equal(r.last_position, 4);
    assert_int_equal(r.appended, 3);

    got g = {0};
    read_stream(s, stream, 1, 0, &g);
    assert_int_equal(g.n, 4);
    for (size_t i = 0; i < 4; i++) {
        /* the event reads back exactly as it went in: envelope, extensions and data */
        if (!ew_event_equal(g.ev[i], evs[i])) fail_msg("event %zu differs after a round trip", i);
        assert_int_equal(g.ver[i], (int64_t)i + 1);
        assert_int_equal(g.pos[i], (int64_t)i + 1);
        assert_string_equal(g.stream[i], stream);
        assert_true(g.rec[i] >= before - 1000000 && g.rec[i] <= ew_now_us() + 1000000);
    }
    got_free(&g);
    read_stream(s, stream, 3, 0, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.ver[0], 3);
    assert_true(ew_event_equal(g.ev[1], evs[3]));
    got_free(&g);
    read_stream(s, stream, 2, 1, &g); /* max */
    assert_int_equal(g.n, 1);
    assert_int_equal(g.ver[0], 2);
    got_free(&g);
    g.stop_after = 2; /* the callback stops the read */
    read_stream(s, stream, 1, 0, &g);
    assert_int_equal(g.n, 2);
    got_free(&g);
    read_stream(s, "no-such-stream", 1, 0, &g);
    assert_int_equal(g.n, 0);

    int64_t v = -1, head = -1;
    ew_error err = {0};
    assert_int_equal(ew_store_stream_version(s, stream, &v, &err), 0);
    assert_int_equal(v, 4);
    assert_int_equal(ew_store_stream_version(s, "no-such-stream", &v, &err), 0);
    assert_int_equal(v, 0);
    assert_int_equal(ew_store_head(s, &head, &err), 0);
    assert_int_equal(head, 4);

    /* the columns the design names, visible to SQL */
    rows q;
    query(s,
          "SELECT event_type, event_version, stream_id, version, expires_at FROM "
          "event_store.events WHERE position = 1",
          NULL, 0, &q);
    assert_string_equal(q.v[0][0], "user.registered");
    assert_string_equal(q.v[0][1], "2");
    assert_string_equal(q.v[0][2], stream);
    assert_string_equal(q.v[0][3], "1");
    assert_non_null(q.v[0][4]); /* default TTL 90 days */
    rows_free(&q);
    unref_all(evs, 4);
}
BOTH(append_and_read_stream)

static void expect_conflict(ew_store *s, const char *stream, int64_t expected, const char *msg)
{
    ew_event *ev = ev_registered();
    ew_error err = {0};
    ew_append_result r = {0};
    int64_t head0, head1;
    assert_int_equal(ew_store_head(s, &head0, NULL), 0);
    int rc = ew_store_append(s, stream, expected, (const ew_event *const *)&ev, 1, &r, &err);
    assert_int_equal(rc, EW_ECONFLICT);
    assert_string_equal(err.msg, msg);
    assert_int_equal(ew_store_head(s, &head1, NULL), 0);
    assert_int_equal(head0, head1); /* nothing written */
    ew_event_unref(ev);
}

static void expected_versions(env *e)
{
    ew_store *s = e->s;
    ew_event *evs[3] = {ev_registered(), ev_registered(), ev_registered()};
    assert_int_equal(append(s, "a", EW_EXPECT_ANY, evs, 1).version, 1);
    expect_conflict(s, "a", EW_EXPECT_NO_STREAM, "stream a is at version 1, expected 0");
    expect_conflict(s, "a", 5, "stream a is at version 1, expected 5");
    expect_conflict(s, "b", 3, "stream b is at version 0, expected 3");
    assert_int_equal(append(s, "a", 1, evs + 1, 1).version, 2);
    expect_conflict(s, "a", 1, "stream a is at version 2, expected 1");
    assert_int_equal(append(s, "a", EW_EXPECT_ANY, evs + 2, 1).version, 3);
    int64_t v;
    assert_int_equal(ew_store_stream_version(s, "b", &v, NULL), 0);
    assert_int_equal(v, 0);
    ew_error err = {0};
    assert_int_equal(ew_store_append(s, "a", -2, (const ew_event *const *)evs, 1, NULL, &err),
                     EW_EINVAL);
    assert_int_equal(ew_store_append(s, "", -1, (const ew_event *const *)evs, 1, NULL, &err),
                     EW_EINVAL);
    unref_all(evs, 3);
}
BOTH(expected_versions)

static void duplicate_append(env *e)
{
    ew_store *s = e->s;
    ew_event *e1 = ev_registered(), *e2 = ev_registered(), *e3 = ev_registered();
    ew_append_result r = append(s, "dup", EW_EXPECT_NO_STREAM, &e1, 1);
    assert_int_equal(r.appended, 1);
    /* the same event again: a no-op, whatever the expected version says */
    r = append(s, "dup", EW_EXPECT_NO_STREAM, &e1, 1);
    assert_int_equal(r.appended, 0);
    assert_int_equal(r.duplicates, 1);
    assert_int_equal(r.version, 1);
    assert_int_equal(r.first_position, 0);
    /* one old, one new: the new one is checked and written */
    ew_event *pair[2] = {e1, e2};
    r = append(s, "dup", 1, pair, 2);
    assert_int_equal(r.appended, 1);
    assert_int_equal(r.duplicates, 1);
    assert_int_equal(r.version, 2);
    assert_int_equal(r.first_position, 2);
    /* the same id twice in one batch */
    ew_event *twice[2] = {e3, e3};
    r = append(s, "dup", 2, twice, 2);
    assert_int_equal(r.appended, 1);
    assert_int_equal(r.duplicates, 1);
    assert_int_equal(r.version, 3);
    /* an id stored in another stream is a duplicate too */
    r = append(s, "other", EW_EXPECT_ANY, &e2, 1);
    assert_int_equal(r.duplicates, 1);
    assert_int_equal(r.version, 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.events", NULL, 0), 3);
    got g = {0};
    read_stream(s, "dup", 1, 0, &g);
    assert_int_equal(g.n, 3);
    assert_true(ew_event_equal(g.ev[0], e1) && ew_event_equal(g.ev[1], e2) &&
                ew_event_equal(g.ev[2], e3));
    got_free(&g);
    ew_event_unref(e1);
    ew_event_unref(e2);
    ew_event_unref(e3);
}
BOTH(duplicate_append)

/* 600 events of four types over many streams: filters, positions and paging (256 per page). */
static void read_all_filters(env *e)
{
    ew_store *s = e->s;
    for (int i = 0; i < 150; i++) {
        char st[32];
        ew_event *a[2] = {ev_registered(), ev_collected(10)};
        ew_event *b = ev_logged_in(), *c = ev_email_sent();
        snprintf(st, sizeof st, "user-%d", i % 10);
        append(s, st, EW_EXPECT_ANY, a, 2);
        snprintf(st, sizeof st, "session-%d", i);
        append(s, st, EW_EXPECT_NO_STREAM, &b, 1);
        snprintf(st, sizeof st, "mail-%d", i % 3);
        append(s, st, EW_EXPECT_ANY, &c, 1);
        unref_all(a, 2);
        ew_event_unref(b);
        ew_event_unref(c);
    }
    got g = {0};
    read_all(s, 0, NULL, 0, &g);
    assert_int_equal(g.n, 600);
    for (size_t i = 0; i < g.n; i++)
        assert_int_equal(g.pos[i], (int64_t)i + 1);
    assert_string_equal(ew_event_type(g.ev[599]), "notification.email_sent");
    got_free(&g);

    read_all(s, 0, "user.*", 0, &g);
    assert_int_equal(g.n, 450);
    for (size_t i = 0; i < g.n; i++) {
        assert_true(strncmp(ew_event_type(g.ev[i]), "user.", 5) == 0);
        if (i) assert_true(g.pos[i] > g.pos[i - 1]);
    }
    got_free(&g);
    read_all(s, 0, "notification.#", 0, &g);
    assert_int_equal(g.n, 150);
    got_free(&g);
    read_all(s, 0, "user.logged_in", 0, &g); /* an exact type goes to the database */
    assert_int_equal(g.n, 150);
    for (size_t i = 0; i < g.n; i++)
        assert_int_equal(g.pos[i], 4 * (int64_t)i + 3);
    got_free(&g);
    read_all(s, 0, "*", 0, &g);
    assert_int_equal(g.n, 600);
    got_free(&g);

    /* from a position (exclusive), a pattern and a max */
    read_all(s, 100, "user.*", 10, &g);
    const int64_t want[10] = {101, 102, 103, 105, 106, 107, 109, 110, 111, 113};
    assert_int_equal(g.n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(g.pos[i], want[i]);
    got_free(&g);
    read_all(s, 0, NULL, 300, &g); /* over a page boundary */
    assert_int_equal(g.n, 300);
    assert_int_equal(g.pos[299], 300);
    got_free(&g);
    read_all(s, 597, NULL, 0, &g);
    assert_int_equal(g.n, 3);
    got_free(&g);
    read_all(s, 600, NULL, 0, &g);
    assert_int_equal(g.n, 0);
    g.stop_after = 5;
    read_all(s, 0, "user.#", 0, &g);
    assert_int_equal(g.n, 5);
    got_free(&g);
    ew_error err = {0};
    assert_int_equal(ew_store_read_all(s, 0, "user.**", 0, collect, &g, &err), EW_EINVAL);
    int64_t head;
    assert_int_equal(ew_store_head(s, &head, NULL), 0);
    assert_int_equal(head, 600);
}
BOTH(read_all_filters)

/* ---- concurrency ----------------------------------------------------------------------------- */

typedef struct writer {
    const char *url;
    int id, n, bad;
    char msg[300];
} writer;

static void *writer_main(void *p)
{
    writer *w = p;
    ew_store *s = NULL;
    ew_error err = {0};
    ew_store_options o = {.url = w->url};
    if (ew_store_open(&s, &o, &err)) {
        snprintf(w->msg, sizeof w->msg, "open: %s", err.msg);
        w->bad++;
        return NULL;
    }
    int64_t last = 0;
    for (int i = 0; i < w->n;) {
        ew_event *evs[4];
        int k = 1 + i % 4;
        if (k > w->n - i) k = w->n - i;
        for (int j = 0; j < k; j++)
            evs[j] = ev_registered();
        char st[32];
        snprintf(st, sizeof st, "w%d-%d", w->id, i % 5);
        ew_append_result r;
        int rc = ew_store_append(s, st, EW_EXPECT_ANY, (const ew_event *const *)evs, (size_t)k, &r,
                                 &err);
        for (int j = 0; j < k; j++)
            ew_event_unref(evs[j]);
        if (rc) {
            snprintf(w->msg, sizeof w->msg, "append: %s", err.msg);
            w->bad++;
            break;
        }
        /* a writer's own positions grow, contiguous within an append */
        if (r.first_position <= last || r.last_position - r.first_position != k - 1) w->bad++;
        last = r.last_position;
        i += k;
    }
    ew_store_close(s);
    return NULL;
}

typedef struct reader {
    const char *url;
    int64_t total, last;
    int gaps, bad;
} reader;

static int reader_fn(void *ud, const ew_stored_event *se)
{
    reader *r = ud;
    if (se->position != r->last + 1) r->gaps++;
    r->last = se->position;
    return 0;
}

/* Catches up by position while the writers commit: it must never see a gap, since a position
 * skipped now would never be read. */
static void *reader_main(void *p)
{
    reader *r = p;
    ew_store *s = NULL;
    ew_store_options o = {.url = r->url};
    if (ew_store_open(&s, &o, NULL)) {
        r->bad++;
        return NULL;
    }
    int64_t deadline = ew_mono_ns() + 120 * 1000000000LL;
    while (r->last < r->total && ew_mono_ns() < deadline)
        if (ew_store_read_all(s, r->last, NULL, 0, reader_fn, r, NULL)) r->bad++;
    ew_store_close(s);
    return NULL;
}

static void positions_two_writers(env *e)
{
    writer w[2] = {{e->url, 0, 150, 0, ""}, {e->url, 1, 150, 0, ""}};
    reader r = {e->url, 300, 0, 0, 0};
    pthread_t tw[2], tr;
    assert_int_equal(pthread_create(&tr, NULL, reader_main, &r), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&tw[i], NULL, writer_main, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(tw[i], NULL);
    pthread_join(tr, NULL);
    for (int i = 0; i < 2; i++)
        if (w[i].bad) fail_msg("writer %d: %d problems: %s", i, w[i].bad, w[i].msg);
    assert_int_equal(r.bad, 0);
    assert_int_equal(r.gaps, 0);
    assert_int_equal(r.last, 300);
    got g = {0};
    read_all(e->s, 0, NULL, 0, &g);
    assert_int_equal(g.n, 300);
    for (size_t i = 0; i < g.n; i++)
        assert_int_equal(g.pos[i], (int64_t)i + 1);
    got_free(&g);
}
BOTH(positions_two_writers)

#define ROUNDS 15

typedef struct racer {
    const char *url;
    pthread_barrier_t *b;
    int wins, conflicts, other;
    char msg[256];
} racer;

static void *racer_main(void *p)
{
    racer *r = p;
    ew_store *s = NULL;
    ew_store_options o = {.url = r->url};
    ew_error err = {0};
    int open_rc = ew_store_open(&s, &o, &err);
    for (int i = 0; i < ROUNDS; i++) {
        int64_t v = 0;
        if (!open_rc) ew_store_stream_version(s, "race", &v, NULL);
        ew_event *ev = ev_registered();
        pthread_barrier_wait(r->b); /* both have read the same version */
        int rc = open_rc
                     ? open_rc
                     : ew_store_append(s, "race", v, (const ew_event *const *)&ev, 1, NULL, &err);
        char want[64];
        snprintf(want, sizeof want, "stream race is at version %lld, expected %lld",
                 (long long)v + 1, (long long)v);
        if (rc == 0)
            r->wins++;
        else if (rc == EW_ECONFLICT && strcmp(err.msg, want) == 0)
            r->conflicts++;
        else {
            snprintf(r->msg, sizeof r->msg, "%s", err.msg);
            r->other++;
        }
        ew_event_unref(ev);
        pthread_barrier_wait(r->b); /* both are done with the round */
    }
    ew_store_close(s);
    return NULL;
}

static void check_race_stream(ew_store *s, int n)
{
    got g = {0};
    read_stream(s, "race", 1, 0, &g);
    assert_int_equal(g.n, n);
    for (size_t i = 0; i < g.n; i++)
        assert_int_equal(g.ver[i], (int64_t)i + 1);
    got_free(&g);
}

static void conflicts_two_threads(env *e)
{
    pthread_barrier_t b;
    pthread_barrier_init(&b, NULL, 2);
    racer r[2] = {{e->url, &b, 0, 0, 0, ""}, {e->url, &b, 0, 0, 0, ""}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, racer_main, &r[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&b);
    if (r[0].other || r[1].other) fail_msg("unexpected errors: %s %s", r[0].msg, r[1].msg);
    /* each round one wins and one loses with EW_ECONFLICT */
    assert_int_equal(r[0].wins + r[1].wins, ROUNDS);
    assert_int_equal(r[0].conflicts + r[1].conflicts, ROUNDS);
    check_race_stream(e->s, ROUNDS);
}
BOTH(conflicts_two_threads)

/* The same race between two processes, in lock step through pipes. */
static void race_child(const char *url, int rfd, int wfd)
{
    ew_store *s = NULL;
    ew_store_options o = {.url = url};
    ew_error err = {0};
    if (ew_store_open(&s, &o, &err)) _exit(2);
    for (int i = 0; i < ROUNDS; i++) {
        int64_t v = 0;
        char c;
        ew_store_stream_version(s, "race", &v, NULL);
        ew_event *ev = ev_registered_in_child(i);
        if (write(wfd, "r", 1) != 1 || read(rfd, &c, 1) != 1) _exit(3);
        int rc = ew_store_append(s, "race", v, (const ew_event *const *)&ev, 1, NULL, &err);
        ew_event_unref(ev);
        c = rc == 0 ? 'w' : rc == EW_ECONFLICT && strstr(err.msg, "is at version") ? 'c' : 'e';
        if (write(wfd, &c, 1) != 1) _exit(3);
    }
    ew_store_close(s);
    _exit(0);
}

static void conflicts_two_processes(env *e)
{
    ew_store_close(e->s);
    e->s = NULL;
    int up[2][2], down[2][2];
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pipe(up[i]), 0);
        assert_int_equal(pipe(down[i]), 0);
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) race_child(e->url, down[i][0], up[i][1]);
        close(up[i][1]);
        close(down[i][0]);
    }
    int wins = 0, conflicts = 0, other = 0;
    for (int round = 0; round < ROUNDS; round++) {
        char c;
        for (int i = 0; i < 2; i++)
            assert_int_equal(read(up[i][0], &c, 1), 1);
        for (int i = 0; i < 2; i++)
            assert_int_equal(write(down[i][1], "g", 1), 1);
        for (int i = 0; i < 2; i++) {
            assert_int_equal(read(up[i][0], &c, 1), 1);
            wins += c == 'w';
            conflicts += c == 'c';
            other += c == 'e';
        }
    }
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        close(up[i][0]);
        close(down[i][1]);
    }
    assert_int_equal(other, 0);
    assert_int_equal(wins, ROUNDS);
    assert_int_equal(conflicts, ROUNDS);
    e->s = open_url(e->url, NULL);
    check_race_stream(e->s, ROUNDS);
}
BOTH(conflicts_two_processes)

/* ---- TTL purge ------------------------------------------------------------------------------- */

typedef struct appender {
    const char *url;
    const ew_config *cfg;
    int n, bad;
    char msg[256];
} appender;

static void *appender_main(void *p)
{
    appender *a = p;
    ew_store *s = NULL;
    ew_error err = {0};
    ew_store_options o = {.config = a->cfg, .url = a->url};
    if (ew_store_open(&s, &o, &err)) {
        a->bad++;
        return NULL;
    }
    for (int i = 0; i < 100; i++) {
        ew_event *ev = ev_registered();
        if (ew_store_append(s, "during-purge", EW_EXPECT_ANY, (const ew_event *const *)&ev, 1, NULL,
                            &err)) {
            snprintf(a->msg, sizeof a->msg, "%s", err.msg);
            a->bad++;
        } else {
            a->n++;
        }
        ew_event_unref(ev);
    }
    ew_store_close(s);
    return NULL;
}

static void ttl_purge(env *e)
{
    ew_config *cfg, *forever;
    assert_int_equal(ew_config_new(&cfg, NULL), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_TTL_DAYS", "1", NULL), 0);
    assert_int_equal(ew_config_new(&forever, NULL), 0);
    assert_int_equal(ew_config_set(forever, "EVENT_STORE_TTL_DAYS", "0", NULL), 0);
    ew_store *s = open_url(e->url, cfg);
    for (int i = 0; i < 6; i++) {
        ew_event *evs[10];
        for (int j = 0; j < 10; j++)
            evs[j] = ev_registered();
        char st[16];
        snprintf(st, sizeof st, "ttl-%d", i);
        append(s, st, EW_EXPECT_ANY, evs, 10);
        unref_all(evs, 10);
    }
    /* expiry is one day away: backdate the first 40 */
    const char *old[2] = {"2001-02-03T04:05:06.000000Z", "40"};
    int64_t changed = 0;
    exec_sql(s, "UPDATE event_store.events SET expires_at = $1 WHERE position <= $2", old, 2,
             &changed);
    assert_int_equal(changed, 40);

    /* TTL 0: the purge deletes nothing */
    ew_store *keep = open_url(e->url, forever);
    size_t purged = 99;
    ew_error err = {0};
    assert_int_equal(ew_store_purge(keep, 5, &purged, &err), 0);
    assert_int_equal(purged, 0);
    ew_event *ev = ev_registered();
    ew_append_result r = append(keep, "kept", EW_EXPECT_ANY, &ev, 1);
    ew_event_unref(ev);
    assert_int_equal(
        query_int(s, "SELECT count(*) FROM event_store.events WHERE expires_at IS NULL", NULL, 0),
        1);
    ew_store_close(keep);

    /* in batches of 7, while another handle appends */
    appender a = {e->url, cfg, 0, 0, ""};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, appender_main, &a), 0);
    assert_int_equal(ew_store_purge(s, 7, &purged, &err), 0);
    pthread_join(t, NULL);
    if (a.bad) fail_msg("append during purge: %s", a.msg);
    assert_int_equal(a.n, 100);
    assert_int_equal(purged, 40);
    got g = {0};
    read_all(s, 0, NULL, 0, &g);
    assert_int_equal(g.n, 20 + 1 + 100);
    assert_int_equal(g.pos[0], 41);
    assert_int_equal(g.pos[g.n - 1], 161);
    got_free(&g);

    /* everything gone: positions still follow the last one handed out */
    const char *all[2] = {"2001-02-03T04:05:06.000000Z", "1000000"};
    exec_sql(s, "UPDATE event_store.events SET expires_at = $1 WHERE position <= $2", all, 2,
             &changed);
    assert_int_equal(changed, 121); /* the TTL 0 event gets an expiry too */
    assert_int_equal(ew_store_purge(s, 50, &purged, &err), 0);
    assert_int_equal(purged, 121);
    int64_t head;
    assert_int_equal(ew_store_head(s, &head, NULL), 0);
    assert_int_equal(head, 161);
    ev = ev_registered();
    r = append(s, "after", EW_EXPECT_NO_STREAM, &ev, 1);
    assert_int_equal(r.first_position, 162);
    ew_event_unref(ev);
    /* a stream keeps its version when its events are purged, and goes on from it */
    int64_t v;
    assert_int_equal(ew_store_stream_version(s, "ttl-0", &v, NULL), 0);
    assert_int_equal(v, 10);
    ev = ev_registered();
    expect_conflict(s, "ttl-0", EW_EXPECT_NO_STREAM, "stream ttl-0 is at version 10, expected 0");
    r = append(s, "ttl-0", 10, &ev, 1);
    assert_int_equal(r.version, 11);
    assert_int_equal(r.first_position, 163);
    ew_event_unref(ev);
    ew_store_close(s);
    ew_config_free(cfg);
    ew_config_free(forever);
}
BOTH(ttl_purge)

/* ---- dead letters ------------------------------------------------------------------------- */

typedef struct dlqs {
    size_t n;
    ew_dlq_row rows[16];
} dlqs;

static int dlq_collect(void *ud, const ew_dlq_row *r)
{
    dlqs *l = ud;
    if (l->n < 16) {
        ew_dlq_row *c = &l->rows[l->n];
        *c = *r;
        c->event_id = r->event_id ? strdup(r->event_id) : NULL;
        c->event_name = r->event_name ? strdup(r->event_name) : NULL;
        c->handler = strdup(r->handler);
        c->subscriber_group = strdup(r->subscriber_group);
        c->event = strdup(r->event);
        c->error = strdup(r->error);
    }
    l->n++;
    return 0;
}

static void dlq_list(ew_store *s, const ew_dlq_filter *f, dlqs *l)
{
    ew_error err = {0};
    memset(l, 0, sizeof *l);
    int rc = ew_store_dlq_list(s, f, dlq_collect, l, &err);
    if (rc) fail_msg("dlq list: %s", err.msg);
}

static void dlqs_free(dlqs *l)
{
    for (size_t i = 0; i < l->n && i < 16; i++)
        ew_dlq_row_release(&l->rows[i]);
    l->n = 0;
}

static void put(ew_store *s, const ew_dead_letter *dl)
{
    ew_dlq_sink k = ew_store_dlq_sink(s);
    ew_error err = {0};
    int rc = k.ops->put(k.self, dl, &err);
    if (rc) fail_msg("dlq put: %s", err.msg);
}

static void dead_letters(env *e)
{
    ew_store *s = e->s;
    ew_error err = {0};
    const int64_t t0 = 1700000000000000LL; /* 2023-11-14T22:13:20Z */
    ew_event *ev = ev_registered();
    ew_dead_letter dl = {.event = ev,
                         .group = "user-service",
                         .handler = "create_profile",
                         .error = "boom",
                         .attempts = 3,
                         .first_failed_us = t0,
                         .last_failed_us = t0 + 1000};
    put(s, &dl);
    dlqs l;
    dlq_list(s, NULL, &l);
    assert_int_equal(l.n, 1);
    ew_dlq_row *r = &l.rows[0];
    assert_string_equal(r->event_id, ew_event_id(ev));
    assert_string_equal(r->event_name, "user.registered");
    assert_string_equal(r->handler, "create_profile");
    assert_string_equal(r->subscriber_group, "user-service");
    assert_string_equal(r->error, "boom");
    assert_int_equal(r->attempts, 3);
    assert_int_equal(r->first_failed_us, t0);
    assert_int_equal(r->last_failed_us, t0 + 1000);
    assert_int_equal(r->status, EW_DLQ_PENDING);
    ew_event *back;
    assert_int_equal(ew_event_decode(&back, r->event, strlen(r->event), NULL, &err), 0);
    assert_true(ew_event_encrypted(back)); /* as the store keeps it */
    assert_int_equal(ew__store_unseal(s, &back, &err), 0);
    assert_true(ew_event_equal(back, ev));
    ew_event_unref(back);
    const int64_t id = r->id;
    dlqs_free(&l);

    /* retried, then failed again: one row, attempts added up, pending again */
    assert_int_equal(ew_store_dlq_set_status(s, id, EW_DLQ_RETRIED, &err), 0);
    ew_dlq_row one;
    assert_int_equal(ew_store_dlq_get(s, id, &one, &err), 0);
    assert_int_equal(one.status, EW_DLQ_RETRIED);
    ew_dlq_row_release(&one);
    dl.attempts = 2;
    dl.error = "boom again";
    dl.first_failed_us = t0 + 4000;
    dl.last_failed_us = t0 + 5000;
    put(s, &dl);
    assert_int_equal(ew_store_dlq_get(s, id, &one, &err), 0);
    assert_int_equal(one.attempts, 5);
    assert_string_equal(one.error, "boom again");
    assert_int_equal(one.first_failed_us, t0);
    assert_int_equal(one.last_failed_us, t0 + 5000);
    assert_int_equal(one.status, EW_DLQ_PENDING);
    ew_dlq_row_release(&one);

    /* the sink hears that a retried one was handled: only a retried row becomes resolved */
    ew_dlq_sink sink = ew_store_dlq_sink(s);
    assert_true(sink.ops->version >= 2 && sink.ops->resolved);
    assert_int_equal(sink.ops->resolved(sink.self, id, &err), 0);
    assert_int_equal(ew_store_dlq_get(s, id, &one, &err), 0);
    assert_int_equal(one.status, EW_DLQ_PENDING); /* it failed again meanwhile: stays pending */
    ew_dlq_row_release(&one);
    assert_int_equal(ew_store_dlq_set_status(s, id, EW_DLQ_RETRIED, &err), 0);
    assert_int_equal(sink.ops->resolved(sink.self, id, &err), 0);
    assert_int_equal(ew_store_dlq_get(s, id, &one, &err), 0);
    assert_int_equal(one.status, EW_DLQ_RESOLVED);
    ew_dlq_row_release(&one);
    assert_int_equal(ew_store_dlq_set_status(s, id, EW_DLQ_PENDING, &err), 0);
    assert_int_equal(ew_store_dlq_get(s, id + 1000, &one, &err), EW_ENOTFOUND);
    assert_int_equal(ew_store_dlq_set_status(s, id + 1000, EW_DLQ_RESOLVED, &err), EW_ENOTFOUND);
    assert_int_equal(ew_store_dlq_set_status(s, id, (ew_dlq_status)7, &err), EW_EINVAL);

    /* more: three user.registered failing at other times, another type, another group */
    ew_event *more[3] = {ev_registered(), ev_registered(), ev_registered()};
    const int64_t last[3] = {t0 + 10000, t0 + 30000, t0 + 20000};
    for (int i = 0; i < 3; i++) {
        ew_dead_letter d = {.event = more[i],
                            .group = "analytics-service",
                            .handler = "count",
                            .error = "no",
                            .attempts = 1,
                            .last_failed_us = last[i]};
        put(s, &d);
    }
    ew_event *other = ev_logged_in();
    ew_dead_letter d2 = {.event = other,
                         .group = "analytics-service",
                         .handler = "count",
                         .error = "no",
                         .attempts = 1,
                         .last_failed_us = t0 + 40000};
    put(s, &d2);
    /* an undecodable message: raw bytes, no id */
    static const char raw[] = "{\"id\": \"x\", \xff\xfe garbage";
    ew_dead_letter d3 = {.payload = raw,
                         .payload_len = sizeof raw - 1,
                         .group = "g",
                         .handler = "h",
                         .error = "malformed JSON",
                         .attempts = 1,
                         .last_failed_us = t0 + 50000};
    put(s, &d3);

    dlq_list(s, NULL, &l); /* newest failure first */
    assert_int_equal(l.n, 6);
    assert_string_equal(l.rows[0].error, "malformed JSON");
    assert_null(l.rows[0].event_id);
    assert_null(l.rows[0].event_name);
    assert_non_null(strstr(l.rows[0].event, "\\xFF\\xFE garbage"));
    assert_string_equal(l.rows[1].event_name, "user.logged_in");
    assert_string_equal(l.rows[2].event_id, ew_event_id(more[1]));
    dlqs_free(&l);
    ew_dlq_filter f = {"user.registered", NULL, NULL, -1, 0};
    dlq_list(s, &f, &l);
    assert_int_equal(l.n, 4);
    dlqs_free(&l);
    f = (ew_dlq_filter){NULL, "count", "analytics-service", EW_DLQ_PENDING, 2};
    dlq_list(s, &f, &l);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.rows[0].event_name, "user.logged_in");
    assert_string_equal(l.rows[1].event_id, ew_event_id(more[1]));
    dlqs_free(&l);
    assert_int_equal(ew_store_dlq_set_status(s, id, EW_DLQ_DISCARDED, &err), 0);
    f = (ew_dlq_filter){NULL, NULL, NULL, EW_DLQ_DISCARDED, 0};
    dlq_list(s, &f, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.rows[0].id, id);
    dlqs_free(&l);

    /* the seed's query, verbatim, on either database */
    static const char *const seed[2] = {
        "SELECT * FROM event_store.dead_letter_queue WHERE event_name = 'user.registered' ORDER "
        "BY last_failed_at DESC;",
        "SELECT * FROM event_store.dead_letter_queue\nWHERE event_name = 'user.registered'\n"
        "ORDER BY last_failed_at DESC;"};
    static const char *const columns[13] = {
        "id",     "event_id",   "event_name", "handler",         "subscriber_group",
        "event",  "error",      "attempts",   "first_failed_at", "last_failed_at",
        "status", "updated_at", "transport"};
    for (int k = 0; k < 2; k++) {
        rows q;
        query(s, seed[k], NULL, 0, &q);
        assert_int_equal(q.n, 4);
        assert_int_equal(q.ncols, 13);
        for (int j = 0; j < 13; j++)
            assert_string_equal(q.names[j], columns[j]);
        assert_string_equal(q.v[0][1], ew_event_id(more[1])); /* t0 + 30000 */
        assert_string_equal(q.v[1][1], ew_event_id(more[2])); /* t0 + 20000 */
        assert_string_equal(q.v[2][1], ew_event_id(more[0])); /* t0 + 10000 */
        assert_string_equal(q.v[3][1], ew_event_id(ev));      /* t0 + 5000 */
        for (int i = 0; i < 4; i++)
            assert_string_equal(q.v[i][2], "user.registered");
        assert_string_equal(q.v[3][7], "5");
        assert_string_equal(q.v[3][10], "discarded");
        rows_free(&q);
    }
    unref_all(more, 3);
    ew_event_unref(other);
    ew_event_unref(ev);
}
BOTH(dead_letters)

/* ---- the inbox ------------------------------------------------------------------------------- */

static const char *profiles_ddl = "CREATE TABLE event_store.test_profiles (user_id TEXT PRIMARY "
                                  "KEY, name TEXT NOT NULL)";
static const char *profiles_insert = "INSERT INTO event_store.test_profiles (name, user_id) "
                                     "VALUES ($2, $1)";

static void inbox(env *e)
{
    ew_store *s = e->s;
    ew_inbox ib = ew_store_inbox(s);
    ew_error err = {0};
    exec_sql(s, profiles_ddl, NULL, 0, NULL);
    ew_event *ev = ev_registered(), *ev2 = ev_registered();
    const char *h = "user-service/create_profile";

    /* first delivery: the handler writes in the inbox's transaction, commit records it */
    void *txn = NULL;
    assert_int_equal(ib.ops->begin(ib.self, h, ew_event_id(ev), &txn, &err), 0);
    assert_non_null(txn);
    /* the thread that holds the transaction cannot use the handle around it */
    int64_t head;
    assert_int_equal(ew_store_head(s, &head, &err), EW_ESTATE);
    const char *p[2] = {ew_event_id(ev), "Ada"};
    int64_t changes = 0;
    assert_int_equal(ew_txn_exec(txn, profiles_insert, p, 2, &changes, &err), 0);
    assert_int_equal(changes, 1);
    rows q;
    assert_int_equal(ew_txn_query(txn,
                                  "SELECT name FROM event_store.test_profiles WHERE "
                                  "user_id = $1",
                                  p, 1, row_collect, (memset(&q, 0, sizeof q), &q), &err),
                     0);
    assert_int_equal(q.n, 1);
    assert_string_equal(q.v[0][0], "Ada");
    rows_free(&q);
    assert_int_equal(ib.ops->commit(ib.self, h, ew_event_id(ev), txn, &err), 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.processed_events", NULL, 0), 1);

    /* redelivered: skipped, nothing held */
    txn = NULL;
    assert_int_equal(ib.ops->begin(ib.self, h, ew_event_id(ev), &txn, &err), 1);
    assert_null(txn);
    assert_int_equal(ew_store_head(s, &head, &err), 0);
    /* another handler has not processed it */
    assert_int_equal(ib.ops->begin(ib.self, "other/h", ew_event_id(ev), &txn, &err), 0);
    ib.ops->rollback(ib.self, txn);

    /* a handler that fails: rollback undoes its row, and the event is not recorded */
    const char *p2[2] = {ew_event_id(ev2), "Grace"};
    assert_int_equal(ib.ops->begin(ib.self, h, ew_event_id(ev2), &txn, &err), 0);
    assert_int_equal(ew_txn_exec(txn, profiles_insert, p2, 2, NULL, &err), 0);
    ib.ops->rollback(ib.self, txn);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_profiles", NULL, 0), 1);
    assert_int_equal(ib.ops->begin(ib.self, h, ew_event_id(ev2), &txn, &err), 0);
    /* a statement that fails spoils the transaction: commit refuses and rolls back */
    assert_int_equal(ew_txn_exec(txn, profiles_insert, p2, 2, NULL, &err), 0);
    assert_int_equal(ew_txn_exec(txn, profiles_insert, p, 2, NULL, &err), EW_EIO); /* dup key */
    assert_int_equal(ew_txn_exec(txn, profiles_insert, p2, 2, NULL, &err), EW_ESTATE);
    assert_true(ib.ops->commit(ib.self, h, ew_event_id(ev2), txn, &err) < 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_profiles", NULL, 0), 1);
    assert_int_equal(ib.ops->begin(ib.self, h, ew_event_id(ev2), &txn, &err), 0);
    ib.ops->rollback(ib.self, txn);

    /* records older than the window go */
    size_t purged = 9;
    assert_int_equal(ew_store_inbox_purge(s, 3600, &purged, &err), 0);
    assert_int_equal(purged, 0);
    const char *old[1] = {"2001-01-01T00:00:00.000000Z"};
    exec_sql(s, "UPDATE event_store.processed_events SET processed_at = $1", old, 1, NULL);
    assert_int_equal(ew_store_inbox_purge(s, 3600, &purged, &err), 0);
    assert_int_equal(purged, 1);
    ew_event_unref(ev);
    ew_event_unref(ev2);
}
BOTH(inbox)

/* ---- the outbox ------------------------------------------------------------------------------ */

typedef struct published {
    size_t n, calls;
    char ids[64][EW_UUID_LEN + 1];
    ew_event *evs[64];
    int fail;
} published;

static int publish_fn(void *ud, const ew_event *const *evs, size_t n, ew_error *err)
{
    published *p = ud;
    p->calls++;
    if (p->fail) return ew_error_set(err, EW_EIO, "broker down");
    for (size_t i = 0; i < n && p->n < 64; i++, p->n++) {
        snprintf(p->ids[p->n], sizeof p->ids[p->n], "%s", ew_event_id(evs[i]));
        p->evs[p->n] = ew_event_ref(evs[i]);
    }
    return 0;
}

static void published_free(published *p)
{
    for (size_t i = 0; i < p->n; i++)
        ew_event_unref(p->evs[i]);
    memset(p, 0, sizeof *p);
}

static const char *orders_ddl = "CREATE TABLE event_store.test_orders (id TEXT PRIMARY KEY)";

static size_t relay(ew_store *s, size_t batch, published *p)
{
    size_t sent = 99;
    ew_error err = {0};
    int rc = ew_store_outbox_relay(s, batch, publish_fn, p, &sent, &err);
    if (rc) fail_msg("relay: %s: %s", ew_err_name(rc), err.msg);
    return sent;
}

static void outbox(env *e)
{
    ew_store *s = e->s;
    ew_error err = {0};
    exec_sql(s, orders_ddl, NULL, 0, NULL);
    ew_event *evs[5] = {ev_registered(), ev_collected(50), ev_logged_in(), ev_email_sent(),
                        ev_registered()};
    const char *o1[1] = {"order-1"}, *o2[1] = {"order-2"};
    const char *ins = "INSERT INTO event_store.test_orders (id) VALUES ($1)";

    /* rolled back: neither the row nor the event */
    ew_txn *t;
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_txn_exec(t, ins, o1, 1, NULL, &err), 0);
    assert_int_equal(ew_outbox_add(t, evs[0], &err), 0);
    ew_txn_rollback(t);
    assert_int_equal(ew_txn_exec(t, ins, o1, 1, NULL, &err), EW_ESTATE); /* it is over */
    published p = {0};
    assert_int_equal(relay(s, 10, &p), 0);
    assert_int_equal(p.n, 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_orders", NULL, 0), 0);

    /* committed: both */
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_txn_exec(t, ins, o2, 1, NULL, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ew_outbox_add(t, evs[i], &err), 0);
    assert_int_equal(ew_outbox_add(t, evs[0], &err), 0); /* the same event again: once */
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_orders", NULL, 0), 1);
    assert_int_equal(
        query_int(s, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL, 0), 3);

    /* a publish that fails: nothing is marked */
    p.fail = 1;
    size_t sent = 9;
    assert_int_equal(ew_store_outbox_relay(s, 10, publish_fn, &p, &sent, &err), EW_EIO);
    assert_string_equal(err.msg, "broker down");
    assert_int_equal(sent, 0);
    p.fail = 0;

    /* in order, in batches, then marked */
    assert_int_equal(relay(s, 2, &p), 2);
    assert_int_equal(relay(s, 2, &p), 1);
    assert_int_equal(relay(s, 2, &p), 0);
    assert_int_equal(p.n, 3);
    for (int i = 0; i < 3; i++) { /* the outbox keeps them as the wire will carry them */
        ew_event *plain = ew_event_ref(p.evs[i]);
        assert_int_equal(ew__store_unseal(s, &plain, &err), 0);
        assert_true(ew_event_equal(plain, evs[i]));
        ew_event_unref(plain);
    }
    assert_int_equal(
        query_int(s, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL, 0), 0);
    published_free(&p);

    /* more later: only the new ones */
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_outbox_add(t, evs[3], &err), 0);
    assert_int_equal(ew_outbox_add(t, evs[4], &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_int_equal(relay(s, 0, &p), 2);
    assert_string_equal(p.ids[0], ew_event_id(evs[3]));
    assert_string_equal(p.ids[1], ew_event_id(evs[4]));
    published_free(&p);
    unref_all(evs, 5);
}
BOTH(outbox)

/* A relay process dies between publishing and marking: the next run publishes the batch again. */
static char crash_file[256];

static int publish_then_die(void *ud, const ew_event *const *evs, size_t n, ew_error *err)
{
    (void)ud, (void)err;
    FILE *f = fopen(crash_file, "a");
    for (size_t i = 0; f && i < n; i++)
        fprintf(f, "%s\n", ew_event_id(evs[i]));
    if (f) fclose(f);
    raise(SIGKILL);
    return 0;
}

static void outbox_relay_crash(env *e)
{
    ew_error err = {0};
    ew_event *evs[3] = {ev_registered(), ev_registered(), ev_registered()};
    ew_txn *t;
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ew_outbox_add(t, evs[i], &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    snprintf(crash_file, sizeof crash_file, "/tmp/ew-relay-crash-%d-%d", (int)getpid(), e->pg);
    unlink(crash_file);
    ew_store_close(e->s);
    e->s = NULL;
    pid_t kid = fork();
    assert_true(kid >= 0);
    if (kid == 0) {
        ew_store *s = NULL;
        ew_store_options o = {.url = e->url};
        if (ew_store_open(&s, &o, NULL)) _exit(2);
        ew_store_outbox_relay(s, 10, publish_then_die, NULL, NULL, NULL);
        _exit(3); /* not reached */
    }
    int st;
    assert_int_equal(waitpid(kid, &st, 0), kid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
    FILE *f = fopen(crash_file, "r");
    assert_non_null(f);
    char line[64];
    for (int i = 0; i < 3; i++) {
        assert_non_null(fgets(line, sizeof line, f));
        line[strcspn(line, "\n")] = '\0';
        assert_string_equal(line, ew_event_id(evs[i]));
    }
    assert_null(fgets(line, sizeof line, f));
    fclose(f);
    unlink(crash_file);

    e->s = open_url(e->url, NULL);
    published p = {0};
    /* PostgreSQL releases the dead relay's row locks when it sees the connection close */
    size_t sent = 0;
    for (int i = 0; i < 100 && !(sent = relay(e->s, 10, &p)); i++)
        usleep(50000);
    assert_int_equal(sent, 3); /* again, once more, in order */
    for (int i = 0; i < 3; i++)
        assert_string_equal(p.ids[i], ew_event_id(evs[i]));
    assert_int_equal(relay(e->s, 10, &p), 0);
    assert_int_equal(p.n, 3);
    published_free(&p);
    unref_all(evs, 3);
}
BOTH(outbox_relay_crash)

/* ---- limits and errors ------------------------------------------------------------------- */

static void too_big(env *e)
{
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, NULL), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_MAX_BYTES", "1024", NULL), 0);
    ew_store *s = open_url(e->url, cfg);
    ew_event *small = ev_collected(10), *big = ev_collected(2000);
    ew_event *both[2] = {small, big};
    ew_error err = {0};
    assert_int_equal(
        ew_store_append(s, "big", EW_EXPECT_ANY, (const ew_event *const *)both, 2, NULL, &err),
        EW_ETOOBIG);
    assert_non_null(strstr(err.msg, "more than EVENT_MAX_BYTES (1024)"));
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.events", NULL, 0), 0);
    ew_txn *t;
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_outbox_add(t, big, &err), EW_ETOOBIG);
    assert_int_equal(ew_outbox_add(t, small, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    append(s, "big", EW_EXPECT_ANY, &small, 1);
    /* a store with the default limit reads what was stored */
    got g = {0};
    read_all(e->s, 0, NULL, 0, &g);
    assert_int_equal(g.n, 1);
    got_free(&g);
    ew_event_unref(small);
    ew_event_unref(big);
    ew_store_close(s);
    ew_config_free(cfg);
}
BOTH(too_big)

static void txn_params(env *e)
{
    ew_store *s = e->s;
    ew_error err = {0};
    ew_txn *t;
    int64_t changes = -1;
    exec_sql(s, profiles_ddl, NULL, 0, &changes);
    assert_int_equal(changes, 0);
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    /* $1 appears twice, $2 first: bound by number, not by order of appearance */
    const char *p[2] = {"u-1", "Ada"};
    assert_int_equal(ew_txn_exec(t,
                                 "INSERT INTO event_store.test_profiles (name, user_id) SELECT "
                                 "$2, $1 WHERE CAST($1 AS TEXT) IS NOT NULL",
                                 p, 2, &changes, &err),
                     0);
    assert_int_equal(changes, 1);
    assert_int_equal(
        ew_txn_exec(t, "SELECT * FROM event_store.test_profiles", NULL, 0, &changes, &err), 0);
    assert_int_equal(changes, 0);
    const char *np[2] = {"u-2", NULL};
    assert_int_equal(ew_txn_exec(t, profiles_insert, np, 2, NULL, &err), EW_EIO); /* NOT NULL */
    ew_txn_rollback(t);
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_txn_exec(t, profiles_insert, p, 1, NULL, &err) < 0, 1); /* $2 missing */
    ew_txn_rollback(t);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_profiles", NULL, 0), 0);
    assert_int_equal(ew_txn_commit(t, &err), EW_ESTATE);
    ew_txn_rollback(NULL);
}
BOTH(txn_params)

static void bad_urls(void **state)
{
    (void)state;
    static const char *const bad[] = {"sqlite:", "sqlite://var/x.db", "mysql://localhost/db",
                                      "var/eventwire.db", "postgresql://localhost/db?bogus=1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ew_store *s = (ew_store *)1;
        ew_error err = {0};
        ew_store_options o = {.url = bad[i]};
        int rc = ew_store_open(&s, &o, &err);
        if (rc != EW_ECONFIG) fail_msg("%s: %s (%s)", bad[i], ew_err_name(rc), err.msg);
        assert_null(s);
        assert_true(strlen(err.msg) > 10);
    }
    /* a config whose EVENT_STORE_URL is used when opts->url is NULL */
    ew_config *cfg;
    char dir[] = "/tmp/ew-store-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/a/b/c.db", dir);
    assert_int_equal(ew_config_new(&cfg, NULL), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", url, NULL), 0);
    ew_store *s = NULL;
    ew_store_options o = {.config = cfg};
    assert_int_equal(ew_store_open(&s, &o, NULL), 0);
    ew_store_close(s);
    ew_config_free(cfg);
    ew_test_rmtree(dir);
    /* the file is a folder: an I/O error, not a crash */
    char d2[] = "/tmp/ew-store-XXXXXX";
    assert_non_null(mkdtemp(d2));
    snprintf(url, sizeof url, "sqlite:%s", d2);
    ew_error err = {0};
    o = (ew_store_options){.url = url};
    assert_int_equal(ew_store_open(&s, &o, &err), EW_EIO);
    rmdir(d2);
}

static int free_port(int listening, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (listening) {
        assert_int_equal(listen(fd, 16), 0);
        *fd_out = fd;
    } else {
        close(fd);
    }
    return ntohs(a.sin_port);
}

static void postgres_unreachable(void **state)
{
    (void)state;
    char url[160];
    ew_error err = {0};
    ew_store *s = NULL;
    /* nobody listens: refused at once */
    snprintf(url, sizeof url, "postgresql://postgres@127.0.0.1:%d/postgres", free_port(0, NULL));
    ew_store_options o = {.url = url};
    assert_int_equal(ew_store_open(&s, &o, &err), EW_ECONNECT);
    assert_non_null(strstr(err.msg, "cannot connect"));
    assert_null(s);
    /* a server that accepts and never answers: connect_timeout bounds the wait */
    int fd = -1;
    snprintf(url, sizeof url, "postgresql://postgres@127.0.0.1:%d/postgres?connect_timeout=2",
             free_port(1, &fd));
    int64_t t0 = ew_mono_ns();
    assert_int_equal(ew_store_open(&s, &o, &err), EW_ECONNECT);
    double secs = (double)(ew_mono_ns() - t0) / 1e9;
    close(fd);
    /* libpq counts whole seconds from time(): a timeout of 2 ends after 1 to 2 seconds */
    if (secs < 0.5 || secs > 8) fail_msg("gave up after %.1f s, not after 1 to 2 s", secs);
    assert_true(ew_err_retriable(EW_ECONNECT));
}

/* The server ends the store's sessions: the next call fails with EW_ECONNECT (or succeeds), the
 * one after it works on a new connection. */
static void postgres_reconnects(void **state)
{
    env *e = *state;
    ew_event *ev = ev_registered(), *ev2 = ev_registered();
    append(e->s, "rc", EW_EXPECT_ANY, &ev, 1);
    PGconn *admin = PQconnectdb(e->url);
    assert_int_equal(PQstatus(admin), CONNECTION_OK);
    PGresult *r = PQexec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "application_name = 'eventwire' AND datname = current_database()");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    PQclear(r);
    PQfinish(admin);
    int64_t head = 0;
    ew_error err = {0};
    int rc = ew_store_head(e->s, &head, &err);
    if (rc != 0 && rc != EW_ECONNECT) fail_msg("%s: %s", ew_err_name(rc), err.msg);
    assert_int_equal(ew_store_head(e->s, &head, &err), 0);
    assert_int_equal(head, 1);
    ew_append_result res = append(e->s, "rc", 1, &ev2, 1);
    assert_int_equal(res.version, 2);
    ew_event_unref(ev);
    ew_event_unref(ev2);
}

typedef struct blocked_append {
    ew_store *s;
    volatile int done;
    int rc;
    ew_append_result res;
} blocked_append;

static void *blocked_append_main(void *p)
{
    blocked_append *b = p;
    ew_event *ev = ev_registered();
    b->rc = ew_store_append(b->s, "locked", EW_EXPECT_ANY, (const ew_event *const *)&ev, 1, &b->res,
                            NULL);
    ew_event_unref(ev);
    b->done = 1;
    return NULL;
}

/* Appends take one advisory lock (docs/store.md): while another session holds it, an append
 * waits (the fast path finds it busy and the general one waits), then goes on. */
static void postgres_appends_wait_for_the_lock(void **state)
{
    env *e = *state;
    ew_event *ev = ev_registered();
    append(e->s, "locked", EW_EXPECT_ANY, &ev, 1);
    PGconn *admin = PQconnectdb(e->url);
    assert_int_equal(PQstatus(admin), CONNECTION_OK);
    PGresult *r = PQexec(admin, "SELECT pg_advisory_lock(8231632784560172086)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    blocked_append b = {e->s, 0, -1, {0}};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_append_main, &b), 0);
    usleep(300000);
    assert_int_equal(b.done, 0);
    r = PQexec(admin, "SELECT pg_advisory_unlock(8231632784560172086)");
    PQclear(r);
    pthread_join(t, NULL);
    PQfinish(admin);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.res.version, 2);
    assert_int_equal(b.res.first_position, 2);
    ew_event_unref(ev);
}

/* ew_store_compact: the live rows stay; on PostgreSQL the table is rewritten into a new file
 * (VACUUM FULL), on SQLite there is nothing to do; names that are not table names are refused
 * before anything runs. */
static void compact(env *e)
{
    ew_store *s = e->s;
    ew_error err = {0};
    exec_sql(s, profiles_ddl, NULL, 0, NULL);
    const char *a[2] = {"u-1", "Ada"}, *b[2] = {"u-2", "Grace"};
    exec_sql(s, profiles_insert, a, 2, NULL);
    exec_sql(s, profiles_insert, b, 2, NULL);
    exec_sql(s, "DELETE FROM event_store.test_profiles WHERE user_id = $1", a, 1, NULL);
    const char *file = "SELECT pg_relation_filenode('event_store.test_profiles')";
    int64_t before = e->pg ? query_int(s, file, NULL, 0) : 0;
    const char *tables[] = {"test_profiles"};
    if (ew_store_compact(s, tables, 1, &err)) fail_msg("%s", err.msg);
    assert_int_equal(query_int(s, "SELECT count(*) FROM event_store.test_profiles", NULL, 0), 1);
    if (e->pg) assert_int_not_equal(query_int(s, file, NULL, 0), before);
    const char *bad[] = {"test_profiles; DROP TABLE x"}, *empty[] = {""};
    assert_int_equal(ew_store_compact(s, bad, 1, &err), EW_EINVAL);
    assert_non_null(strstr(err.msg, "is not a table name"));
    assert_int_equal(ew_store_compact(s, empty, 1, &err), EW_EINVAL);
    assert_int_equal(ew_store_compact(s, NULL, 0, &err), 0);
    /* a table that is not there: PostgreSQL says so; SQLite has nothing to do */
    const char *missing[] = {"no_such_table"};
    assert_int_equal(ew_store_compact(s, missing, 1, &err) != 0, e->pg);
}
BOTH(compact)

static const struct CMUnitTest tests[] = {
    CASES(compact),
    CASES(migrations_twice),
    CASES(migrations_concurrent),
    CASES(append_and_read_stream),
    CASES(expected_versions),
    CASES(duplicate_append),
    CASES(read_all_filters),
    CASES(positions_two_writers),
    CASES(conflicts_two_threads),
    CASES(conflicts_two_processes),
    CASES(ttl_purge),
    CASES(dead_letters),
    CASES(inbox),
    CASES(outbox),
    CASES(outbox_relay_crash),
    CASES(too_big),
    CASES(txn_params),
    cmocka_unit_test(bad_urls),
    cmocka_unit_test(postgres_unreachable),
    cmocka_unit_test_setup_teardown(postgres_reconnects, setup_postgres, teardown),
    cmocka_unit_test_setup_teardown(postgres_appends_wait_for_the_lock, setup_postgres, teardown),
};

EW_TEST_MAIN(tests)
