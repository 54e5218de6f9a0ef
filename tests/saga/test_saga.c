/* Tests of the saga engine (include/eventwire/saga.h) and of the sagas of the reference system
 * (sagas.h). The engine runs on the memory bus with its state in SQLite and in PostgreSQL: each
 * behaviour is a function of an environment, registered twice (test_sqlite_x, test_postgres_x).
 * The services of the flows are handlers written here that answer as the services will; a
 * recorder keeps every event the bus carries. One case runs the engine in a process on the
 * SQLite bus, kills it with SIGKILL mid-flow and lets another process finish the sagas.
 * Timeouts are short (hundreds of milliseconds) through the declarations and configuration.
 * ew-fixture: postgres */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "support/case_db.h"
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/saga.h"
#include "eventwire/sagas.h"
#include "eventwire/store.h"

#define WAIT_MS 10000 /* a hang fails the case, well before CTest's limit */

/* ---- the recorder: every event on the bus, in the order it was handled ----------------------- */

typedef struct recorder {
    pthread_mutex_t mu;
    ew_event **evs;
    size_t n, cap;
} recorder;

static ew_handler_result record_event(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ctx;
    recorder *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->evs = realloc(r->evs, r->cap * sizeof *r->evs);
    }
    r->evs[r->n++] = ew_event_ref(ev);
    pthread_mutex_unlock(&r->mu);
    return EW_HANDLER_OK;
}

static void recorder_clear(recorder *r)
{
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++)
        ew_event_unref(r->evs[i]);
    r->n = 0;
    pthread_mutex_unlock(&r->mu);
}

/* The i-th recorded event of type (NULL: the i-th of any), with a reference; NULL when none. */
static ew_event *rec_get(recorder *r, const char *type, size_t i)
{
    ew_event *found = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t j = 0; j < r->n && !found; j++)
        if ((!type || strcmp(ew_event_type(r->evs[j]), type) == 0) && i-- == 0)
            found = ew_event_ref(r->evs[j]);
    pthread_mutex_unlock(&r->mu);
    return found;
}

static size_t rec_count(recorder *r, const char *type)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t j = 0; j < r->n; j++)
        if (strcmp(ew_event_type(r->evs[j]), type) == 0) n++;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Waits until type has been recorded n times; returns the count. */
static size_t rec_wait(recorder *r, const char *type, size_t n, int ms)
{
    int64_t end = ew_mono_ns() + (int64_t)ms * 1000000;
    size_t c;
    while ((c = rec_count(r, type)) < n && ew_mono_ns() < end)
        usleep(2000);
    return c;
}

/* ---- the environment of a case --------------------------------------------------------------- */

enum { ANSWER = 0, FAIL = 1, SILENT = 2 };

typedef struct env {
    int pg;
    char dir[64];
    char *url;
    ew_config *cfg;
    ew_store *store, *store2, *probe;
    ew_bus *bus;
    ew_saga_engine *eng, *eng2;
    recorder rec;
    /* The test saga "Flow" (flow_def): how its participants answer and its timing. */
    atomic_int mode_one, mode_two;
    int need;              /* user.verified events step three needs */
    int64_t three_timeout; /* ms */
    int64_t flow_timeout;  /* ms; 0: SAGA_TIMEOUT_SECONDS */
    /* The reference sagas' participants. */
    atomic_int profile_mode, analytics_mode, token_ttl_ms, delay_us;
    const char *silent_service; /* the deletion participant that never answers */
    /* conflict_is_retried: the transition of the event with id hold_id waits, between its load
     * and its write, until released (once: its retry goes through) */
    char hold_id[EW_UUID_LEN + 1];
    atomic_int holding, released;
    ew_bus *bus2;
    /* What step three's on_event saw of its instance through the accessors, the first time
     * (claimed through `claimed`: two engines may call it at once). */
    atomic_int claimed;
    struct seen {
        bool set;
        char id[64], type[32], key[64], correlation[64], subject[64], step[16], reason[64];
        char cause[32];
        ew_saga_status state;
        int attempts;
        bool one_done, three_done;
    } seen;
    struct owner {
        struct env *e;
        const char *name;
    } owners[5];
} env;

static ew_store *open_store(const char *url)
{
    ew_store *s = NULL;
    ew_error err = {0};
    if (ew_store_open(&s, &(ew_store_options){.url = url}, &err))
        fail_msg("ew_store_open(%s): %s", url, err.msg);
    return s;
}

static void cfg_set(env *e, const char *name, const char *value)
{
    ew_error err = {0};
    if (ew_config_set(e->cfg, name, value, &err)) fail_msg("%s", err.msg);
}

static env *env_new(int pg)
{
    env *e = calloc(1, sizeof *e);
    pthread_mutex_init(&e->rec.mu, NULL);
    e->pg = pg;
    e->need = 1;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&e->cfg, &err), 0);
    cfg_set(e, "EVENT_BUS_TYPE", "memory");
    cfg_set(e, "SERVICE_NAME", "saga-test");
    cfg_set(e, "EVENT_HANDLER_BACKOFF_MS", "5");
    cfg_set(e, "EVENT_HANDLER_BACKOFF_MAX_MS", "50");
    cfg_set(e, "EVENT_BUS_DRAIN_TIMEOUT_MS", "10000");
    return e;
}

/* The engine's store and a probe beside it, on the case's database. */
static int setup_db(void **state, int pg)
{
    env *e = env_new(pg);
    if (ew_test_db_create(pg, "saga", "eventwire.db", e->dir, &e->url)) return -1;
    cfg_set(e, "EVENT_STORE_URL", e->url);
    e->store = open_store(e->url);
    e->probe = open_store(e->url);
    *state = e;
    return 0;
}

static int setup_sqlite(void **state)
{
    return setup_db(state, 0);
}

static int setup_postgres(void **state)
{
    return setup_db(state, 1);
}

/* Shuts down in the order saga.h asks: engines' timers, the bus, then the engines. */
static void stop_all(env *e)
{
    ew_saga_engine_stop(e->eng);
    ew_saga_engine_stop(e->eng2);
    if (e->bus) ew_bus_close(e->bus);
    if (e->bus2) ew_bus_close(e->bus2);
    e->bus = e->bus2 = NULL;
    ew_saga_engine_close(e->eng);
    ew_saga_engine_close(e->eng2);
    e->eng = e->eng2 = NULL;
}

static int teardown(void **state)
{
    env *e = *state;
    stop_all(e);
    recorder_clear(&e->rec);
    free(e->rec.evs);
    ew_store_close(e->store);
    ew_store_close(e->store2);
    ew_store_close(e->probe);
    ew_config_free(e->cfg);
    ew_test_db_drop(e->pg, e->dir, e->url);
    free(e);
    return 0;
}

/* ---- buses and engines
 * ---------------------------------------------------------------------------- */

static void subscribe(ew_bus *bus, const char *pattern, ew_handler_fn fn, void *ud,
                      const char *group)
{
    ew_error err = {0};
    ew_subscribe_opts o = {.group = group, .name = pattern};
    if (ew_bus_subscribe(bus, pattern, fn, ud, &o, &err)) fail_msg("subscribe: %s", err.msg);
}

static void open_bus(env *e)
{
    ew_error err = {0};
    if (ew_bus_open(&e->bus, &(ew_bus_options){.config = e->cfg}, &err))
        fail_msg("ew_bus_open: %s", err.msg);
    subscribe(e->bus, "#", record_event, &e->rec, "recorder");
}

static ew_saga_engine *open_engine(env *e, ew_store *store)
{
    ew_saga_engine *eng = NULL;
    ew_error err = {0};
    ew_saga_engine_options o = {.bus = e->bus, .store = store, .config = e->cfg};
    if (ew_saga_engine_open(&eng, &o, &err)) fail_msg("ew_saga_engine_open: %s", err.msg);
    return eng;
}

static void start(env *e, ew_saga_engine *eng)
{
    ew_error err = {0};
    if (ew_saga_engine_start(eng, &err)) fail_msg("ew_saga_engine_start: %s", err.msg);
}

static void bus_start(env *e)
{
    ew_error err = {0};
    if (ew_bus_start(e->bus, &err)) fail_msg("ew_bus_start: %s", err.msg);
}

static void publish(env *e, ew_type_id type, const void *data, const char *subject,
                    const char *correlation_id)
{
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_event_attrs a = {.source = "test", .subject = subject, .correlation_id = correlation_id};
    if (ew_event_new(&ev, type, data, &a, &err)) fail_msg("event: %s", err.msg);
    if (ew_bus_publish(e->bus, ev, &err)) fail_msg("publish: %s", err.msg);
    ew_event_unref(ev);
}

/* ---- looking at instances
 * ------------------------------------------------------------------------ */

/* Waits until the instance of type with key has status st (and, when step is not NULL, is at that
 * step); the info is the caller's to release. */
