/* Test support for the service tests: a folder with the event store (the SQLite bus's log), the
 * service under test as a process (svc_proc.h), HTTP calls to it, the events it published, and
 * events published to it. A test file defines SVC_UNDER_TEST ("auth-service") before including
 * this. Header-only. */
#ifndef EW_TEST_SVC_ENV_H
#define EW_TEST_SVC_ENV_H

#include <dirent.h>
#include <libpq-fe.h>
#include "http/http_client.h"
#include "services/svc_proc.h"
#include "eventwire/bus.h"
#include "eventwire/store.h"
#include "support/pg.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "store/handle.h"
#include "store/store_bus.h"
#include "svc_auth.h"

typedef struct env {
    char dir[256];
    svc_proc p;
    ew_store *events;
    ew_bus *bus;
    ew_evauth *auth;               /* the tests' publisher's key: bus() signs with it */
    char admin[SVC_TOKEN_MAX + 1]; /* admin_token(): "" until made */
} env;

/* The service the running case started, until down(): reap(), as a cmocka teardown, kills it
 * when the case failed before down(), so that no service outlives its test. */
static env *current;

/* rm -rf dir; system()'s status. */
static inline int rm_dir(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

/* Starts the service name in dir (NULL: a fresh folder) with extra; it is `current`. */
static inline env *up_service(const char *name, const char *dir, const char *const *extra)
{
    curl_global_init(CURL_GLOBAL_ALL);
    env *e = calloc(1, sizeof *e);
    if (dir)
        snprintf(e->dir, sizeof e->dir, "%s", dir);
    else
        svc_tmpdir(e->dir);
    current = e;
    if (svc_proc_start(&e->p, name, e->dir, extra)) fail_msg("%s did not start", name);
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s/events.db", e->dir);
    ew_error err = {0};
    if (ew_store_open(&e->events, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    return e;
}

/* A bus on the service's event store, for publishing what the service handles. */
static inline ew_bus *bus(env *e)
{
    if (e->bus) return e->bus;
    ew_config *c;
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s/events.db", e->dir);
    char policy[300];
    snprintf(policy, sizeof policy, "%s/policy.conf", e->dir);
    ew_error err = {0};
    assert_int_equal(ew_config_new(&c, NULL), 0);
    if (ew_config_set(c, "EVENT_BUS_TYPE", "sqlite", &err) ||
        ew_config_set(c, "EVENT_STORE_URL", url, &err) ||
        ew_config_set(c, "EVENT_POLICY_FILE", policy, &err) ||
        ew_config_set(c, "SERVICE_NAME", SVC_TEST_PUBLISHER, &err) ||
        ew_evauth_open(&e->auth, &(ew_evauth_options){.config = c}, &err) ||
        ew_bus_open(&e->bus, &(ew_bus_options){.config = c, .auth = e->auth}, &err))
        fail_msg("%s", err.msg);
    ew_config_free(c);
    return e->bus;
}

static inline env *up(const char *const *extra)
{
    return up_service(SVC_UNDER_TEST, NULL, extra);
}

/* Starts SVC_UNDER_TEST in a fresh folder, with fast retries and a fast relay
 * (EVENT_HANDLER_BACKOFF_MS=20, OUTBOX_POLL_MS=50), with dir_var=FOLDER/dir_sub when dir_var is
 * not NULL ("MAIL_DIR", "mail"), then own and extra ("NAME=value" lists, NULL-terminated, each
 * may be NULL). */
static inline env *up_fast(const char *dir_var, const char *dir_sub, const char *const *own,
                           const char *const *extra)
{
    char dir[256], setting[600];
    svc_tmpdir(dir);
    const char *all[32];
    size_t n = 0;
    if (dir_var) {
        snprintf(setting, sizeof setting, "%s=%s/%s", dir_var, dir, dir_sub);
        all[n++] = setting;
    }
    all[n++] = "EVENT_HANDLER_BACKOFF_MS=20";
    all[n++] = "OUTBOX_POLL_MS=50";
    for (size_t i = 0; own && own[i] && n < 31; i++)
        all[n++] = own[i];
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        all[n++] = extra[i];
    all[n] = NULL;
    return up_service(SVC_UNDER_TEST, dir, all);
}

static inline void down(env *e)
{
    if (current == e) current = NULL;
    ew_bus_close(e->bus);
    e->bus = NULL;
    ew_evauth_close(e->auth);
    e->auth = NULL;
    svc_proc_stop(&e->p);
    ew_store_close(e->events);
    if (rm_dir(e->dir)) fprintf(stderr, "could not remove %s\n", e->dir);
    free(e);
}

static inline int reap(void **state)
{
    env *e = current;
    current = NULL;
    if (!e) return 0;
    if (e->p.pid) {
        kill(e->p.pid, SIGKILL);
        waitpid(e->p.pid, NULL, 0);
        close(e->p.out_fd);
    }
    ew_bus_close(e->bus);
    ew_evauth_close(e->auth);
    ew_store_close(e->events);
    if (rm_dir(e->dir)) fprintf(stderr, "could not remove %s\n", e->dir);
    free(e);
    return 0;
}

/* Starts SVC_UNDER_TEST with extra in dir (NULL: a fresh folder, removed after), where it must
 * not start (svc_proc_start: -1); returns all it wrote on stderr there so far (malloc'ed). */
static inline char *start_fails(const char *dir, const char *const *extra)
{
    char fresh[256];
    if (!dir) {
        svc_tmpdir(fresh);
        dir = fresh;
    }
    svc_proc p;
    assert_int_equal(svc_proc_start(&p, SVC_UNDER_TEST, dir, extra), -1);
    char path[512];
    snprintf(path, sizeof path, "%s/" SVC_UNDER_TEST ".stderr", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *out = calloc(1, 65536);
    size_t got = fread(out, 1, 65535, f);
    out[got] = '\0';
    fclose(f);
    if (dir == fresh) assert_int_equal(rm_dir(fresh), 0);
    return out;
}

/* A fresh PostgreSQL database for the case (support/pg.h: drop it with ew_test_pg_drop), and
 * "SERVICE_DB_URL=<its URL>" in db; skips the case when there is no server. */
static inline char *pg_service_db(char db[600])
{
    char msg[256];
    char *url = ew_test_pg_create(msg, sizeof msg);
    if (!url) {
        fprintf(stderr, "skipped: %s\n", msg);
        skip();
    }
    snprintf(db, 600, "SERVICE_DB_URL=%s", url);
    return url;
}

/* ---- PostgreSQL's files ---------------------------------------------------------------------
 * What an erasure leaves in the files of a service's PostgreSQL database: the tests read them
 * (the server runs on this machine, as the fixture's user or as root's postgres). */

/* The first value the SQL answers on url (malloc'ed), run as a statement of its own. */
static inline char *pg_text(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) fail_msg("%s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    char *v = strdup(st == PGRES_TUPLES_OK && PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    PQfinish(c);
    return v;
}

/* How many files of url's database (its folder under the server's base/) hold needle, after a
 * checkpoint has written every page to them; the first one's name in first. */
static inline int pg_files_holding(const char *url, const char *needle, char *first, size_t n)
{
    int count = ew_test_pg_files_holding(url, needle, strlen(needle), first, n);
    if (count < 0) fail_msg("the server's files cannot be searched");
    return count;
}

/* ---- access tokens ------------------------------------------------------------------------- */

/* api()'s bearer for a request without any Authorization header. */
static const char NO_TOKEN[] = "(no token)";

/* Signs a token as auth-service would, with the key pair in the case's folder (DIR/keys, where
 * the services look beside the event store DIR/events.db; made here when auth-service has not
 * made it): for user sub (NULL: a user id of its own), with the role admin or user, issued at
 * iat, expiring at exp (Unix seconds). */
static inline void mint_in(const char *dir, const char *sub, bool admin, int64_t iat, int64_t exp,
                           char out[SVC_TOKEN_MAX + 1])
{
    char kdir[300];
    snprintf(kdir, sizeof kdir, "%s/keys", dir);
    svc_token_keys k;
    ew_error err = {0};
    if (svc_token_keys_open(&k, kdir, &err)) fail_msg("%s", err.msg);
    char sid[EW_UUID_LEN + 1], own[EW_UUID_LEN + 1];
    ew_uuid7(sid);
    ew_uuid7(own);
    const char *roles[] = {admin ? "admin" : "user"};
    if (svc_token_sign(&k, sub ? sub : own, sid, roles, 1, iat, exp, out, SVC_TOKEN_MAX + 1))
        fail_msg("cannot sign a token");
    sodium_memzero(&k, sizeof k);
}

static inline void mint(env *e, const char *sub, bool admin, char out[SVC_TOKEN_MAX + 1])
{
    int64_t now = ew_now_us() / 1000000;
    mint_in(e->dir, sub, admin, now, now + 3600, out);
}

/* An admin's token for the case: what api() sends when it is given no bearer. */
static inline const char *admin_token(env *e)
{
    if (!e->admin[0]) mint(e, NULL, true, e->admin);
    return e->admin;
}

static inline http_result api_on(const svc_proc *p, const char *method, const char *path,
                                 const char *body, const char *bearer)
{
    char url[2048], auth[SVC_TOKEN_MAX + 40];
    snprintf(url, sizeof url, "%s%s", p->base, path);
    const char *hdrs[] = {auth, "User-Agent: " SVC_UNDER_TEST "-test/1.0", NULL};
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer ? bearer : "");
    http_req rq = {.method = method, .body = body, .headers = bearer ? hdrs : hdrs + 1};
    return http_do(url, &rq);
}

/* A request to the case's service, with bearer (NULL: an admin's, admin_token(); NO_TOKEN: no
 * Authorization header). */
static inline http_result api(env *e, const char *method, const char *path, const char *body,
                              const char *bearer)
{
    if (bearer == NO_TOKEN) return api_on(&e->p, method, path, body, NULL);
    return api_on(&e->p, method, path, body, bearer ? bearer : admin_token(e));
}

/* Status and, when want_field is not NULL, the error's field; the body must hold needle. */
static inline void expect(env *e, const char *method, const char *path, const char *body,
                          long status, const char *want_field, const char *needle)
{
    http_result r = api(e, method, path, body, NULL);
    if (r.status != status) {
        svc_proc_dump(&e->p);
        fail_msg("%s %s %s: want %ld, got %ld: %s", method, path, body ? body : "", status,
                 r.status, r.body);
    }
    if (want_field) {
        const char *f = http_member(&r, "field");
        if (!f || strcmp(f, want_field))
            fail_msg("%s %s %s: want field %s: %s", method, path, body ? body : "", want_field,
                     r.body);
    }
    if (needle) {
        const char *m = http_member(&r, "error");
        if (!m || !strstr(m, needle))
            fail_msg("%s %s %s: want an error with '%s': %s", method, path, body ? body : "",
                     needle, r.body);
    }
    http_result_free(&r);
}

/* ---- events ---------------------------------------------------------------------------------- */

/* Publishes an event (source SVC_TEST_PUBLISHER, signed with its key; id: NULL for a new one)
 * to the service, through bus(). */
static inline void publish(env *e, ew_type_id type, const void *data, const char *subject,
                           const char *id)
{
    ew_event_attrs a = {.source = SVC_TEST_PUBLISHER, .subject = subject, .id = id};
    ew_event *ev;
    ew_error err = {0};
    if (ew_event_new(&ev, type, data, &a, &err) || ew_bus_publish(bus(e), ev, &err))
        fail_msg("publish: %s", err.msg);
    ew_event_unref(ev);
}

/* Waits up to 10 s until the service's subscriber group is past everything published so far. */
static inline void wait_handled(env *e)
{
    int64_t head = 0;
    ew_error err = {0};
    assert_int_equal(ew_store_head(e->events, &head, &err), 0);
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        ew__store_group g;
        if (ew__store_group_get(e->events, SVC_UNDER_TEST, &g, &err) == 0 && g.position >= head)
            return;
        if (ew_mono_ns() > deadline) {
            svc_proc_dump(&e->p);
            fail_msg("the service did not reach position %lld within 10 s", (long long)head);
        }
        usleep(20000);
    }
}

typedef struct find {
    const char *subject;
    ew_event *last;
    int count;
} find;

static inline int on_stored(void *ud, const ew_stored_event *se)
{
    find *f = ud;
    const char *subj = ew_event_subject(se->event);
    if (f->subject && (!subj || strcmp(subj, f->subject))) return 0;
    f->count++;
    ew_event_unref(f->last);
    f->last = ew_event_ref(se->event);
    return 0;
}

/* How many events of type (about subject, when not NULL) the log holds; *last (may be NULL) gets
 * a reference to the newest. */
static inline int count_events(env *e, const char *type, const char *subject, ew_event **last)
{
    find f = {subject, NULL, 0};
    ew_error err = {0};
    if (ew_store_read_all(e->events, 0, type, 0, on_stored, &f, &err)) fail_msg("%s", err.msg);
    /* the log holds personal fields encrypted: read them as a service with the keys does */
    if (f.last && ew__store_unseal(e->events, &f.last, &err)) fail_msg("%s", err.msg);
    if (last)
        *last = f.last;
    else
        ew_event_unref(f.last);
    return f.count;
}

/* Waits up to 10 s for the n-th event of type about subject; returns the newest (caller unrefs). */
static inline ew_event *wait_event(env *e, const char *type, const char *subject, int n)
{
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        ew_event *ev = NULL;
        if (count_events(e, type, subject, &ev) >= n) return ev;
        ew_event_unref(ev);
        if (ew_mono_ns() > deadline) {
            svc_proc_dump(&e->p);
            fail_msg("no %s about %s within 10 s", type, subject ? subject : "anyone");
        }
        usleep(20000);
    }
}

static inline void strlist_is(ew_strlist l, const char *const *want, size_t n)
{
    assert_int_equal(l.count, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(l.items[i], want[i]);
}

/* What the service's database holds: the first column of the first row of sql (with $1 = param
 * when not NULL) as a number, read through a store handle of the test's own on the file. */
static inline int first_value(void *ud, const ew_row *row)
{
    *(long *)ud = row->ncols && row->values[0] ? atol(row->values[0]) : -1;
    return 1;
}

static inline long db_count(env *e, const char *sql, const char *param)
{
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s/" SVC_UNDER_TEST ".db", e->dir);
    ew_store *db;
    ew_error err = {0};
    if (ew_store_open(&db, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_txn *t;
    long n = -1;
    const char *p[] = {param};
    assert_int_equal(ew_store_begin(db, &t, &err), 0);
    if (ew_txn_query(t, sql, param ? p : NULL, param ? 1 : 0, first_value, &n, &err))
        fail_msg("%s: %s", sql, err.msg);
    ew_txn_rollback(t);
    ew_store_close(db);
    return n;
}

#endif