static ew_saga_info wait_saga(env *e, const char *type, const char *key, int st, const char *step)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    ew_saga_info in = {0};
    ew_error err = {0};
    for (;;) {
        int rc = ew_saga_find(e->probe, type, key, &in, &err);
        if (rc && rc != EW_ENOTFOUND) fail_msg("ew_saga_find: %s", err.msg);
        if (!rc && (int)in.status == st && (!step || (in.step && strcmp(in.step, step) == 0)))
            return in;
        if (ew_mono_ns() > end)
            fail_msg("saga %s %s: wanted %s%s%s, is %s at %s (reason: %s)", type, key,
                     ew_saga_status_name((ew_saga_status)st), step ? " at " : "", step ? step : "",
                     rc ? "missing" : ew_saga_status_name(in.status),
                     rc        ? "-"
                     : in.step ? in.step
                               : "(end)",
                     rc          ? "-"
                     : in.reason ? in.reason
                                 : "-");
        ew_saga_info_release(&in);
        usleep(3000);
    }
}

typedef struct trans_log {
    char text[8192]; /* "from>to@step|note\n" per transition */
    int n;
    int deadline_rows; /* rows without an event */
    int64_t last_seq;
    int gaps;
} trans_log;

static int collect_trans(void *ud, const ew_saga_transition *t)
{
    trans_log *l = ud;
    size_t len = strlen(l->text);
    snprintf(l->text + len, sizeof l->text - len, "%s>%s@%s|%s\n",
             t->from_status ? t->from_status : "-", t->to_status, t->to_step ? t->to_step : "-",
             t->note);
    if (!t->event_id) l->deadline_rows++;
    if (t->seq != l->last_seq + 1) l->gaps++;
    l->last_seq = t->seq;
    l->n++;
    return 0;
}

static trans_log transitions(env *e, const char *id)
{
    trans_log l = {.n = 0};
    ew_error err = {0};
    if (ew_saga_transitions(e->probe, id, collect_trans, &l, &err))
        fail_msg("ew_saga_transitions: %s", err.msg);
    assert_int_equal(l.gaps, 0);
    return l;
}

static int first_int(void *ud, const ew_row *row)
{
    *(int64_t *)ud = row->values[0] ? strtoll(row->values[0], NULL, 10) : 0;
    return 1;
}

/* The number a query returns (one parameter, or none when param is NULL). */
static int64_t query_int(env *e, const char *sql, const char *param)
{
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(e->probe, &t, &err), 0);
    int64_t n = -1;
    const char *p[1] = {param};
    if (ew_txn_query(t, sql, p, param ? 1 : 0, first_int, &n, &err)) fail_msg("%s", err.msg);
    ew_txn_rollback(t);
    return n;
}

static int count_info(void *ud, const ew_saga_info *in)
{
    (void)in;
    (*(size_t *)ud)++;
    return 0;
}

static size_t count_sagas(env *e, const char *type, int status)
{
    size_t n = 0;
    ew_error err = {0};
    ew_saga_filter f = {.type = type, .status = status};
    if (ew_saga_list(e->probe, &f, count_info, &n, &err)) fail_msg("ew_saga_list: %s", err.msg);
    return n;
}

/* ---- the test saga: Flow --------------------------------------------------------------------- */
/* Started by user.registered, correlated by user_id. Step one issues user.data_export_requested
 * and waits for user.data_export_completed (or _failed); step two issues user.deletion_requested
 * and waits for user.deletion_completed (or _failed); step three waits for `need` user.verified
 * events (counted in its data) or fails on user.profile_creation_failed. Steps one and two
 * compensate with user.role_changed naming themselves ("undo-one", "undo-two"). */

static const char *const t_registered[] = {"user.registered", NULL};
static const char *const t_export_done[] = {"user.data_export_completed", NULL};
static const char *const t_export_failed[] = {"user.data_export_failed", NULL};
static const char *const t_deletion_done[] = {"user.deletion_completed", NULL};
static const char *const t_deletion_failed[] = {"user.deletion_failed", NULL};
static const char *const t_verified[] = {"user.verified", NULL};
static const char *const t_profile_failed[] = {"user.profile_creation_failed", NULL};

static int flow_start(ew_saga *s, void *ud, ew_error *err)
{
    const ew_user_registered *u = ew_user_registered_data(ew_saga_cause(s));
    return ew_saga_set(s, "user_id", u->user_id, err);
}

static int issue_one(ew_saga *s, void *ud, ew_error *err)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_data_export_requested d = {.export_id = id, .user_id = ew_saga_get(s, "user_id")};
    return ew_saga_issue(s, EW_T_USER_DATA_EXPORT_REQUESTED, &d, NULL, err);
}

static int issue_two(ew_saga *s, void *ud, ew_error *err)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_deletion_requested d = {.request_id = id, .user_id = ew_saga_get(s, "user_id")};
    return ew_saga_issue(s, EW_T_USER_DELETION_REQUESTED, &d, NULL, err);
}

static int undo(ew_saga *s, const char *what, ew_error *err)
{
    const char *roles[] = {what};
    ew_user_role_changed d = {.user_id = ew_saga_get(s, "user_id"), .roles = {roles, 1}};
    return ew_saga_issue(s, EW_T_USER_ROLE_CHANGED, &d, NULL, err);
}

static int undo_one(ew_saga *s, void *ud, ew_error *err)
{
    return undo(s, "undo-one", err);
}

static int undo_two(ew_saga *s, void *ud, ew_error *err)
{
    return undo(s, "undo-two", err);
}

/* Counts user.verified events: done at env->need. */
static ew_saga_verdict count_verified(ew_saga *s, const ew_event *ev, void *ud)
{
    env *e = ud;
    if (strcmp(ew_event_type(ev), "user.verified") != 0) return EW_SAGA_FAIL;
    int no = 0;
    if (strcmp(ew_event_id(ev), e->hold_id) == 0 &&
        atomic_compare_exchange_strong(&e->holding, &no, 1)) {
        int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
        while (!atomic_load(&e->released) && ew_mono_ns() < end)
            usleep(1000);
    }
    int unclaimed = 0;
    if (atomic_compare_exchange_strong(&e->claimed, &unclaimed, 1)) {
        struct seen *w = &e->seen;
        w->set = true;
        snprintf(w->id, sizeof w->id, "%s", ew_saga_id(s));
        snprintf(w->type, sizeof w->type, "%s", ew_saga_type(s));
        snprintf(w->key, sizeof w->key, "%s", ew_saga_key(s));
        snprintf(w->correlation, sizeof w->correlation, "%s", ew_saga_correlation_id(s));
        snprintf(w->subject, sizeof w->subject, "%s",
                 ew_saga_subject(s) ? ew_saga_subject(s) : "(none)");
        snprintf(w->step, sizeof w->step, "%s", ew_saga_step_name(s) ? ew_saga_step_name(s) : "");
        snprintf(w->reason, sizeof w->reason, "%s", ew_saga_reason(s));
        snprintf(w->cause, sizeof w->cause, "%s",
                 ew_saga_cause(s) ? ew_event_type(ew_saga_cause(s)) : "(none)");
        w->state = ew_saga_state(s);
        w->attempts = ew_saga_step_attempts(s);
        w->one_done = ew_saga_step_done(s, "one");
        w->three_done = ew_saga_step_done(s, "three");
    }
    const char *n = ew_saga_get(s, "verified");
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (n ? atoi(n) : 0) + 1);
    if (ew_saga_set(s, "verified", buf, NULL)) return EW_SAGA_IGNORE;
    return atoi(buf) >= e->need ? EW_SAGA_DONE : EW_SAGA_PROGRESS;
}

static int register_flow(env *e, ew_saga_engine *eng, ew_error *err)
{
    ew_saga_step steps[] = {
        {.name = "one",
         .completed_by = t_export_done,
         .failed_by = t_export_failed,
         .action = issue_one,
         .compensation = undo_one},
        {.name = "two",
         .completed_by = t_deletion_done,
         .failed_by = t_deletion_failed,
         .action = issue_two,
         .compensation = undo_two},
        {.name = "three",
         .completed_by = t_verified,
         .failed_by = t_profile_failed,
         .on_event = count_verified,
         .timeout_ms = e->three_timeout},
    };
    ew_saga_def d = {.name = "Flow",
                     .started_by = t_registered[0],
                     .correlate = EW_SAGA_BY_FIELD,
                     .correlation_field = "user_id",
                     .steps = steps,
                     .nsteps = 3,
                     .timeout_ms = e->flow_timeout,
                     .on_start = flow_start,
                     .ud = e};
    return ew_saga_engine_register(eng, &d, err);
}

/* The participants of Flow. */
static ew_handler_result answer_export(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    const ew_user_data_export_requested *r = ew_user_data_export_requested_data(ev);
    int mode = atomic_load(&e->mode_one);
    if (mode == SILENT) return EW_HANDLER_OK;
    const char *svc[] = {"user-service"};
    ew_user_data_export_completed ok = {.export_id = r->export_id,
                                        .user_id = r->user_id,
                                        .download_url = "https://example.com/x",
                                        .expires_at = "2030-01-01T00:00:00Z",
                                        .services = {svc, 1}};
    ew_user_data_export_failed no = {
        .export_id = r->export_id, .user_id = r->user_id, .reason = "disk full"};
    int rc = mode == FAIL ? ew_ctx_publish(ctx, EW_T_USER_DATA_EXPORT_FAILED, &no, NULL, NULL)
                          : ew_ctx_publish(ctx, EW_T_USER_DATA_EXPORT_COMPLETED, &ok, NULL, NULL);
    return rc ? EW_HANDLER_RETRY : EW_HANDLER_OK;
}

static ew_handler_result answer_deletion(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    const ew_user_deletion_requested *r = ew_user_deletion_requested_data(ev);
    int mode = atomic_load(&e->mode_two);
    if (mode == SILENT) return EW_HANDLER_OK;
    const char *svc[] = {"user-service"};
    ew_user_deletion_completed ok = {
        .request_id = r->request_id, .user_id = r->user_id, .services = {svc, 1}};
    ew_user_deletion_failed no = {.request_id = r->request_id,
                                  .user_id = r->user_id,
                                  .missing = {svc, 1},
                                  .reason = "refused"};
    int rc = mode == FAIL ? ew_ctx_publish(ctx, EW_T_USER_DELETION_FAILED, &no, NULL, NULL)
                          : ew_ctx_publish(ctx, EW_T_USER_DELETION_COMPLETED, &ok, NULL, NULL);
    return rc ? EW_HANDLER_RETRY : EW_HANDLER_OK;
}

/* A memory bus with the recorder and Flow's participants, and an engine with Flow, started. */
static void flow_up(env *e)
{
    open_bus(e);
    subscribe(e->bus, "user.data_export_requested", answer_export, e, "exporter");
    subscribe(e->bus, "user.deletion_requested", answer_deletion, e, "deleter");
    e->eng = open_engine(e, e->store);
    ew_error err = {0};
    if (register_flow(e, e->eng, &err)) fail_msg("register: %s", err.msg);
    start(e, e->eng);
    bus_start(e);
}

/* Publishes user.registered for a new user; its id (the correlation key) into user. */
static ew_event *register_user(env *e, char user[EW_UUID_LEN + 1])
{
    static const char *roles[] = {"user"};
    ew_uuid7(user);
    ew_user_registered d = {
        .user_id = user, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service", .subject = user};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("%s", err.msg);
    if (ew_bus_publish(e->bus, ev, &err)) fail_msg("publish: %s", err.msg);
    return ev;
}

static void verify(env *e, const char *user)
{
    ew_user_verified v = {.user_id = user, .method = "email"};
    publish(e, EW_T_USER_VERIFIED, &v, NULL, NULL);
}

/* The roles of the recorded user.role_changed events, in order: "undo-two,undo-one,". */
static void compensations(env *e, char *out, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0;; i++) {
        ew_event *ev = rec_get(&e->rec, "user.role_changed", i);
        if (!ev) break;
        const ew_user_role_changed *r = ew_user_role_changed_data(ev);
        size_t len = strlen(out);
        snprintf(out + len, n - len, "%s,", r->roles.items[0]);
        ew_event_unref(ev);
    }
}

/* ---- the engine
 * ------------------------------------------------------------------------------------ */

static void happy_path(env *e)
{
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    ew_saga_info_release(&in);
    verify(e, user);
    in = wait_saga(e, "Flow", user, EW_SAGA_COMPLETED, NULL);
    assert_string_equal(in.steps_done, "[\"one\",\"two\",\"three\"]");
    assert_string_equal(in.correlation_id, ew_event_correlation_id(reg));
    assert_null(in.step);
    assert_null(in.reason);
    assert_true(in.finished_us >= in.started_us);
    assert_non_null(strstr(in.data, "\"verified\":\"1\""));

    /* Inside a callback the instance is what the store says it is. */
    assert_true(e->seen.set);
    assert_string_equal(e->seen.id, in.id);
    assert_string_equal(e->seen.type, "Flow");
    assert_string_equal(e->seen.key, user);
    assert_string_equal(e->seen.correlation, ew_event_correlation_id(reg));
    assert_string_equal(e->seen.subject, user);
    assert_string_equal(e->seen.step, "three");
    assert_string_equal(e->seen.reason, "");
    assert_string_equal(e->seen.cause, "user.verified");
    assert_int_equal(e->seen.state, EW_SAGA_RUNNING);
    assert_int_equal(e->seen.attempts, 0);
    assert_true(e->seen.one_done);
    assert_false(e->seen.three_done);

    /* What the steps issued carries the saga's correlation, and the event that caused it. */
    assert_int_equal(rec_wait(&e->rec, "saga.completed", 1, WAIT_MS), 1);
    ew_event *req = rec_get(&e->rec, "user.data_export_requested", 0);
    assert_non_null(req);
    assert_string_equal(ew_event_correlation_id(req), ew_event_correlation_id(reg));
    assert_string_equal(ew_event_causation_id(req), ew_event_id(reg));
    assert_string_equal(ew_event_source(req), "saga-test");
    assert_string_equal(ew_event_subject(req), user);
    ew_event_unref(req);
    ew_event *done = rec_get(&e->rec, "saga.completed", 0);
    assert_string_equal(ew_saga_completed_data(done)->saga_id, in.id);
    assert_string_equal(ew_saga_completed_data(done)->saga_type, "Flow");
    ew_event_unref(done);
    assert_int_equal(rec_count(&e->rec, "user.data_export_requested"), 1);
    assert_int_equal(rec_count(&e->rec, "user.deletion_requested"), 1);
    assert_int_equal(rec_count(&e->rec, "user.role_changed"), 0);

    /* How it got there: started, one done, two done, three done and completed. */
    trans_log l = transitions(e, in.id);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.deadline_rows, 0);
    assert_non_null(strstr(l.text, "->running@one|Started by user.registered. Step one begins."));
    assert_non_null(strstr(l.text, "running>running@two|Step one done"));
    assert_non_null(strstr(l.text, "running>completed@-|"));
    assert_non_null(strstr(l.text, "Every step is done. Issued saga.completed."));

    assert_int_equal(count_sagas(e, "Flow", EW_SAGA_COMPLETED), 1);
    assert_int_equal(count_sagas(e, "Flow", EW_SAGA_RUNNING), 0);
    assert_int_equal(count_sagas(e, NULL, -1), 1);
    assert_int_equal(
        query_int(e, "SELECT count(*) FROM event_store.saga_consumed WHERE saga_id = $1", in.id),
        4);
    ew_saga_info_release(&in);
    ew_event_unref(reg);
}
BOTH(happy_path)

/* A step fails: the completed steps are compensated, the last one first, and the saga ends
 * compensated, with saga.failed naming the step. */
static void failure_compensates_in_reverse(env *e)
{
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    ew_saga_info_release(&in);
    ew_user_profile_creation_failed f = {.user_id = user, .reason = "nope"};
    publish(e, EW_T_USER_PROFILE_CREATION_FAILED, &f, user, NULL);
    in = wait_saga(e, "Flow", user, EW_SAGA_COMPENSATED, "three");
    assert_string_equal(in.reason, "Step three failed (user.profile_creation_failed): nope");
    assert_int_equal(rec_wait(&e->rec, "saga.failed", 1, WAIT_MS), 1);
    char order[256];
    compensations(e, order, sizeof order);
    assert_string_equal(order, "undo-two,undo-one,");
    ew_event *failed = rec_get(&e->rec, "saga.failed", 0);
    assert_string_equal(ew_saga_failed_data(failed)->step, "three");
    assert_string_equal(ew_saga_failed_data(failed)->reason, in.reason);
    ew_event_unref(failed);
    /* the compensations follow the failure, each a transition of its own */
    trans_log l = transitions(e, in.id);
    const char *fail_row = strstr(l.text, "running>compensating@three|Step three failed");
    const char *two = strstr(l.text, "compensating>compensating@two|Compensating step two. "
                                     "Issued user.role_changed.");
    const char *one = strstr(l.text, "compensating>compensating@one|Compensating step one.");
    const char *end = strstr(l.text, "compensating>compensated@three|Issued saga.failed.");
    assert_true(fail_row && two && one && end);
    assert_true(fail_row < two && two < one && one < end);
    /* a finished saga ignores what comes later */
    verify(e, user);
    ew_error err = {0};
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    ew_saga_info again = wait_saga(e, "Flow", user, EW_SAGA_COMPENSATED, "three");
    assert_int_equal(again.version, in.version);
    ew_saga_info_release(&again);
    ew_saga_info_release(&in);
    ew_event_unref(reg);
}
BOTH(failure_compensates_in_reverse)

/* The first step fails: nothing to undo, so the saga ends failed. */
static void failure_without_compensation(env *e)
{
    atomic_store(&e->mode_one, FAIL);
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_FAILED, "one");
    assert_string_equal(in.reason, "Step one failed (user.data_export_failed): disk full");
    assert_string_equal(in.steps_done, "[]");
    assert_int_equal(rec_wait(&e->rec, "saga.failed", 1, WAIT_MS), 1);
    assert_int_equal(rec_count(&e->rec, "user.role_changed"), 0);
    assert_int_equal(rec_count(&e->rec, "user.deletion_requested"), 0);
    trans_log l = transitions(e, in.id);
    assert_non_null(strstr(l.text, "running>failed@one|"));
    assert_null(strstr(l.text, "compensating"));
    ew_saga_info_release(&in);
    ew_event_unref(reg);
}
BOTH(failure_without_compensation)

/* Step three's deadline passes with no event at all: the timer fires it, the compensations run
 * in reverse order, and the saga times out naming what it waited for. */
static void step_deadline_fires(env *e)
{
    e->three_timeout = 300;
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    assert_true(in.step_deadline_us > 0);
    assert_true(in.step_deadline_us <= in.deadline_us);
    int64_t due = in.step_deadline_us;
    ew_saga_info_release(&in);
    in = wait_saga(e, "Flow", user, EW_SAGA_TIMED_OUT, "three");
    assert_true(ew_now_us() >= due);
    assert_string_equal(in.reason, "Step three passed its deadline.");
    assert_int_equal(rec_wait(&e->rec, "saga.timed_out", 1, WAIT_MS), 1);
    char order[256];
    compensations(e, order, sizeof order);
    assert_string_equal(order, "undo-two,undo-one,");
    ew_event *t = rec_get(&e->rec, "saga.timed_out", 0);
    const ew_saga_timed_out *d = ew_saga_timed_out_data(t);
    assert_string_equal(d->step, "three");
    assert_int_equal(d->pending.count, 1);
    assert_string_equal(d->pending.items[0], "three");
    ew_event_unref(t);
    trans_log l = transitions(e, in.id);
    assert_int_equal(l.deadline_rows, 4); /* the failure, two compensations, the end */
    ew_saga_engine_stats st;
    ew_saga_engine_stats_get(e->eng, &st);
    assert_int_equal(st.deadlines, 1);
    ew_saga_info_release(&in);
    ew_event_unref(reg);
}
BOTH(step_deadline_fires)

/* The saga's own deadline comes from SAGA_TIMEOUT_SECONDS: step two's participant never answers,
 * and one second after the start the saga times out, compensating step one. */
static void saga_deadline_fires(env *e)
{
    cfg_set(e, "SAGA_TIMEOUT_SECONDS", "1");
    atomic_store(&e->mode_two, SILENT);
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "two");
    assert_int_equal(in.deadline_us - in.started_us, 1000000);
    assert_int_equal(in.step_deadline_us, 0);
    ew_saga_info_release(&in);
    in = wait_saga(e, "Flow", user, EW_SAGA_TIMED_OUT, "two");
    assert_string_equal(in.reason, "The saga passed its deadline.");
    assert_true(in.finished_us - in.started_us >= 1000000);
    assert_int_equal(rec_wait(&e->rec, "user.role_changed", 1, WAIT_MS), 1);
    char order[256];
    compensations(e, order, sizeof order);
    assert_string_equal(order, "undo-one,");
    assert_int_equal(rec_wait(&e->rec, "saga.timed_out", 1, WAIT_MS), 1);
    ew_saga_info_release(&in);
    ew_event_unref(reg);
}
BOTH(saga_deadline_fires)

/* The same event delivered twice is applied once: step three needs two user.verified events, and
 * one event published twice does not complete it. A repeated start event starts nothing. */
static void duplicates_apply_once(env *e)
{
    e->need = 2;
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event *reg = register_user(e, user);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    ew_saga_info_release(&in);
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(e->bus, reg, &err), 0); /* the start again */
    ew_user_verified v = {.user_id = user, .method = "email"};
    ew_event *ev = NULL;
    assert_int_equal(ew_user_verified_new(&ev, &v, &(ew_event_attrs){.source = "t"}, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ew_bus_publish(e->bus, ev, &err), 0);
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    assert_non_null(strstr(in.data, "\"verified\":\"1\""));
    ew_saga_engine_stats st;
    ew_saga_engine_stats_get(e->eng, &st);
    assert_true(st.duplicates >= 3);
    assert_int_equal(st.started, 1);
    assert_int_equal(count_sagas(e, "Flow", -1), 1);
    assert_int_equal(rec_count(&e->rec, "user.data_export_requested"), 1);
    ew_saga_info_release(&in);
    verify(e, user); /* another event: now it is done */
    in = wait_saga(e, "Flow", user, EW_SAGA_COMPLETED, NULL);
    assert_non_null(strstr(in.data, "\"verified\":\"2\""));
    ew_saga_info_release(&in);
    ew_event_unref(ev);
    ew_event_unref(reg);
}
BOTH(duplicates_apply_once)

/* Two engines (two store handles, competing consumers of the same subscriptions) take the events
 * of the same instances at once: every one of them counts (none is lost to a concurrent write),
 * because a write at a stale version changes nothing and is tried again. */
#define CONC_SAGAS 4
#define CONC_EVENTS 12
static void concurrent_events_serialise(env *e)
{
    e->need = CONC_EVENTS;
    e->store2 = open_store(e->url);
    open_bus(e);
    subscribe(e->bus, "user.data_export_requested", answer_export, e, "exporter");
    subscribe(e->bus, "user.deletion_requested", answer_deletion, e, "deleter");
    ew_error err = {0};
    e->eng = open_engine(e, e->store);
    ew_saga_engine_options o = {
        .bus = e->bus, .store = e->store2, .config = e->cfg, .concurrency = 4};
    assert_int_equal(ew_saga_engine_open(&e->eng2, &o, &err), 0);
    assert_int_equal(register_flow(e, e->eng, &err), 0);
    assert_int_equal(register_flow(e, e->eng2, &err), 0);
    start(e, e->eng);
    start(e, e->eng2);
    bus_start(e);
    char users[CONC_SAGAS][EW_UUID_LEN + 1];
    for (int i = 0; i < CONC_SAGAS; i++)
        ew_event_unref(register_user(e, users[i]));
    for (int i = 0; i < CONC_SAGAS; i++) {
        ew_saga_info in = wait_saga(e, "Flow", users[i], EW_SAGA_RUNNING, "three");
        ew_saga_info_release(&in);
    }
    /* No subject: the bus spreads them over every worker of both engines. */
    for (int k = 0; k < CONC_EVENTS; k++)
        for (int i = 0; i < CONC_SAGAS; i++)
            verify(e, users[i]);
    for (int i = 0; i < CONC_SAGAS; i++) {
        ew_saga_info in = wait_saga(e, "Flow", users[i], EW_SAGA_COMPLETED, NULL);
        char want[32];
        snprintf(want, sizeof want, "\"verified\":\"%d\"", CONC_EVENTS);
        assert_non_null(strstr(in.data, want));
        trans_log l = transitions(e, in.id);
        assert_int_equal(l.n, 3 + CONC_EVENTS);
        assert_int_equal(query_int(e,
                                   "SELECT count(*) FROM event_store.saga_consumed "
                                   "WHERE saga_id = $1",
                                   in.id),
                         3 + CONC_EVENTS);
        ew_saga_info_release(&in);
    }
    ew_saga_engine_stats a, b;
    ew_saga_engine_stats_get(e->eng, &a);
    ew_saga_engine_stats_get(e->eng2, &b);
    assert_int_equal(a.errors + b.errors, 0);
    assert_true(a.applied > 0 && b.applied > 0); /* both engines took part */
    /* On SQLite the file's lock serialises the engines' transactions (conflict_is_retried) */
    if (!e->pg) assert_int_equal(a.conflicts + b.conflicts, 0);
}
BOTH(concurrent_events_serialise)

/* A write at a stale version is retried, and the event applied once. Engine A (on the bus of
 * the flow) loads the instance for event X and waits before its write; engine B (on a bus of its
 * own, the same database) applies event Y to the same instance meanwhile. On PostgreSQL (read
 * committed) B commits, A's conditional write finds the version changed, writes nothing, and
 * A tries X again from the load: exactly one conflict, and both events counted once. On SQLite
 * every write transaction holds the file's lock from its start (BEGIN IMMEDIATE), so B cannot
 * commit while A is between load and write: no conflict can happen there, and the case asserts
 * that instead — B waits, then goes second. */
static void conflict_is_retried(env *e)
{
    e->need = 100; /* step three stays open */
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    ew_saga_info_release(&in);

    /* engine B: its own memory bus, its own handle on the same database */
    ew_error err = {0};
    e->store2 = open_store(e->url);
    if (ew_bus_open(&e->bus2, &(ew_bus_options){.config = e->cfg}, &err))
        fail_msg("ew_bus_open: %s", err.msg);
    ew_saga_engine_options o = {.bus = e->bus2, .store = e->store2, .config = e->cfg};
    assert_int_equal(ew_saga_engine_open(&e->eng2, &o, &err), 0);
    assert_int_equal(register_flow(e, e->eng2, &err), 0);
    start(e, e->eng2);
    if (ew_bus_start(e->bus2, &err)) fail_msg("ew_bus_start: %s", err.msg);

    ew_user_verified v = {.user_id = user, .method = "email"};
    ew_event *x = NULL, *y = NULL;
    assert_int_equal(ew_user_verified_new(&x, &v, &(ew_event_attrs){.source = "t"}, &err), 0);
    assert_int_equal(ew_user_verified_new(&y, &v, &(ew_event_attrs){.source = "t"}, &err), 0);
    snprintf(e->hold_id, sizeof e->hold_id, "%s", ew_event_id(x));
    assert_int_equal(ew_bus_publish(e->bus, x, &err), 0); /* to engine A */
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (!atomic_load(&e->holding) && ew_mono_ns() < end)
        usleep(1000);
    assert_int_equal(atomic_load(&e->holding), 1);         /* A is between its load and its write */
    assert_int_equal(ew_bus_publish(e->bus2, y, &err), 0); /* to engine B */
    ew_saga_engine_stats a, b;
    if (e->pg) {
        do { /* B commits Y while A holds X */
            usleep(1000);
            ew_saga_engine_stats_get(e->eng2, &b);
        } while (b.applied < 1 && ew_mono_ns() < end);
        assert_int_equal(b.applied, 1);
    } else {
        usleep(300000); /* B waits for the file lock A holds */
        ew_saga_engine_stats_get(e->eng2, &b);
        assert_int_equal(b.applied, 0);
    }
    atomic_store(&e->released, 1);
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    assert_int_equal(ew_bus_wait_for_events(e->bus2, WAIT_MS, &err), 0);

    ew_saga_engine_stats_get(e->eng, &a);
    ew_saga_engine_stats_get(e->eng2, &b);
    assert_int_equal(a.errors + b.errors, 0);
    assert_int_equal(b.applied, 1);
    assert_int_equal(a.conflicts, e->pg ? 1 : 0); /* the retry path ran (PostgreSQL) */
    assert_int_equal(b.conflicts, 0);
    in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    assert_non_null(strstr(in.data, "\"verified\":\"2\"")); /* X and Y, each once */
    trans_log l = transitions(e, in.id);
    assert_int_equal(l.n, 3 + 2);
    const char *ids[] = {ew_event_id(x), ew_event_id(y)};
    for (int i = 0; i < 2; i++)
        assert_int_equal(query_int(e,
                                   "SELECT count(*) FROM event_store.saga_consumed "
                                   "WHERE event_id = $1",
                                   ids[i]),
                         1);
    ew_saga_info_release(&in);
    ew_event_unref(x);
    ew_event_unref(y);
}
BOTH(conflict_is_retried)

/* Two engines (processes, in production) share the store and see the same deadline: it fires
 * once. Relays on one SQLite file may both send a row, so events are counted by id. */
static size_t distinct(env *e, const char *type)
{
    size_t n = 0;
    for (size_t i = 0;; i++) {
        ew_event *ev = rec_get(&e->rec, type, i);
        if (!ev) return n;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) {
            ew_event *prev = rec_get(&e->rec, type, j);
            seen = strcmp(ew_event_id(prev), ew_event_id(ev)) == 0;
            ew_event_unref(prev);
        }
        n += !seen;
        ew_event_unref(ev);
    }
}

static void two_engines_fire_a_deadline_once(env *e)
{
    e->three_timeout = 300;
    e->store2 = open_store(e->url);
    open_bus(e);
    subscribe(e->bus, "user.data_export_requested", answer_export, e, "exporter");
    subscribe(e->bus, "user.deletion_requested", answer_deletion, e, "deleter");
    ew_error err = {0};
    e->eng = open_engine(e, e->store);
    e->eng2 = open_engine(e, e->store2);
    assert_int_equal(register_flow(e, e->eng, &err), 0);
    assert_int_equal(register_flow(e, e->eng2, &err), 0);
    start(e, e->eng);
    start(e, e->eng2);
    bus_start(e);
    char users[3][EW_UUID_LEN + 1];
    for (int i = 0; i < 3; i++)
        ew_event_unref(register_user(e, users[i]));
    for (int i = 0; i < 3; i++) {
        ew_saga_info in = wait_saga(e, "Flow", users[i], EW_SAGA_TIMED_OUT, "three");
        trans_log l = transitions(e, in.id);
        assert_int_equal(l.deadline_rows, 4); /* one failure, two compensations, one end */
        ew_saga_info_release(&in);
    }
    assert_int_equal(rec_wait(&e->rec, "saga.timed_out", 3, WAIT_MS) >= 3, 1);
    usleep(100000); /* time for a second firing to show, were there one */
    assert_int_equal(distinct(e, "saga.timed_out"), 3);
    assert_int_equal(distinct(e, "user.role_changed"), 6);
    ew_saga_engine_stats a, b;
    ew_saga_engine_stats_get(e->eng, &a);
    ew_saga_engine_stats_get(e->eng2, &b);
    assert_int_equal(a.deadlines + b.deadlines, 3);
    print_message("deadlines fired: %llu and %llu; conflicts: %llu\n",
                  (unsigned long long)a.deadlines, (unsigned long long)b.deadlines,
                  (unsigned long long)(a.conflicts + b.conflicts));
}
BOTH(two_engines_fire_a_deadline_once)

/* Events that come before their instance (another service answered first) wait for it. */
static void early_events_wait_for_their_instance(env *e)
{
    flow_up(e);
    char user[EW_UUID_LEN + 1], id[EW_UUID_LEN + 1];
    ew_uuid7(user);
    ew_uuid7(id);
    const char *svc[] = {"x"};
    ew_user_data_export_completed c = {.export_id = id,
                                       .user_id = user,
                                       .download_url = "https://example.com/early",
                                       .expires_at = "2030-01-01T00:00:00Z",
                                       .services = {svc, 1}};
    publish(e, EW_T_USER_DATA_EXPORT_COMPLETED, &c, user, NULL);
    ew_error err = {0};
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    assert_int_equal(query_int(e, "SELECT count(*) FROM event_store.saga_parked", NULL), 1);
    assert_int_equal(count_sagas(e, "Flow", -1), 0);
    /* now the start, with the same user id */
    static const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user, NULL);
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    trans_log l = transitions(e, in.id);
    assert_non_null(strstr(l.text, "Step one done (user.data_export_completed)"));
    assert_int_equal(query_int(e, "SELECT count(*) FROM event_store.saga_parked", NULL), 0);
    ew_saga_engine_stats st;
    ew_saga_engine_stats_get(e->eng, &st);
    assert_true(st.parked >= 1);
    ew_saga_info_release(&in);
}
BOTH(early_events_wait_for_their_instance)

/* The engine is shut down while an instance waits at step three; a new engine (new bus, new store
 * handle) goes on with it from the database: its deadline fires there, and an event left in the
 * outbox by a process that died before publishing it is published when the new engine starts. */
static void new_engine_continues(env *e)
{
    e->three_timeout = 1500;
    flow_up(e);
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_saga_info in = wait_saga(e, "Flow", user, EW_SAGA_RUNNING, "three");
    stop_all(e);
    recorder_clear(&e->rec);
    /* What a crash between a transition's commit and its publication leaves behind. */
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(e->store, &t, &err), 0);
    const char *roles[] = {"left-in-outbox"};
    ew_user_role_changed d = {.user_id = user, .roles = {roles, 1}};
    ew_event *left = NULL;
    assert_int_equal(
        ew_user_role_changed_new(&left, &d, &(ew_event_attrs){.source = "saga-test"}, &err), 0);
    assert_int_equal(ew_outbox_add(t, left, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);

    ew_store_close(e->store);
    e->store = open_store(e->url);
    flow_up(e);
    assert_int_equal(rec_wait(&e->rec, "user.role_changed", 1, WAIT_MS), 1);
    ew_event *got = rec_get(&e->rec, "user.role_changed", 0);
    assert_string_equal(ew_event_id(got), ew_event_id(left));
    ew_event_unref(got);
    ew_event_unref(left);
    ew_saga_info done = wait_saga(e, "Flow", user, EW_SAGA_TIMED_OUT, "three");
    assert_string_equal(done.id, in.id);
    assert_int_equal(rec_wait(&e->rec, "saga.timed_out", 1, WAIT_MS), 1); /* and what came before */
    char order[256];
    compensations(e, order, sizeof order);
    assert_string_equal(order, "left-in-outbox,undo-two,undo-one,");
    ew_saga_info_release(&done);
    ew_saga_info_release(&in);
}
BOTH(new_engine_continues)

/* ENABLE_SAGAS=false: the engine subscribes nothing and runs nothing. */
static void disabled_by_configuration(env *e)
{
    cfg_set(e, "ENABLE_SAGAS", "false");
    flow_up(e);
    assert_false(ew_saga_engine_enabled(e->eng));
    ew_bus_stats st;
    ew_bus_stats_get(e->bus, &st);
    assert_int_equal(st.subscriptions, 3); /* the recorder and the two participants */
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_error err = {0};
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    assert_int_equal(count_sagas(e, NULL, -1), 0);
    size_t fired = 1;
    assert_int_equal(ew_saga_engine_tick(e->eng, &fired, &err), 0);
    assert_int_equal(fired, 0);
}
BOTH(disabled_by_configuration)

/* Declarations that cannot work are refused with the reason. */
static ew_saga_verdict never(ew_saga *s, const ew_event *ev, void *ud)
{
    return EW_SAGA_IGNORE;
}

static int freed;
static void count_free(void *ud)
{
    freed++;
}

static void declarations_are_checked(env *e)
{
    open_bus(e);
    e->eng = open_engine(e, e->store);
    ew_error err = {0};
    const char *const bogus[] = {"user.nothing", NULL};
    ew_saga_step ok[] = {{.name = "a", .completed_by = t_verified, .on_event = never}};
    ew_saga_step bad_type[] = {{.name = "a", .completed_by = bogus}};
    ew_saga_step bad_name[] = {{.name = "Bad Name", .completed_by = t_verified}};
    ew_saga_step twice[] = {{.name = "a", .completed_by = t_verified},
                            {.name = "a", .completed_by = t_verified}};
    ew_saga_step empty[] = {{.name = "a"}};
    ew_saga_def d = {.name = "S", .started_by = "user.registered", .steps = ok, .nsteps = 1};
    struct {
        ew_saga_def def;
        int code;
        const char *msg;
    } cases[] = {
        {{.name = "bad name", .started_by = "user.registered", .steps = ok, .nsteps = 1},
         EW_EINVAL,
         "saga name"},
        {{.name = "S", .started_by = "user.nope", .steps = ok, .nsteps = 1},
         EW_EINVAL,
         "'user.nope' is not an event type"},
        {{.name = "S", .started_by = "user.registered", .steps = ok, .nsteps = 0},
         EW_EINVAL,
         "1 to 64 steps"},
        {{.name = "S", .started_by = "user.registered", .steps = bad_type, .nsteps = 1},
         EW_EINVAL,
         "'user.nothing' is not an event type"},
        {{.name = "S", .started_by = "user.registered", .steps = bad_name, .nsteps = 1},
         EW_EINVAL,
         "step name"},
        {{.name = "S", .started_by = "user.registered", .steps = twice, .nsteps = 2},
         EW_EINVAL,
         "two steps are named a"},
        {{.name = "S", .started_by = "user.registered", .steps = empty, .nsteps = 1},
         EW_EINVAL,
         "completes on no event type"},
        {{.name = "S",
          .started_by = "user.registered",
          .correlate = EW_SAGA_BY_FIELD,
          .correlation_field = "roles",
          .steps = ok,
          .nsteps = 1},
         EW_EINVAL,
         "no string or number field 'roles'"},
    };
    freed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cases[i].def.ud_free = count_free;
        int rc = ew_saga_engine_register(e->eng, &cases[i].def, &err);
        if (rc != cases[i].code || !strstr(err.msg, cases[i].msg))
            fail_msg("case %zu: %s: %s", i, ew_err_name(rc), err.msg);
    }
    assert_int_equal(freed, (int)(sizeof cases / sizeof cases[0])); /* ud freed on refusal */
    /* the deletion has no participants of its own: the system names them */
    assert_int_equal(ew_saga_add_user_deletion(e->eng, NULL, &err), EW_EINVAL);
    assert_non_null(strstr(err.msg, "participating services are required"));
    assert_int_equal(ew_saga_add_reference_sagas(e->eng, &(ew_user_deletion_opts){0}, &err),
                     EW_EINVAL);
    assert_int_equal(ew_saga_engine_register(e->eng, &d, &err), 0);
    assert_int_equal(ew_saga_engine_register(e->eng, &d, &err), EW_EEXIST);
    start(e, e->eng);
    d.name = "T";
    assert_int_equal(ew_saga_engine_register(e->eng, &d, &err), EW_ESTATE);
    assert_int_equal(ew_saga_engine_start(e->eng, &err), EW_ESTATE);
    bus_start(e);
    ew_saga_engine *none = NULL;
    assert_int_equal(ew_saga_engine_open(&none, &(ew_saga_engine_options){.bus = e->bus}, &err),
                     EW_EINVAL);
    assert_int_equal(ew_saga_status_parse("timed_out"), EW_SAGA_TIMED_OUT);
    assert_int_equal(ew_saga_status_parse("lost"), -1);
    assert_string_equal(ew_saga_status_name(EW_SAGA_COMPENSATING), "compensating");
    ew_saga_info in;
    assert_int_equal(ew_saga_get_info(e->probe, "no-such-id", &in, &err), EW_ENOTFOUND);
}
BOTH(declarations_are_checked)

/* ---- the sagas of the reference system ------------------------------------------------------- */
/* The services, as far as the sagas see them: each answers the way the real one will. */

static void pause_a_little(env *e)
{
    int us = atomic_load(&e->delay_us);
    if (us) usleep((useconds_t)us);
}

/* user-service: a profile and default preferences for every new user. */
static ew_handler_result user_service(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    pause_a_little(e);
    const ew_user_registered *u = ew_user_registered_data(ev);
    int mode = atomic_load(&e->profile_mode);
    if (mode == SILENT) return EW_HANDLER_OK;
    if (mode == FAIL) {
        ew_user_profile_creation_failed f = {.user_id = u->user_id, .reason = "profiles are down"};
        return ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATION_FAILED, &f, u->user_id, NULL)
                   ? EW_HANDLER_RETRY
                   : EW_HANDLER_OK;
    }
    ew_user_profile_created p = {.user_id = u->user_id, .display_name = u->username};
    ew_user_preferences_updated pr = {.user_id = u->user_id,
                                      .preferences = "{\"language\":\"en\"}"};
    if (ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &p, u->user_id, NULL) ||
        ew_ctx_publish(ctx, EW_T_USER_PREFERENCES_UPDATED, &pr, u->user_id, NULL))
        return EW_HANDLER_RETRY;
    return EW_HANDLER_OK;
}

/* notification-service: the welcome email, and the password reset email. */
static ew_handler_result notification_service(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    pause_a_little(e);
    char msg[EW_UUID_LEN + 1];
    ew_uuid7(msg);
    int rc;
    const ew_user_registered *u = ew_user_registered_data(ev);
    const ew_password_reset_token_issued *t = ew_password_reset_token_issued_data(ev);
    if (u) {
        ew_notification_welcome_email_sent w = {
            .user_id = u->user_id, .email = u->email, .message_id = msg};
        rc = ew_ctx_publish(ctx, EW_T_NOTIFICATION_WELCOME_EMAIL_SENT, &w, u->user_id, NULL);
    } else {
        ew_notification_email_sent m = {.user_id = t->user_id,
                                        .email = t->email,
                                        .template_name = "password_reset",
                                        .message_id = msg};
        rc = ew_ctx_publish(ctx, EW_T_NOTIFICATION_EMAIL_SENT, &m, t->user_id, NULL);
    }
    return rc ? EW_HANDLER_RETRY : EW_HANDLER_OK;
}

/* analytics-service: counts the new user. */
static ew_handler_result analytics_service(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    pause_a_little(e);
    const ew_user_registered *u = ew_user_registered_data(ev);
    if (atomic_load(&e->analytics_mode) == SILENT) return EW_HANDLER_OK;
    ew_analytics_user_tracked a = {.user_id = u->user_id, .event = "user.registered"};
    return ew_ctx_publish(ctx, EW_T_ANALYTICS_USER_TRACKED, &a, u->user_id, NULL) ? EW_HANDLER_RETRY
                                                                                  : EW_HANDLER_OK;
}

/* Every service holding user data: deletes it and confirms (except the silent one). */
static ew_handler_result data_owner(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    struct owner *o = ud;
    const ew_user_deletion_requested *r = ew_user_deletion_requested_data(ev);
    if (o->e->silent_service && strcmp(o->e->silent_service, o->name) == 0) return EW_HANDLER_OK;
    ew_user_data_deleted d = {
        .request_id = r->request_id, .user_id = r->user_id, .service = o->name, .records = 3};
    return ew_ctx_publish(ctx, EW_T_USER_DATA_DELETED, &d, r->user_id, NULL) ? EW_HANDLER_RETRY
                                                                             : EW_HANDLER_OK;
}

/* auth-service: a single-use token with an expiry for every reset request. */
static ew_handler_result auth_service(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    env *e = ud;
    const ew_password_reset_requested *r = ew_password_reset_requested_data(ev);
    char expires[EW_TIME_LEN + 1];
    int ttl = atomic_load(&e->token_ttl_ms);
    ew_time_format(ew_now_us() + (int64_t)(ttl ? ttl : 60000) * 1000, expires);
    ew_password_reset_token_issued t = {.request_id = r->request_id,
                                        .user_id = r->user_id,
                                        .email = r->email,
                                        .token = "s3cr3t-t0k3n",
                                        .expires_at = expires};
    return ew_ctx_publish(ctx, EW_T_PASSWORD_RESET_TOKEN_ISSUED, &t, r->user_id, NULL)
               ? EW_HANDLER_RETRY
               : EW_HANDLER_OK;
}

/* The services holding user data in the reference system: the deletion's participants. */
static const char *const names[] = {"auth-service", "user-service", "notification-service",
                                    "analytics-service", "export-service"};

static void subscribe_services(env *e, ew_bus *bus)
{
    subscribe(bus, "user.registered", user_service, e, "user-service");
    subscribe(bus, "user.registered", notification_service, e, "notification-service");
    subscribe(bus, "password.reset_token_issued", notification_service, e, "notification-service");
    subscribe(bus, "user.registered", analytics_service, e, "analytics-service");
    subscribe(bus, "password.reset_requested", auth_service, e, "auth-service");
    for (int i = 0; i < 5; i++) {
        e->owners[i] = (struct owner){e, names[i]};
        char group[64];
        snprintf(group, sizeof group, "%s", names[i]);
        ew_error err = {0};
        ew_subscribe_opts o = {.group = group, .name = "delete-user-data"};
        if (ew_bus_subscribe(bus, "user.deletion_requested", data_owner, &e->owners[i], &o, &err))
            fail_msg("%s", err.msg);
    }
}

static void reference_up(env *e, const ew_user_registration_opts *ro,
                         const ew_user_deletion_opts *dopt, const ew_password_reset_opts *po)
{
    open_bus(e);
    subscribe_services(e, e->bus);
    e->eng = open_engine(e, e->store);
    ew_error err = {0};
    ew_user_deletion_opts d = dopt ? *dopt : (ew_user_deletion_opts){0};
    if (!d.services) {
        d.services = names;
        d.nservices = sizeof names / sizeof names[0];
    }
    if (ew_saga_add_user_registration(e->eng, ro, &err) ||
        ew_saga_add_user_deletion(e->eng, &d, &err) || ew_saga_add_password_reset(e->eng, po, &err))
        fail_msg("%s", err.msg);
    start(e, e->eng);
    bus_start(e);
}

static void registration_completes(env *e)
{
    reference_up(e, NULL, NULL, NULL);
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_saga_info in = wait_saga(e, EW_SAGA_USER_REGISTRATION, user, EW_SAGA_COMPLETED, NULL);
    assert_string_equal(in.steps_done, "[\"registration\",\"profile\",\"preferences\","
                                       "\"welcome_email\",\"analytics\"]");
    char want[80];
    snprintf(want, sizeof want, "{\"user_id\":\"%s\"}", user); /* no personal data */
    assert_string_equal(in.data, want);
    assert_int_equal(rec_wait(&e->rec, "saga.completed", 1, WAIT_MS), 1);
    assert_int_equal(rec_count(&e->rec, "user.deactivated"), 0);
    ew_saga_info_release(&in);
}
BOTH(registration_completes)

static void registration_profile_failure_deactivates(env *e)
{
    atomic_store(&e->profile_mode, FAIL);
    reference_up(e, NULL, NULL, NULL);
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_saga_info in = wait_saga(e, EW_SAGA_USER_REGISTRATION, user, EW_SAGA_COMPENSATED, "profile");
    assert_int_equal(rec_wait(&e->rec, "user.deactivated", 1, WAIT_MS), 1);
    ew_event *d = rec_get(&e->rec, "user.deactivated", 0);
    assert_string_equal(ew_user_deactivated_data(d)->user_id, user);
    assert_string_equal(ew_user_deactivated_data(d)->reason,
                        "registration did not complete: Step profile failed "
                        "(user.profile_creation_failed): profiles are down");
    ew_event_unref(d);
    assert_int_equal(rec_wait(&e->rec, "saga.failed", 1, WAIT_MS), 1);
    ew_saga_info_release(&in);
}
BOTH(registration_profile_failure_deactivates)

/* Analytics never answers: the deadline passes and the registration is undone. */
static void registration_times_out(env *e)
{
    atomic_store(&e->analytics_mode, SILENT);
    ew_user_registration_opts ro = {.timeout_ms = 500};
    reference_up(e, &ro, NULL, NULL);
    char user[EW_UUID_LEN + 1];
    ew_event_unref(register_user(e, user));
    ew_saga_info in = wait_saga(e, EW_SAGA_USER_REGISTRATION, user, EW_SAGA_TIMED_OUT, "analytics");
    assert_int_equal(rec_wait(&e->rec, "user.deactivated", 1, WAIT_MS), 1);
    assert_int_equal(rec_wait(&e->rec, "saga.timed_out", 1, WAIT_MS), 1);
    ew_event *t = rec_get(&e->rec, "saga.timed_out", 0);
    assert_int_equal(ew_saga_timed_out_data(t)->pending.count, 1);
    assert_string_equal(ew_saga_timed_out_data(t)->pending.items[0], "analytics");
    ew_event_unref(t);
    ew_saga_info_release(&in);
}
BOTH(registration_times_out)

static void request_deletion(env *e, char request[EW_UUID_LEN + 1], char user[EW_UUID_LEN + 1])
{
    ew_uuid7(request);
    ew_uuid7(user);
    ew_user_deletion_requested r = {.request_id = request, .user_id = user, .requested_by = "ada"};
    publish(e, EW_T_USER_DELETION_REQUESTED, &r, user, NULL);
}

static void deletion_completes(env *e)
{
    reference_up(e, NULL, NULL, NULL);
    char request[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1];
    request_deletion(e, request, user);
    ew_saga_info in = wait_saga(e, EW_SAGA_USER_DELETION, request, EW_SAGA_COMPLETED, NULL);
    assert_int_equal(rec_wait(&e->rec, "user.deletion_completed", 1, WAIT_MS), 1);
    ew_event *c = rec_get(&e->rec, "user.deletion_completed", 0);
    assert_string_equal(ew_user_deletion_completed_data(c)->request_id, request);
    assert_int_equal(ew_user_deletion_completed_data(c)->services.count, 5);
    ew_event_unref(c);
    assert_int_equal(rec_count(&e->rec, "user.deletion_requested"), 1);
    trans_log l = transitions(e, in.id);
    assert_int_equal(l.n, 6); /* the start, four confirmations, the fifth that completes it */
    assert_non_null(strstr(l.text, "(4 of 5 confirmed)"));
    ew_saga_info_release(&in);
}
BOTH(deletion_completes)

/* export-service never confirms: asked again twice, then escalated, naming it. */
static void deletion_retries_then_escalates(env *e)
{
    e->silent_service = "export-service";
    ew_user_deletion_opts o = {.retries = 2, .step_timeout_ms = 250};
    reference_up(e, NULL, &o, NULL);
    char request[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1];
    request_deletion(e, request, user);
    ew_saga_info in = wait_saga(e, EW_SAGA_USER_DELETION, request, EW_SAGA_FAILED, "confirmations");
    assert_string_equal(in.reason, "No confirmation from export-service after 3 requests.");
    assert_int_equal(rec_wait(&e->rec, "user.deletion_failed", 1, WAIT_MS), 1);
    ew_event *f = rec_get(&e->rec, "user.deletion_failed", 0);
    const ew_user_deletion_failed *d = ew_user_deletion_failed_data(f);
    assert_int_equal(d->missing.count, 1);
    assert_string_equal(d->missing.items[0], "export-service");
    assert_string_equal(d->request_id, request);
    ew_event_unref(f);
    assert_int_equal(rec_count(&e->rec, "user.deletion_requested"), 3);
    ew_event *again = rec_get(&e->rec, "user.deletion_requested", 1);
    assert_string_equal(ew_user_deletion_requested_data(again)->request_id, request);
    ew_event_unref(again);
    trans_log l = transitions(e, in.id);
    assert_non_null(strstr(l.text, "attempt 2. Issued user.deletion_requested. Asked again: "
                                   "export-service had not confirmed."));
    assert_int_equal(rec_count(&e->rec, "user.deletion_completed"), 0);
    ew_saga_info_release(&in);
}
BOTH(deletion_retries_then_escalates)

static void request_reset(env *e, char request[EW_UUID_LEN + 1], char user[EW_UUID_LEN + 1])
{
    ew_uuid7(request);
    ew_uuid7(user);
    ew_password_reset_requested r = {
        .request_id = request, .user_id = user, .email = "ada@example.com"};
    publish(e, EW_T_PASSWORD_RESET_REQUESTED, &r, user, NULL);
}

static void password_reset_completes(env *e)
{
    reference_up(e, NULL, NULL, NULL);
    char request[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1];
    request_reset(e, request, user);
    ew_saga_info in = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_RUNNING, "reset");
    assert_int_equal(rec_wait(&e->rec, "password.reset_token_issued", 1, WAIT_MS), 1);
    ew_event *t = rec_get(&e->rec, "password.reset_token_issued", 0);
    int64_t expires = 0;
    assert_int_equal(ew_time_parse(ew_password_reset_token_issued_data(t)->expires_at, &expires),
                     0);
    assert_int_equal(in.deadline_us, expires); /* the token's expiry is the deadline */
    assert_null(strstr(in.data, "s3cr3t"));    /* the token is not kept */
    ew_event_unref(t);
    ew_saga_info_release(&in);
    ew_password_reset_completed c = {.request_id = request, .user_id = user};
    publish(e, EW_T_PASSWORD_RESET_COMPLETED, &c, user, NULL);
    in = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_COMPLETED, NULL);
    assert_string_equal(in.steps_done, "[\"token\",\"email\",\"reset\"]");
    assert_int_equal(rec_count(&e->rec, "password.reset_expired"), 0);
    ew_saga_info_release(&in);
}
BOTH(password_reset_completes)

/* Nobody uses the token: when it expires the saga times out and says so. */
static void password_reset_expires(env *e)
{
    atomic_store(&e->token_ttl_ms, 300);
    reference_up(e, NULL, NULL, NULL);
    char request[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1];
    request_reset(e, request, user);
    ew_saga_info in = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_TIMED_OUT, "reset");
    assert_int_equal(rec_wait(&e->rec, "password.reset_expired", 1, WAIT_MS), 1);
    ew_event *x = rec_get(&e->rec, "password.reset_expired", 0);
    assert_string_equal(ew_password_reset_expired_data(x)->request_id, request);
    assert_string_equal(ew_event_source(x), "saga-test");
    ew_event_unref(x);
    /* a late confirmation changes nothing */
    ew_password_reset_completed c = {.request_id = request, .user_id = user};
    publish(e, EW_T_PASSWORD_RESET_COMPLETED, &c, user, NULL);
    ew_error err = {0};
    assert_int_equal(ew_bus_wait_for_events(e->bus, WAIT_MS, &err), 0);
    ew_saga_info after = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_TIMED_OUT, "reset");
    assert_int_equal(after.version, in.version);
    ew_saga_info_release(&after);
    ew_saga_info_release(&in);
}
BOTH(password_reset_expires)

/* auth-service refuses an expired token itself: the saga fails. */
static void password_reset_expired_event_fails(env *e)
{
    reference_up(e, NULL, NULL, NULL);
    char request[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1];
    request_reset(e, request, user);
    ew_saga_info in = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_RUNNING, "reset");
    ew_saga_info_release(&in);
    ew_password_reset_expired x = {.request_id = request, .user_id = user};
    publish(e, EW_T_PASSWORD_RESET_EXPIRED, &x, user, NULL);
    in = wait_saga(e, EW_SAGA_PASSWORD_RESET, request, EW_SAGA_FAILED, "reset");
    assert_string_equal(in.reason, "Step reset failed (password.reset_expired).");
    ew_saga_info_release(&in);
}
BOTH(password_reset_expired_event_fails)

/* ---- a process killed mid-flow (SQLite bus)
 * ------------------------------------------------------ */

#define KILL_USERS 20

/* The child: the services and an engine with the registration saga on the SQLite bus; writes a
 * byte on ready when it consumes, then runs until it is killed. Never returns. */
static void child_main(const char *url, int ready)
{
    env *e = env_new(0);
    ew_error err = {0};
    if (ew_config_set(e->cfg, "EVENT_BUS_TYPE", "sqlite", &err) ||
        ew_config_set(e->cfg, "EVENT_STORE_URL", url, &err))
        _exit(3);
    atomic_store(&e->delay_us, 20000);
    ew_store *st = NULL;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err) ||
        ew_bus_open(&e->bus, &(ew_bus_options){.config = e->cfg}, &err))
        _exit(4);
    ew_subscribe_opts o[3] = {{.group = "user-service"},
                              {.group = "notification-service"},
                              {.group = "analytics-service"}};
    ew_handler_fn fns[3] = {user_service, notification_service, analytics_service};
    for (int i = 0; i < 3; i++)
        if (ew_bus_subscribe(e->bus, "user.registered", fns[i], e, &o[i], &err)) _exit(5);
    ew_saga_engine *eng = NULL;
    ew_saga_engine_options eo = {.bus = e->bus, .store = st, .config = e->cfg, .concurrency = 2};
    if (ew_saga_engine_open(&eng, &eo, &err) || ew_saga_add_user_registration(eng, NULL, &err) ||
        ew_saga_engine_start(eng, &err) || ew_bus_start(e->bus, &err))
        _exit(6);
    if (write(ready, "r", 1) != 1) _exit(7);
    for (;;)
        pause();
}

static pid_t spawn(const char *url)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        child_main(url, p[1]);
    }
    close(p[1]);
    char c;
    assert_int_equal(read(p[0], &c, 1), 1); /* the child's groups exist: publish now */
    close(p[0]);
    return pid;
}

static void killed_engine_resumes(void **state)
{
    env *e = *state;
    pid_t a = spawn(e->url);
    /* auth-service: registers the users, on the bus of the file */
    ew_config *cfg = NULL;
    ew_error err = {0};
    assert_int_equal(ew_config_dup(&cfg, e->cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "sqlite", &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err), 0);
    ew_bus *bus = NULL;
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), 0);
    ew_config_free(cfg);
    assert_int_equal(ew_bus_start(bus, &err), 0);
    char users[KILL_USERS][EW_UUID_LEN + 1];
    ew_event *evs[KILL_USERS];
    for (int i = 0; i < KILL_USERS; i++) {
        static const char *roles[] = {"user"};
        ew_uuid7(users[i]);
        ew_user_registered d = {.user_id = users[i],
                                .email = "ada@example.com",
                                .username = "ada",
                                .roles = {roles, 1}};
        assert_int_equal(
            ew_user_registered_new(&evs[i], &d,
                                   &(ew_event_attrs){.source = "auth-service", .subject = users[i]},
                                   &err),
            0);
    }
    assert_int_equal(ew_bus_publish_batch(bus, (const ew_event *const *)evs, KILL_USERS, &err), 0);
    for (int i = 0; i < KILL_USERS; i++)
        ew_event_unref(evs[i]);
    assert_int_equal(ew_bus_close(bus), 0);

    /* mid-flow: the services answer slowly (20 ms a handler); kill once the first saga has
     * completed, while the others run */
    int64_t until = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (count_sagas(e, EW_SAGA_USER_REGISTRATION, EW_SAGA_COMPLETED) < 1 && ew_mono_ns() < until)
        usleep(2000);
    assert_int_equal(kill(a, SIGKILL), 0);
    assert_int_equal(waitpid(a, NULL, 0), a);
    /* what the kill left, read after it: some done, some started and not done */
    size_t done = count_sagas(e, EW_SAGA_USER_REGISTRATION, EW_SAGA_COMPLETED);
    size_t running = count_sagas(e, EW_SAGA_USER_REGISTRATION, EW_SAGA_RUNNING);
    if (done < 1 || running < 1 || done >= KILL_USERS)
        fail_msg("the kill did not come mid-flow: %zu of %d completed, %zu running", done,
                 KILL_USERS, running);

    pid_t b = spawn(e->url);
    int64_t end = ew_mono_ns() + 15 * 1000000000LL;
    while (count_sagas(e, EW_SAGA_USER_REGISTRATION, EW_SAGA_COMPLETED) < KILL_USERS &&
           ew_mono_ns() < end)
        usleep(20000);
    /* the last transitions' events leave the outbox just after their commits */
    while (query_int(e, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL) &&
           ew_mono_ns() < end)
        usleep(20000);
    kill(b, SIGKILL);
    waitpid(b, NULL, 0);
    assert_int_equal(count_sagas(e, EW_SAGA_USER_REGISTRATION, EW_SAGA_COMPLETED), KILL_USERS);
    for (int i = 0; i < KILL_USERS; i++) {
        ew_saga_info in =
            wait_saga(e, EW_SAGA_USER_REGISTRATION, users[i], EW_SAGA_COMPLETED, NULL);
        /* each of its five events applied once, whatever was delivered again */
        assert_int_equal(query_int(e,
                                   "SELECT count(*) FROM event_store.saga_consumed WHERE "
                                   "saga_id = $1",
                                   in.id),
                         5);
        ew_saga_info_release(&in);
    }
    assert_int_equal(query_int(e, "SELECT count(*) FROM event_store.saga_parked", NULL), 0);
    assert_int_equal(
        query_int(e, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL), 0);
}

static const struct CMUnitTest tests[] = {
    CASES(happy_path),
    CASES(failure_compensates_in_reverse),
    CASES(failure_without_compensation),
    CASES(step_deadline_fires),
    CASES(saga_deadline_fires),
    CASES(duplicates_apply_once),
    CASES(concurrent_events_serialise),
    CASES(conflict_is_retried),
    CASES(two_engines_fire_a_deadline_once),
    CASES(early_events_wait_for_their_instance),
    CASES(new_engine_continues),
    CASES(disabled_by_configuration),
    CASES(declarations_are_checked),
    CASES(registration_completes),
    CASES(registration_profile_failure_deactivates),
    CASES(registration_times_out),
    CASES(deletion_completes),
    CASES(deletion_retries_then_escalates),
    CASES(password_reset_completes),
    CASES(password_reset_expires),
    CASES(password_reset_expired_event_fails),
    cmocka_unit_test_setup_teardown(killed_engine_resumes, setup_sqlite, teardown),
};

EW_TEST_MAIN(tests)
