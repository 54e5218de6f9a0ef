/* Tests of the SQLite bus beyond the conformance suite: processes sharing one file with a consumer
 * killed mid-stream and the store's inbox making each effect happen once, group positions across
 * restarts, the lease handed over at close, taken over and given back, and kept while the
 * consumer waits (a full window, a dead letter sink that is down), group commit, follow-up events
 * written in the inbox's transaction, bad rows, bad settings; and the store functions the bus
 * added (record, scan, data version, groups), those that PostgreSQL has on it too.
 * ew-fixture: postgres */
#ifdef EW_HAVE_SQLITE_BUS
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "support/case_db.h"
#include "eventwire/clock.h"
#include "eventwire/store.h"
#include "store/batch.h"
#include "store/store_bus.h"

#define WAIT_MS 60000

/* ---- a folder and a database per case ------------------------------------------------------- */

typedef struct env {
    char dir[64];
    char path[128]; /* the database file */
    char url[160];  /* sqlite:path */
} env;

static int setup(void **state)
{
    env *e = calloc(1, sizeof *e);
    strcpy(e->dir, "/tmp/ew-sqbus-XXXXXX");
    if (!mkdtemp(e->dir)) return -1;
    snprintf(e->path, sizeof e->path, "%s/bus.db", e->dir);
    snprintf(e->url, sizeof e->url, "sqlite:%s", e->path);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env *e = *state;
    ew_test_rmtree(e->dir);
    free(e);
    return 0;
}

static ew_config *config(const env *e, const char *service)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    if (ew_config_set(cfg, "EVENT_BUS_TYPE", "sqlite", &err) ||
        ew_config_set(cfg, "EVENT_STORE_URL", e->url, &err) ||
        ew_config_set(cfg, "SERVICE_NAME", service, &err) ||
        ew_config_set(cfg, "EVENT_HANDLER_BACKOFF_MS", "2", &err) ||
        ew_config_set(cfg, "EVENT_HANDLER_BACKOFF_MAX_MS", "10", &err))
        fail_msg("%s", err.msg);
    return cfg;
}

/* A bus on the case's file; NULL (and *rc) when it fails and rc is given. */
static ew_bus *open_bus(const env *e, const char *service, ew_bus_options *opts)
{
    ew_config *cfg = config(e, service);
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = cfg;
    ew_bus *bus = NULL;
    ew_error err = {0};
    if (ew_bus_open(&bus, &o, &err)) fail_msg("ew_bus_open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

static ew_store *open_store(const char *url, const ew_config *cfg)
{
    ew_store *s = NULL;
    ew_error err = {0};
    if (ew_store_open(&s, &(ew_store_options){.config = cfg, .url = url}, &err))
        fail_msg("ew_store_open(%s): %s", url, err.msg);
    return s;
}

/* One integer from the file through a connection of its own (readers never wait in WAL mode). */
static int64_t sql_int(const env *e, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(e->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* One text value (into out) the same way. */
static void sql_text(const env *e, const char *sql, char *out, size_t n)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(e->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    const unsigned char *v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    snprintf(out, n, "%s", v ? (const char *)v : "");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void exec_sql(ew_store *s, const char *sql)
{
    ew_txn *t;
    ew_error err = {0};
    if (ew_store_begin(s, &t, &err) || ew_txn_exec(t, sql, NULL, 0, NULL, &err) ||
        ew_txn_commit(t, &err))
        fail_msg("%s: %s", sql, err.msg);
}

static void wait_until(const env *e, const char *sql, int64_t want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000, v;
    while ((v = sql_int(e, sql)) != want) {
        if (ew_mono_ns() > end)
            fail_msg("%s: %lld, not %lld, after %d ms", what, (long long)v, (long long)want,
                     WAIT_MS);
        usleep(5000);
    }
}

static void wait_count(atomic_int *n, int want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(n) < want) {
        if (ew_mono_ns() > end) fail_msg("%s: %d of %d", what, atomic_load(n), want);
        usleep(2000);
    }
}

#define HEAD "SELECT coalesce(max(position), 0) FROM events"

/* ---- a consumer of another connection learns of a commit promptly ------------------------- */

typedef struct pickup {
    atomic_int n;
    _Atomic int64_t at_ns;
} pickup;

static ew_handler_result picked_up(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ev, (void)ctx;
    pickup *p = ud;
    atomic_store(&p->at_ns, ew_mono_ns());
    atomic_fetch_add(&p->n, 1);
    return EW_HANDLER_OK;
}

/* An idle consumer of another bus (its own connection, as in another process: the publisher's
 * kick does not reach it) handles each event soon after its publish returns: it is woken by the
 * store's signal file, not by its 100 ms timer (FALLBACK_MS). Of 20 publishes 100 ms apart, the
 * median pickup must be well under that timer; lost wake-ups would show as ~50-100 ms each. */
static void another_connection_picks_up_promptly(void **state)
{
    enum { N = 20 };
    env *e = *state;
    pickup p = {0};
    ew_bus *c = open_bus(e, "consumer", NULL);
    tb_subscribe(c, "user.logged_in", picked_up, &p, NULL);
    tb_start(c);
    ew_bus *pub = open_bus(e, "publisher", NULL);
    tb_start(pub);
    int64_t lat[N];
    for (int i = 0; i < N; i++) {
        usleep(100000); /* the consumer is idle again */
        int64_t sent = ew_mono_ns();
        tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_IN, NULL));
        wait_count(&p.n, i + 1, "pickup");
        lat[i] = atomic_load(&p.at_ns) - sent;
        if (lat[i] < 0) lat[i] = 0;
    }
    for (int i = 1; i < N; i++) /* insertion sort */
        for (int j = i; j > 0 && lat[j - 1] > lat[j]; j--) {
            int64_t x = lat[j];
            lat[j] = lat[j - 1];
            lat[j - 1] = x;
        }
    print_message("pickup from another connection: median %.2f ms, max %.2f ms\n", lat[N / 2] / 1e6,
                  lat[N - 1] / 1e6);
    assert_true(lat[N / 2] < 50 * 1000000LL); /* the publish (its sync included) and the pickup */
    tb_close(pub);
    tb_close(c);
}

/* ---- three processes, one file, one group, a consumer killed -------------------------------- */

enum { KILL_N = 400 };

/* The handler's effect: a row of its own in the inbox's transaction, so that the effect and the
 * inbox's record commit together. No unique key: a second effect of one event would show. */
static ew_handler_result effect(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ew_txn *t = ew_ctx_txn(ctx);
    if (!t) {
        ew_ctx_set_error(ctx, "no inbox transaction");
        return EW_HANDLER_FAIL;
    }
    char pid[24];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    const char *p[2] = {ew_event_id(ev), pid};
    ew_error err = {0};
    if (ew_txn_exec(t, "INSERT INTO event_store.effects (event_id, pid) VALUES ($1, $2)", p, 2,
                    NULL, &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_RETRY;
    }
    usleep(1000); /* slow enough to be killed mid-stream */
    return EW_HANDLER_OK;
}

/* A consumer process of group "effects" with the store's inbox on the bus's file. It says when it
 * has subscribed (a byte on ready), and closes its bus and exits 0 when ctl is closed. */
static pid_t spawn_effects_consumer(const env *e, int *ctl)
{
    int ready[2], c[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(c), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(c[1]);
        ew_config *cfg = config(e, "consumer");
        ew_store *st = NULL;
        ew_bus *bus = NULL;
        ew_error err = {0};
        if (ew_store_open(&st, &(ew_store_options){.config = cfg}, &err)) _exit(3);
        ew_bus_options o = {.config = cfg, .inbox = ew_store_inbox(st)};
        if (ew_bus_open(&bus, &o, &err) ||
            ew_bus_subscribe(bus, "user.registered", effect, NULL,
                             &(ew_subscribe_opts){.group = "effects", .name = "h"}, &err) ||
            ew_bus_start(bus, &err))
            _exit(4);
        char b = 1;
        if (write(ready[1], &b, 1) != 1) _exit(5);
        while (read(c[0], &b, 1) > 0) {
        }
        int rc = ew_bus_close(bus);
        ew_store_close(st);
        ew_config_free(cfg);
        _exit(rc == 0 ? 0 : 6);
    }
    close(ready[1]);
    close(c[0]);
    char b;
    assert_int_equal(read(ready[0], &b, 1), 1);
    close(ready[0]);
    *ctl = c[1];
    return pid;
}

static pid_t spawn_publisher(const env *e, int n)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ew_config *cfg = config(e, "publisher");
        ew_bus *bus = NULL;
        ew_error err = {0};
        if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) _exit(3);
        for (int i = 0; i < n; i++) {
            char id[EW_UUID_LEN + 1];
            ew_uuid7(id);
            const char *roles[] = {"user"};
            ew_user_registered d = {
                .user_id = id, .email = "a@example.com", .username = "ann", .roles = {roles, 1}};
            ew_event *ev;
            if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "t", .subject = id},
                                       &err) ||
                ew_bus_publish(bus, ev, &err))
                _exit(4);
            ew_event_unref(ev);
        }
        _exit(ew_bus_close(bus) == 0 ? 0 : 5);
    }
    return pid;
}

static void wait_exit(pid_t pid, int code)
{
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), code);
}

/* The pid in an owner name host/pidns/pid/random. */
static pid_t owner_pid(const char *owner)
{
    const char *p = strchr(owner, '/');
    p = p ? strchr(p + 1, '/') : NULL;
    return p ? (pid_t)atol(p + 1) : 0;
}

static void three_processes_one_killed_effects_once(void **state)
{
    env *e = *state;
    ew_store *st = open_store(e->url, NULL);
    exec_sql(st, "CREATE TABLE event_store.effects (event_id TEXT NOT NULL, pid INTEGER NOT NULL)");
    ew_store_close(st); /* the parent holds nothing across fork */

    int ctl_a, ctl_b;
    pid_t a = spawn_effects_consumer(e, &ctl_a);
    pid_t b = spawn_effects_consumer(e, &ctl_b);
    pid_t p = spawn_publisher(e, KILL_N);
    wait_until(e, "SELECT min(count(*), 100) FROM effects", 100, "effects before the kill");

    /* Kill the one that holds the lease, mid-stream. (Read through a connection of our own:
     * opening a store would wait for the write lock that the handlers keep taking.) */
    char owner[EW__STORE_OWNER_MAX];
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'effects'", owner, sizeof owner);
    pid_t active = owner_pid(owner), survivor = active == a ? b : a;
    int ctl_survivor = active == a ? ctl_b : ctl_a;
    assert_true(active == a || active == b);
    assert_true(sql_int(e, "SELECT count(DISTINCT event_id) FROM effects") < KILL_N);
    kill(active, SIGKILL);
    wait_exit(p, 0);
    int st_killed;
    assert_int_equal(waitpid(active, &st_killed, 0), active);
    assert_true(WIFSIGNALED(st_killed));
    close(active == a ? ctl_a : ctl_b);

    /* The other takes over (its holder's process is gone: at once) and finishes the stream: every
     * event has its effect, once, and the group's position reaches the end of the log. */
    wait_until(e, "SELECT count(DISTINCT event_id) FROM effects", KILL_N, "distinct effects");
    wait_until(e,
               "SELECT (SELECT position FROM bus_groups WHERE group_name = 'effects') = (" HEAD ")",
               1, "group position at the head");
    assert_int_equal(sql_int(e, "SELECT count(*) FROM effects"), KILL_N);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM processed_events"), KILL_N);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events"), KILL_N);
    st = open_store(e->url, NULL);
    ew__store_group g;
    ew_error err = {0};
    assert_int_equal(ew__store_group_get(st, "effects", &g, &err), 0);
    assert_int_equal(owner_pid(g.owner), survivor);

    close(ctl_survivor); /* a graceful close gives the lease up */
    wait_exit(survivor, 0);
    assert_int_equal(ew__store_group_get(st, "effects", &g, &err), 0);
    assert_string_equal(g.owner, "");
    assert_int_equal(g.position, KILL_N);
    ew_store_close(st);
}

/* ---- positions and leases across restarts --------------------------------------------------- */

static ew_handler_result count_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

static void publish_n(ew_bus *bus, int n, ew_type_id type)
{
    for (int i = 0; i < n; i++)
        tb_publish_owned(bus, tb_event(type, NULL));
}

static void group_positions_survive_restart(void **state)
{
    env *e = *state;
    ew_bus *pub = open_bus(e, "publisher", NULL);
    tb_start(pub);
    publish_n(pub, 5, EW_T_USER_LOGGED_IN); /* before the group exists: not its events */

    atomic_int first = 0;
    ew_bus *c = open_bus(e, "svc", NULL);
    tb_subscribe(c, "user.logged_in", count_fn, &first, NULL);
    tb_start(c);
    publish_n(pub, 50, EW_T_USER_LOGGED_IN);
    wait_count(&first, 50, "first consumer");
    tb_close(c);
    ew_store *st = open_store(e->url, NULL);
    ew__store_group g;
    ew_error err = {0};
    assert_int_equal(ew__store_group_get(st, "svc", &g, &err), 0);
    assert_int_equal(g.position, 55);
    assert_string_equal(g.owner, "");

    /* Published while nobody consumes; the next consumer starts where the first stopped. */
    publish_n(pub, 30, EW_T_USER_LOGGED_IN);
    publish_n(pub, 10, EW_T_USER_LOGGED_OUT); /* not subscribed: skipped, position moves on */
    atomic_int second = 0;
    c = open_bus(e, "svc", NULL);
    tb_subscribe(c, "user.logged_in", count_fn, &second, NULL);
    tb_start(c);
    wait_until(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'", 95,
               "second consumer's position");
    tb_close(c);
    assert_int_equal(atomic_load(&first), 50);
    assert_int_equal(atomic_load(&second), 30);

    /* A new group starts at the head: it sees only what comes after it. */
    atomic_int fresh = 0;
    c = open_bus(e, "other", NULL);
    tb_subscribe(c, "user.logged_in", count_fn, &fresh, NULL);
    tb_start(c);
    publish_n(pub, 3, EW_T_USER_LOGGED_IN);
    wait_until(e, "SELECT position FROM bus_groups WHERE group_name = 'other'", 98,
               "new group's position");
    tb_close(c);
    assert_int_equal(atomic_load(&fresh), 3);
    tb_close(pub);
    ew_store_close(st);
}

/* Two instances of one service in one process: one holds the lease, the other stands by; closing
 * the first hands the group over at once, where it stopped. */
static void standby_takes_over_at_close(void **state)
{
    env *e = *state;
    atomic_int n1 = 0, n2 = 0;
    ew_bus *c1 = open_bus(e, "svc", NULL), *c2 = open_bus(e, "svc", NULL);
    tb_subscribe(c1, "user.logged_in", count_fn, &n1, NULL);
    tb_subscribe(c2, "user.logged_in", count_fn, &n2, NULL);
    tb_start(c1);
    tb_start(c2);
    ew_bus *pub = open_bus(e, "publisher", NULL);
    publish_n(pub, 20, EW_T_USER_LOGGED_IN);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(&n1) + atomic_load(&n2) < 20 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(atomic_load(&n1) + atomic_load(&n2), 20);
    assert_true(atomic_load(&n1) == 0 || atomic_load(&n2) == 0); /* one consumer had them all */
    bool first_active = atomic_load(&n1) > 0;
    tb_close(first_active ? c1 : c2);
    ew_bus *left = first_active ? c2 : c1;
    atomic_int *left_n = first_active ? &n2 : &n1;
    publish_n(pub, 10, EW_T_USER_LOGGED_IN);
    wait_count(left_n, 10, "the standby after the handover");
    tb_close(left);
    tb_close(pub);
    assert_int_equal(atomic_load(&n1) + atomic_load(&n2), 30);
}

/* The window of deliveries in flight wraps around (3 slots) and spans chunks of slots (1500):
 * every event once, and the position at the end of the log. */
static void in_flight_window_wraps(void **state)
{
    env *e = *state;
    static const char *const windows[] = {"3", "1500"};
    enum { N = 3000 };
    for (size_t w = 0; w < 2; w++) {
        char group[16];
        snprintf(group, sizeof group, "win%zu", w);
        ew_config *cfg = config(e, group);
        ew_error err = {0};
        assert_int_equal(ew_config_set(cfg, "EVENT_BUS_MAX_IN_FLIGHT", windows[w], &err), 0);
        ew_bus *bus = NULL;
        assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), 0);
        ew_config_free(cfg);
        atomic_int n = 0;
        tb_subscribe(bus, "user.logged_in", count_fn, &n, &(ew_subscribe_opts){.concurrency = 4});
        tb_start(bus);
        static ew_event *evs[N];
        for (int i = 0; i < N; i++)
            evs[i] = tb_event(EW_T_USER_LOGGED_IN, NULL);
        if (ew_bus_publish_batch(bus, (const ew_event *const *)evs, N, &err))
            fail_msg("publish: %s", err.msg);
        for (int i = 0; i < N; i++)
            ew_event_unref(evs[i]);
        wait_count(&n, N, "events handled");
        char sql[200];
        snprintf(sql, sizeof sql,
                 "SELECT (SELECT position FROM bus_groups WHERE group_name = '%s') = (" HEAD ")",
                 group);
        wait_until(e, sql, 1, "the group's position at the head");
        tb_close(bus);
        assert_int_equal(atomic_load(&n), N);
    }
}

/* The lease taken over by another consumer (here: by SQL, for a holder on another machine): the
 * consumer finds out at its next write (to the core, a lost connection), stands by without
 * moving the position while the other holds the lease, and takes the group back where it was
 * left once the lease is free again: every event handled, the position at the head. */
static void lease_taken_over_and_back(void **state)
{
    env *e = *state;
    atomic_int n = 0;
    ew_bus *c = open_bus(e, "svc", NULL);
    tb_subscribe(c, "user.logged_in", count_fn, &n, NULL);
    tb_start(c);
    ew_bus *pub = open_bus(e, "publisher", NULL);
    publish_n(pub, 5, EW_T_USER_LOGGED_IN);
    wait_until(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'", 5, "the position");
    char owner[EW__STORE_OWNER_MAX];
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", owner, sizeof owner);
    sql_int(e, "UPDATE bus_groups SET owner = 'elsewhere/1/1/x', "
               "lease_until = '2999-01-01T00:00:00.000000Z' WHERE group_name = 'svc' RETURNING 1");
    publish_n(pub, 5, EW_T_USER_LOGGED_IN); /* handled or not before the consumer sees it */
    usleep(1500000);                        /* past a renewal: the consumer has seen the lease go */
    /* the situation: standing by, the position not moved by the consumer that lost the lease */
    assert_int_equal(sql_int(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'"), 5);
    char now_owner[EW__STORE_OWNER_MAX];
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", now_owner,
             sizeof now_owner);
    assert_string_equal(now_owner, "elsewhere/1/1/x");
    sql_int(e, "UPDATE bus_groups SET owner = NULL, lease_until = NULL WHERE group_name = 'svc' "
               "RETURNING 1");
    publish_n(pub, 5, EW_T_USER_LOGGED_IN);
    wait_until(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'", 15,
               "the position after the lease came back");
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", now_owner,
             sizeof now_owner);
    assert_string_equal(now_owner, owner);
    tb_close(pub);
    tb_close(c);
    /* every event, at least once (those handled while the lease went are delivered again) */
    assert_true(atomic_load(&n) >= 15);
}

/* A window that stays full for longer than the lease (EVENT_BUS_MAX_IN_FLIGHT=1, a handler that
 * takes 6 s), with a second consumer of the group standing by: the consumer keeps renewing its
 * lease while it waits for room (ops->keepalive), so the standby never takes the group over and
 * the event is handled once. */
static atomic_int slow_calls;
static ew_handler_result slow_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ev, (void)ctx, (void)ud;
    if (atomic_fetch_add(&slow_calls, 1) == 0) usleep(6000000);
    return EW_HANDLER_OK;
}

static void full_window_keeps_the_lease(void **state)
{
    env *e = *state;
    atomic_store(&slow_calls, 0);
    ew_bus *c[2];
    for (int i = 0; i < 2; i++) {
        ew_config *cfg = config(e, "svc");
        ew_error err = {0};
        assert_int_equal(ew_config_set(cfg, "EVENT_BUS_MAX_IN_FLIGHT", "1", &err), 0);
        assert_int_equal(ew_bus_open(&c[i], &(ew_bus_options){.config = cfg}, &err), 0);
        ew_config_free(cfg);
        tb_subscribe(c[i], "user.logged_in", slow_fn, NULL, &(ew_subscribe_opts){.name = "h"});
        tb_start(c[i]);
    }
    wait_until(e, "SELECT owner <> '' FROM bus_groups WHERE group_name = 'svc'", 1,
               "a consumer holding the lease");
    char owner[EW__STORE_OWNER_MAX], after[EW__STORE_OWNER_MAX];
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", owner, sizeof owner);
    ew_bus *pub = open_bus(e, "publisher", NULL);
    int64_t t0 = ew_mono_ns();
    publish_n(pub, 1, EW_T_USER_LOGGED_IN);
    wait_until(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'", 1,
               "the group's position past the slow event");
    int64_t took = ew_mono_ns() - t0;
    usleep(300000); /* a moment for a second delivery to show up, were there one */
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", after, sizeof after);
    tb_close(pub);
    tb_close(c[0]);
    tb_close(c[1]);
    assert_true(took > 5000LL * 1000000); /* the situation: the window full for longer */
    assert_int_equal(atomic_load(&slow_calls), 1);
    assert_string_equal(after, owner);
}

/* ---- group commit --------------------------------------------------------------------------- */

enum { GC_THREADS = 16, GC_EACH = 50 };

typedef struct gc_arg {
    ew_bus *bus;
    atomic_int *started;
} gc_arg;

/* Each publisher logs one user in again and again, with personal data (ip_address, user_agent):
 * sealed under that user's data key, made once and then cached. (A new user per event would make
 * a data key per event, each a write to the key store that publishers wait on one at a time, so
 * that none would ever wait at the store's commit.) */
static void *gc_publisher(void *p)
{
    gc_arg *a = p;
    char user[EW_UUID_LEN + 1];
    ew_uuid7(user);
    atomic_fetch_add(a->started, 1);
    for (int i = 0; i < GC_EACH; i++) {
        ew_user_logged_in d = {
            .user_id = user, .session_id = "s", .ip_address = "192.0.2.1", .user_agent = "t"};
        ew_event *ev = NULL;
        ew_error err = {0};
        if (ew_user_logged_in_new(&ev, &d, &(ew_event_attrs){.source = TB_SERVICE, .subject = user},
                                  &err) ||
            ew_bus_publish(a->bus, ev, &err))
            fail_msg("publish: %s", err.msg);
        ew_event_unref(ev);
    }
    return NULL;
}

static void group_commit_shares_commits(void **state)
{
    env *e = *state;
    tb_log log = TB_LOG_INIT;
    ew_bus *bus = open_bus(e, "publisher", &(ew_bus_options){.log = tb_log_fn, .log_ud = &log});
    /* Hold the file's write lock while the publishers start: the first to commit waits for it,
     * and the others queue behind it, as they would behind a slow disk. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(e->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    atomic_int started = 0;
    pthread_t t[GC_THREADS];
    gc_arg a = {bus, &started};
    for (int i = 0; i < GC_THREADS; i++)
        pthread_create(&t[i], NULL, gc_publisher, &a);
    wait_count(&started, GC_THREADS, "publishers started");
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    for (int i = 0; i < GC_THREADS; i++)
        pthread_join(t[i], NULL);
    tb_close(bus);
    /* Every event is in, in fewer transactions than events: the close says how many, and the
     * events of one transaction share their recorded_at. */
    enum { N = GC_THREADS * GC_EACH };
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events"), N);
    unsigned long long events = 0, commits = 0;
    const char *line = strstr(log.text, "sqlite bus: ");
    while (line && sscanf(line, "sqlite bus: %llu events published in %llu commits", &events,
                          &commits) != 2)
        line = strstr(line + 1, "sqlite bus: ");
    assert_int_equal(events, N);
    if (!(commits >= 1 && commits < N))
        fail_msg("%llu events in %llu commits: no commit was shared", events, commits);
    assert_int_equal(sql_int(e, "SELECT count(DISTINCT recorded_at) FROM events"),
                     (int64_t)commits);
}

/* ---- follow-up events and the inbox's transaction ------------------------------------------- */

typedef struct chain {
    ew_bus *bus;
    atomic_int first, second, direct_ok, direct_fail;
} chain;

/* Handles user.registered in the store inbox's transaction (which holds the file's write lock)
 * and publishes a follow-up: the publish goes into that transaction instead of waiting for the
 * lock its own thread holds. */
static ew_handler_result chain_first(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    chain *c = ud;
    const char *p[1] = {ew_event_id(ev)};
    ew_error err = {0};
    if (ew_txn_exec(ew_ctx_txn(ctx), "INSERT INTO event_store.seen (event_id) VALUES ($1)", p, 1,
                    NULL, &err))
        return EW_HANDLER_RETRY;
    ew_user_profile_created d = {.user_id = ew_event_subject(ev), .display_name = "Ann"};
    if (ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &d, ew_event_subject(ev), &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&c->first, 1);
    return EW_HANDLER_OK;
}

static ew_handler_result chain_second(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add(&((chain *)ud)->second, 1);
    return EW_HANDLER_OK;
}

/* Publishes straight on the bus from inside the handler; the event goes into the inbox's
 * transaction, so it exists only if the handler succeeds (its data says which it will do). */
static ew_handler_result direct(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    chain *c = ud;
    const ew_user_logged_in *d = ew_user_logged_in_data(ev);
    bool fail = strcmp(d->session_id, "fail") == 0;
    ew_user_logged_out out = {.user_id = d->user_id, .session_id = d->session_id};
    ew_event *f;
    ew_error err = {0};
    if (ew_user_logged_out_new(&f, &out, &(ew_event_attrs){.source = "t", .subject = d->user_id},
                               &err) ||
        ew_bus_publish(c->bus, f, &err))
        fail_msg("publish from a handler: %s", err.msg);
    ew_event_unref(f);
    atomic_fetch_add(fail ? &c->direct_fail : &c->direct_ok, 1);
    if (fail) ew_ctx_set_error(ctx, "failing on purpose");
    return fail ? EW_HANDLER_FAIL : EW_HANDLER_OK;
}

static void follow_ups_join_the_inbox_transaction(void **state)
{
    env *e = *state;
    ew_store *st = open_store(e->url, NULL);
    exec_sql(st, "CREATE TABLE event_store.seen (event_id TEXT NOT NULL)");
    static chain c;
    memset(&c, 0, sizeof c);
    ew_bus_options o = {.inbox = ew_store_inbox(st)};
    c.bus = open_bus(e, "svc", &o);
    tb_subscribe(c.bus, "user.registered", chain_first, &c,
                 &(ew_subscribe_opts){.group = "profiles", .name = "first"});
    tb_subscribe(c.bus, "user.profile_created", chain_second, &c,
                 &(ew_subscribe_opts){.group = "mail", .name = "second"});
    tb_subscribe(c.bus, "user.logged_in", direct, &c,
                 &(ew_subscribe_opts){.group = "sessions", .name = "direct", .max_attempts = 1});
    tb_start(c.bus);
    enum { N = 20 };
    for (int i = 0; i < N; i++)
        tb_publish_owned(c.bus, tb_user_registered());
    wait_count(&c.second, N, "follow-ups handled");
    ew_handler_stats s = tb_stats(c.bus, 0);
    assert_int_equal(s.handled, N);
    assert_int_equal(s.retried, 0); /* no publish waited for the lock and failed */

    ew_user_logged_in ok = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = "ok"},
                      bad = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6e",
                             .session_id = "fail"};
    ew_event *ev;
    assert_int_equal(ew_user_logged_in_new(&ev, &ok, &(ew_event_attrs){.source = "t"}, NULL), 0);
    tb_publish_owned(c.bus, ev);
    assert_int_equal(ew_user_logged_in_new(&ev, &bad, &(ew_event_attrs){.source = "t"}, NULL), 0);
    tb_publish_owned(c.bus, ev);
    wait_count(&c.direct_ok, 1, "the handler that succeeds");
    wait_count(&c.direct_fail, 1, "the handler that fails");
    ew_memdlq *q = ew_bus_dead_letters(c.bus);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_memdlq_count(q) < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(ew_memdlq_count(q), 1);
    tb_close(c.bus);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM seen"), N);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events WHERE event_type = "
                                "'user.profile_created'"),
                     N);
    /* The failed handler's event was rolled back with its transaction. */
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events WHERE event_type = "
                                "'user.logged_out'"),
                     1);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events WHERE event_type = 'user.logged_out' "
                                "AND stream_id = '0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d'"),
                     1);
    ew_store_close(st);
}

/* ---- a worker holding its batch_store on the bus's file ------------------------------------- */

typedef struct heldw {
    const env *e;
    ew_bus *bus;
    ew_store *st; /* the subscription's batch_store, on the bus's file */
    atomic_int handled, held_before, visible_after, follow_ups;
} heldw;

/* Is the row of event id on the database (what another connection sees)? -1 for an error. No
 * cmocka asserts: this runs on a worker thread. */
static int row_visible(const env *e, const char *id)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_open_v2(e->path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM held_rows WHERE event_id = ?1", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Commits a row through the held store (the commit returns before the database commit, which
 * keeps the file's write lock), then publishes on the bus, which writes the file through a
 * connection of its own: straight from the handler (the bus finds the worker's batch) and as a
 * follow-up (the worker passes it). Each commits the hold first instead of waiting for the lock
 * its own thread keeps until the busy timeout (10 s, and then the publish fails). */
static ew_handler_result held_writer(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    heldw *h = ud;
    const char *id = ew_event_id(ev);
    const char *p[1] = {id};
    ew_txn *t;
    ew_error err = {0};
    if (ew_store_begin(h->st, &t, &err) ||
        ew_txn_exec(t, "INSERT INTO event_store.held_rows (event_id) VALUES ($1)", p, 1, NULL,
                    &err) ||
        ew_txn_commit(t, &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_FAIL;
    }
    if (row_visible(h->e, id) == 0) atomic_fetch_add(&h->held_before, 1);
    ew_user_logged_in d = {.user_id = ew_event_subject(ev), .session_id = id};
    ew_event *f;
    if (ew_user_logged_in_new(&f, &d, &(ew_event_attrs){.source = "t", .subject = d.user_id},
                              &err) ||
        ew_bus_publish(h->bus, f, &err)) {
        ew_ctx_set_error(ctx, "publish from the handler: %s", err.msg);
        return EW_HANDLER_FAIL;
    }
    ew_event_unref(f);
    if (row_visible(h->e, id) == 1) atomic_fetch_add(&h->visible_after, 1);
    ew_user_profile_created pc = {.user_id = ew_event_subject(ev), .display_name = "Ann"};
    if (ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &pc, ew_event_subject(ev), &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&h->handled, 1);
    return EW_HANDLER_OK;
}

static ew_handler_result count_follow_up(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add(&((heldw *)ud)->follow_ups, 1);
    return EW_HANDLER_OK;
}

static void held_batch_store_and_the_bus_share_the_file(void **state)
{
    env *e = *state;
    static heldw h;
    memset(&h, 0, sizeof h);
    h.e = e;
    h.st = open_store(e->url, NULL);
    exec_sql(h.st, "CREATE TABLE event_store.held_rows (event_id TEXT NOT NULL)");
    h.bus = open_bus(e, "svc", NULL);
    tb_subscribe(h.bus, "user.registered", held_writer, &h,
                 &(ew_subscribe_opts){
                     .group = "writers", .name = "held", .max_attempts = 1, .batch_store = h.st});
    tb_subscribe(h.bus, "user.profile_created", count_follow_up, &h,
                 &(ew_subscribe_opts){.group = "readers", .name = "follow-ups"});
    enum { N = 20 };
    for (int i = 0; i < N; i++) /* queued before the start: the worker takes them as one batch */
        tb_publish_owned(h.bus, tb_user_registered());
    int64_t t0 = ew_mono_ns();
    tb_start(h.bus);
    wait_count(&h.follow_ups, N, "follow-ups handled");
    assert_true(ew_mono_ns() - t0 < 8000000000LL); /* no publish waited out the busy timeout */
    /* a follow-up can be handled before the worker that published it counts its own delivery */
    ew_handler_stats s = tb_stats(h.bus, 0);
    for (int64_t end = ew_mono_ns() + 5000000000LL; s.handled < N && ew_mono_ns() < end;) {
        usleep(1000);
        s = tb_stats(h.bus, 0);
    }
    assert_int_equal(s.handled, N);
    assert_int_equal(s.dead_lettered, 0);
    assert_true(atomic_load(&h.held_before) > 0); /* the situation: commits held by the worker */
    assert_int_equal(atomic_load(&h.visible_after), N);
    tb_close(h.bus);
    ew_store_close(h.st);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM held_rows"), N);
    assert_int_equal(sql_int(e, "SELECT count(*) FROM events WHERE event_type = 'user.logged_in'"),
                     N);
}

/* ---- undecodable rows into the store's dead letter queue ------------------------------------ */

static void bad_rows_go_to_the_stores_dead_letters(void **state)
{
    env *e = *state;
    ew_store *st = open_store(e->url, NULL);
    atomic_int n = 0;
    ew_bus *bus = open_bus(e, "svc", &(ew_bus_options){.dlq = ew_store_dlq_sink(st)});
    tb_subscribe(bus, "user.registered", count_fn, &n, &(ew_subscribe_opts){.name = "h"});
    tb_start(bus);
    /* Someone writes a row with SQL that is no event. */
    exec_sql(st, "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                 "event_type, event_version, data, metadata, recorded_at) VALUES ("
                 "(SELECT coalesce(max(position), 0) + 1 FROM event_store.events), 'raw-1', "
                 "'raw', 1, 'user.registered', 1, '{\"user_id\":5}', '{\"id\":\"raw-1\"}', "
                 "'2026-01-01T00:00:00.000000Z')");
    tb_publish_owned(bus, tb_user_registered());
    wait_count(&n, 1, "the good event after the bad row");
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (sql_int(e, "SELECT count(*) FROM dead_letter_queue") < 1 && ew_mono_ns() < end)
        usleep(2000);
    tb_close(bus);
    ew_dlq_row row;
    ew_error err = {0};
    assert_int_equal(ew_store_dlq_get(st, 1, &row, &err), 0);
    assert_string_equal(row.event_id, "raw-1");
    assert_string_equal(row.event_name, "user.registered");
    assert_string_equal(row.subscriber_group, "svc");
    assert_string_equal(row.handler, "<decode>");
    assert_non_null(strstr(row.error, "at position 1"));
    assert_non_null(strstr(row.event, "\"user_id\":5"));
    ew_dlq_row_release(&row);
    ew_store_close(st);
}

/* A dead letter sink that is down until a moment, then keeps what it gets. */
typedef struct down_sink {
    int64_t until_ns; /* refuses before this (ew_mono_ns) */
    atomic_int refused, kept;
    int64_t first_refused_ns, kept_ns;
    ew_memdlq *q;
} down_sink;

static int down_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    down_sink *d = self;
    int64_t now = ew_mono_ns();
    if (now < d->until_ns) {
        if (atomic_fetch_add(&d->refused, 1) == 0) d->first_refused_ns = now;
        return ew_error_set(err, EW_EIO, "the dead letter database is down");
    }
    if (atomic_fetch_add(&d->kept, 1) == 0) d->kept_ns = now;
    ew_dlq_sink s = ew_memdlq_sink(d->q);
    return s.ops->put(s.self, dl, err);
}

/* An undecodable row while the dead letter sink is down for longer than the group's lease (5 s),
 * with a second consumer of the group standing by: the consumer waiting for the sink keeps its
 * lease meanwhile, so the standby never takes the row over, and the row is dead-lettered once —
 * then the position moves past it and the next event is handled. (Before the SQLite bus ran on
 * the consumer core its consumer renewed nothing while it waited for the sink: the standby took
 * the lease after 5 s and dead-lettered the row a second time.) */
static void bad_row_dead_lettered_once_while_the_sink_is_down(void **state)
{
    env *e = *state;
    static const ew_dlq_sink_ops down_ops = {.version = 1, .put = down_put};
    static down_sink d;
    memset(&d, 0, sizeof d);
    assert_int_equal(ew_memdlq_new(&d.q, NULL), 0);
    ew_bus_options o = {.dlq = {.ops = &down_ops, .self = &d}};
    atomic_int n1 = 0, n2 = 0;
    ew_bus *c1 = open_bus(e, "svc", &o), *c2 = open_bus(e, "svc", &o);
    tb_subscribe(c1, "user.registered", count_fn, &n1, &(ew_subscribe_opts){.name = "h"});
    tb_subscribe(c2, "user.registered", count_fn, &n2, &(ew_subscribe_opts){.name = "h"});
    tb_start(c1);
    tb_start(c2);
    wait_until(e, "SELECT owner <> '' FROM bus_groups WHERE group_name = 'svc'", 1,
               "a consumer holding the lease");
    char owner[EW__STORE_OWNER_MAX], after[EW__STORE_OWNER_MAX];
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", owner, sizeof owner);
    d.until_ns = ew_mono_ns() + 6500LL * 1000000; /* longer than LEASE_MS */
    ew_store *st = open_store(e->url, NULL);
    exec_sql(st, "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                 "event_type, event_version, data, metadata, recorded_at) VALUES ("
                 "(SELECT coalesce(max(position), 0) + 1 FROM event_store.events), 'raw-1', "
                 "'raw', 1, 'user.registered', 1, 'null', 'no event', "
                 "'2026-01-01T00:00:00.000000Z')");
    wait_count(&d.kept, 1, "the dead letter, once the sink takes it");
    ew_bus *pub = open_bus(e, "publisher", NULL);
    tb_publish_owned(pub, tb_user_registered());
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(&n1) + atomic_load(&n2) < 1 && ew_mono_ns() < end)
        usleep(2000);
    /* A second copy would come from a consumer still in the sink's back-off: up to 2 s, plus
     * the jitter (a quarter). */
    usleep(2700000);
    sql_text(e, "SELECT owner FROM bus_groups WHERE group_name = 'svc'", after, sizeof after);
    tb_close(pub);
    tb_close(c1);
    tb_close(c2);
    /* the situation: the sink refused for longer than a lease, with a standby beside */
    assert_true(atomic_load(&d.refused) >= 3);
    assert_true(d.kept_ns - d.first_refused_ns > 5000LL * 1000000);
    assert_int_equal(atomic_load(&d.kept), 1);
    assert_string_equal(after, owner); /* the lease stayed where it was */
    assert_int_equal(ew_memdlq_count(d.q), 1);
    ew_memdlq_entry de;
    assert_int_equal(ew_memdlq_get(d.q, 0, &de), 0);
    assert_string_equal(de.handler, "<decode>");
    assert_string_equal(de.transport, "sqlite position=1");
    assert_non_null(memmem(de.payload, de.payload_len, "no even", 7));
    ew_memdlq_entry_release(&de);
    assert_int_equal(atomic_load(&n1) + atomic_load(&n2), 1);
    assert_int_equal(sql_int(e, "SELECT position FROM bus_groups WHERE group_name = 'svc'"), 2);
    ew_store_close(st);
    ew_memdlq_free(d.q);
}

/* ---- settings -------------------------------------------------------------------------------- */

static void bad_store_url(void **state)
{
    env *e = *state;
    const char *bad[] = {"postgresql://localhost/events", "sqlite::memory:", "sqlite:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ew_config *cfg = config(e, "svc");
        ew_error err = {0};
        assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", bad[i], &err), 0);
        ew_bus *bus = NULL;
        assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), EW_ECONFIG);
        assert_null(bus);
        assert_non_null(strstr(err.msg, "the sqlite bus needs EVENT_STORE_URL=sqlite:PATH"));
        ew_config_free(cfg);
    }
    /* A file that cannot be made: the store's error. */
    ew_config *cfg = config(e, "svc");
    ew_error err = {0};
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", "sqlite:/proc/ew/x.db", &err), 0);
    ew_bus *bus = NULL;
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), EW_EIO);
    ew_config_free(cfg);
    /* The default: EVENT_BUS_TYPE unset means this bus. */
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", e->url, &err), 0);
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), 0);
    assert_string_equal(ew_bus_backend(bus), "sqlite");
    tb_close(bus);
    ew_config_free(cfg);
}

/* ---- the store functions the bus added ------------------------------------------------------- */

typedef struct senv {
    env fs;    /* SQLite: the folder */
    char *url; /* the store's URL */
    int pg;
    ew_store *s;
} senv;

static int setup_store_sqlite(void **state)
{
    senv *e = calloc(1, sizeof *e);
    void *fs = &e->fs;
    if (setup(&fs)) return -1;
    e->fs = *(env *)fs;
    free(fs);
    e->url = strdup(e->fs.url);
    e->s = open_store(e->url, NULL);
    *state = e;
    return 0;
}

static int setup_store_pg(void **state)
{
    senv *e = calloc(1, sizeof *e);
    char dir[64];
    if (!e || ew_test_db_create(1, "sqbus", NULL, dir, &e->url)) {
        free(e);
        return -1;
    }
    e->pg = 1;
    e->s = open_store(e->url, NULL);
    *state = e;
    return 0;
}

static int teardown_store(void **state)
{
    senv *e = *state;
    ew_store_close(e->s);
    ew_test_db_drop(e->pg, e->fs.dir, e->url);
    free(e);
    return 0;
}

static ew_event *ev_with(ew_type_id type, const char *subject)
{
    return tb_event(type, subject);
}

static void record_across_streams(void **state)
{
    senv *e = *state;
    ew_event *a1 = ev_with(EW_T_USER_LOGGED_IN, "s-1"), *b1 = ev_with(EW_T_USER_LOGGED_IN, "s-2"),
             *a2 = ev_with(EW_T_USER_LOGGED_OUT, "s-1");
    const ew_event *evs[] = {a1, b1, a2};
    ew_append_result r;
    ew_error err = {0};
    assert_int_equal(ew__store_record(e->s, evs, 3, &r, &err), 0);
    assert_int_equal(r.appended, 3);
    assert_int_equal(r.duplicates, 0);
    assert_int_equal(r.first_position, 1);
    assert_int_equal(r.last_position, 3);
    assert_int_equal(r.version, 2); /* a2, the second of s-1 */
    int64_t v;
    assert_int_equal(ew_store_stream_version(e->s, "s-1", &v, &err), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ew_store_stream_version(e->s, "s-2", &v, &err), 0);
    assert_int_equal(v, 1);

    /* Stored ids and repeats in the batch are skipped; no subject: the type's stream. */
    ew_event *c = ev_with(EW_T_USER_LOGGED_IN, "s-2");
    ew_event_attrs none = {.source = "t"};
    ew_user_logged_in d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = "x"};
    ew_event *nosub;
    assert_int_equal(ew_user_logged_in_new(&nosub, &d, &none, &err), 0);
    const ew_event *again[] = {b1, c, c, nosub};
    assert_int_equal(ew__store_record(e->s, again, 4, &r, &err), 0);
    assert_int_equal(r.appended, 2);
    assert_int_equal(r.duplicates, 2);
    assert_int_equal(r.first_position, 4);
    assert_int_equal(r.last_position, 5);
    assert_int_equal(ew_store_stream_version(e->s, "s-2", &v, &err), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ew_store_stream_version(e->s, "user.logged_in", &v, &err), 0);
    assert_int_equal(v, 1);

    /* All or none: a bad event fails the batch, naming its index. */
    ew_event *n1 = ev_with(EW_T_USER_LOGGED_IN, "s-3");
    const ew_event *with_null[] = {n1, NULL};
    assert_int_equal(ew__store_record(e->s, with_null, 2, &r, &err), EW_EINVAL);
    assert_non_null(strstr(err.msg, "event 1 of 2"));
    int64_t head;
    assert_int_equal(ew_store_head(e->s, &head, &err), 0);
    assert_int_equal(head, 5);

    /* Inside a transaction: with it, or not at all. */
    ew_txn *t;
    const ew_event *one[] = {n1};
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew__txn_record(t, one, 1, &r, &err), 0);
    assert_int_equal(r.first_position, 6);
    ew_txn_rollback(t);
    assert_int_equal(ew_store_head(e->s, &head, &err), 0);
    assert_int_equal(head, 5);
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew__txn_record(t, one, 1, &r, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_int_equal(ew_store_head(e->s, &head, &err), 0);
    assert_int_equal(head, 6);
    ew_event *list[] = {a1, b1, a2, c, nosub, n1};
    for (size_t i = 0; i < 6; i++)
        ew_event_unref(list[i]);
}

static void record_refuses_big_events(void **state)
{
    senv *e = *state;
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_MAX_BYTES", "1024", &err), 0);
    ew_store *s = open_store(e->url, cfg);
    ew_config_free(cfg);
    char big[1500];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ew_user_logged_in d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = big};
    ew_event *ok = ev_with(EW_T_USER_LOGGED_IN, NULL), *huge;
    assert_int_equal(ew_user_logged_in_new(&huge, &d, &(ew_event_attrs){.source = "t"}, &err), 0);
    const ew_event *evs[] = {ok, huge};
    assert_int_equal(ew__store_record(s, evs, 2, NULL, &err), EW_ETOOBIG);
    assert_non_null(strstr(err.msg, "event 1 of 2"));
    int64_t head;
    assert_int_equal(ew_store_head(s, &head, &err), 0);
    assert_int_equal(head, 0);
    ew_event_unref(ok);
    ew_event_unref(huge);
    ew_store_close(s);
}

static void groups_and_leases(void **state)
{
    senv *e = *state;
    ew_error err = {0};
    ew_event *evs[3];
    for (int i = 0; i < 3; i++)
        evs[i] = ev_with(EW_T_USER_LOGGED_IN, NULL);
    assert_int_equal(ew__store_record(e->s, (const ew_event *const *)evs, 3, NULL, &err), 0);
    for (int i = 0; i < 3; i++)
        ew_event_unref(evs[i]);

    ew__store_group g;
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), EW_ENOTFOUND);
    assert_int_equal(ew__store_group_open(e->s, "g", 0, &g, &err), 0);
    assert_int_equal(g.position, 3); /* at the head */
    assert_string_equal(g.owner, "");
    assert_int_equal(ew__store_group_open(e->s, "g", 1, &g, &err), 0);
    assert_int_equal(g.position, 3); /* it exists: unchanged */
    assert_int_equal(ew__store_group_open(e->s, "replay", 1, &g, &err), 0);
    assert_int_equal(g.position, 0);
    assert_int_equal(ew__store_group_open(e->s, "bad name", 0, &g, &err), EW_EINVAL);

    int held = -1;
    assert_int_equal(ew__store_group_lease(e->s, "nope", "a", NULL, 5000, &held, &err),
                     EW_ENOTFOUND);
    assert_int_equal(ew__store_group_lease(e->s, "g", "a", NULL, 5000, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_lease(e->s, "g", "b", NULL, 5000, &held, &err), 0);
    assert_int_equal(held, 0);
    assert_int_equal(ew__store_group_commit(e->s, "g", "b", 9, 5000, &held, &err), 0);
    assert_int_equal(held, 0); /* not b's: nothing changes */
    assert_int_equal(ew__store_group_commit(e->s, "g", "a", 2, 5000, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), 0);
    assert_int_equal(g.position, 3); /* never backwards */
    assert_string_equal(g.owner, "a");
    assert_true(g.lease_until_us > ew_now_us());
    assert_int_equal(ew__store_group_commit(e->s, "g", "a", 7, 5000, &held, &err), 0);
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), 0);
    assert_int_equal(g.position, 7);

    /* b knows a is dead: it takes the lease from a by name. */
    assert_int_equal(ew__store_group_lease(e->s, "g", "b", "a", 5000, &held, &err), 0);
    assert_int_equal(held, 1);
    /* Given up: free for anyone. */
    assert_int_equal(ew__store_group_commit(e->s, "g", "b", 8, 0, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), 0);
    assert_string_equal(g.owner, "");
    assert_int_equal(g.lease_until_us, 0);
    assert_int_equal(g.position, 8);
    /* Expired: a lease of 1 ms, then another owner takes it once that time has passed. */
    assert_int_equal(ew__store_group_lease(e->s, "g", "c", NULL, 1, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), 0);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_now_us() <= g.lease_until_us && ew_mono_ns() < end)
        usleep(500);
    assert_int_equal(ew__store_group_lease(e->s, "g", "d", NULL, 5000, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_get(e->s, "g", &g, &err), 0);
    assert_string_equal(g.owner, "d");
}

/* Two handles on one file: a worker's batch with a transaction through one is found through the
 * other (ew__batch_txn_on, how the SQLite bus writes a handler's follow-ups into its inbox's
 * transaction); not once it has ended, not without a batch, not on PostgreSQL or in memory. */
static void batch_txn_and_data_version(void **state)
{
    senv *e = *state;
    ew_store *other = open_store(e->url, NULL);
    ew_error err = {0};
    int64_t v1, v2, v3;
    if (e->pg) {
        assert_int_equal(ew__store_data_version(e->s, &v1, &err), EW_ENOTSUP);
    } else {
        assert_int_equal(ew__store_data_version(e->s, &v1, &err), 0);
    }
    ew_txn *t;
    assert_int_equal(ew_store_begin(other, &t, &err), 0);
    ew__batch b = {.txn = t};
    assert_null(ew__batch_txn_on(NULL, e->s));
    if (e->pg) {
        assert_null(ew__batch_txn_on(&b, e->s));
    } else {
        assert_ptr_equal(ew__batch_txn_on(&b, e->s), t);
        assert_ptr_equal(ew__batch_txn_on(&b, other), t);
    }
    ew_event *ev = ev_with(EW_T_USER_LOGGED_IN, NULL);
    const ew_event *evs[] = {ev};
    assert_int_equal(ew__txn_record(t, evs, 1, NULL, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_null(ew__batch_txn_on(&b, e->s)); /* ended */
    if (!e->pg) {
        /* another connection committed: the number changed; our own commits do not change it */
        assert_int_equal(ew__store_data_version(e->s, &v2, &err), 0);
        assert_true(v2 != v1);
        ew_event *ev2 = ev_with(EW_T_USER_LOGGED_IN, NULL);
        const ew_event *evs2[] = {ev2};
        assert_int_equal(ew__store_record(e->s, evs2, 1, NULL, &err), 0);
        assert_int_equal(ew__store_data_version(e->s, &v3, &err), 0);
        assert_int_equal(v3, v2);
        ew_event_unref(ev2);
    }
    ew_event_unref(ev);
    ew_store_close(other);
    /* a private in-memory database has no file to share */
    ew_store *mem = open_store("sqlite::memory:", NULL);
    assert_int_equal(ew_store_begin(mem, &t, &err), 0);
    b.txn = t;
    assert_null(ew__batch_txn_on(&b, mem));
    ew_txn_rollback(t);
    ew_store_close(mem);
}

/* Whether the inotify descriptor fd has an event waiting (read without blocking). */
static bool signalled(int fd)
{
    _Alignas(struct inotify_event) char buf[4096];
    bool any = false;
    while (read(fd, buf, sizeof buf) > 0)
        any = true;
    return any;
}

/* The store writes PATH-signal after each commit that added events, and only then: after a
 * record, after a transaction that recorded (at its commit, not before), not after one that
 * rolled back, nor after writes that add no event (a position, a lease). Consumers of other
 * connections watch it to learn of new events (the SQLite bus). The file is 0600. */
static void commits_with_events_signal(void **state)
{
    senv *e = *state;
    char sig[200];
    snprintf(sig, sizeof sig, "%s%s", e->fs.path, EW__STORE_SIGNAL_SUFFIX);
    struct stat st;
    assert_int_equal(stat(sig, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(fd >= 0);
    assert_true(inotify_add_watch(fd, sig, IN_MODIFY) >= 0);
    ew_error err = {0};
    ew_event *ev = ev_with(EW_T_USER_LOGGED_IN, NULL);
    const ew_event *evs[] = {ev};
    assert_int_equal(ew__store_record(e->s, evs, 1, NULL, &err), 0);
    assert_true(signalled(fd));
    assert_int_equal(ew__store_record(e->s, evs, 1, NULL, &err), 0); /* a duplicate: nothing */
    assert_false(signalled(fd));
    ew_txn *t;
    ew_event *ev2 = ev_with(EW_T_USER_LOGGED_IN, NULL);
    const ew_event *evs2[] = {ev2};
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew__txn_record(t, evs2, 1, NULL, &err), 0);
    assert_false(signalled(fd)); /* not before its commit */
    ew_txn_rollback(t);
    assert_false(signalled(fd));
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew__txn_record(t, evs2, 1, NULL, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_true(signalled(fd));
    assert_int_equal(ew__store_group_open(e->s, "g", 0, NULL, &err), 0);
    int held = 0;
    assert_int_equal(ew__store_group_lease(e->s, "g", "me", NULL, 1000, &held, &err), 0);
    assert_int_equal(held, 1);
    assert_int_equal(ew__store_group_commit(e->s, "g", "me", 2, 1000, &held, &err), 0);
    assert_false(signalled(fd));
    close(fd);
    ew_event_unref(ev2);
    ew_event_unref(ev);
}

typedef struct scanned {
    int n, bad;
    int64_t positions[16];
    int errors[16];
} scanned;

static int collect(void *ud, const ew__store_entry *en)
{
    scanned *s = ud;
    if (s->n < 16) {
        s->positions[s->n] = en->position;
        s->errors[s->n] = en->error;
    }
    s->n++;
    if (!en->event) {
        s->bad++;
        assert_non_null(en->json);
        assert_true(*en->error_msg);
    } else {
        assert_string_equal(en->event_id, ew_event_id(en->event));
        assert_string_equal(en->event_type, ew_event_type(en->event));
    }
    return 0;
}

static void scan_hands_over_bad_rows(void **state)
{
    senv *e = *state;
    ew_error err = {0};
    ew_event *in1 = ev_with(EW_T_USER_LOGGED_IN, NULL), *out = ev_with(EW_T_USER_LOGGED_OUT, NULL);
    const ew_event *evs[] = {in1, out};
    assert_int_equal(ew__store_record(e->s, evs, 2, NULL, &err), 0); /* positions 1, 2 */
    /* 3: JSON that is no event of its type; 4 (SQLite): not JSON; 5: a type nobody wants */
    exec_sql(e->s, "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                   "event_type, event_version, data, metadata, recorded_at) VALUES (3, 'r3', 'r', "
                   "1, 'user.logged_in', 1, '{\"user_id\":5}', '{\"id\":\"r3\"}', "
                   "'2026-01-01T00:00:00Z')");
    int64_t last_bad = 3;
    if (!e->pg) {
        exec_sql(e->s, "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                       "event_type, event_version, data, metadata, recorded_at) VALUES (4, 'r4', "
                       "'r', 2, 'user.logged_in', 1, 'null', 'garbage', "
                       "'2026-01-01T00:00:00Z')");
        last_bad = 4;
    }
    ew_event *late = ev_with(EW_T_NOTIFICATION_EMAIL_SENT, NULL);
    const ew_event *evs2[] = {late};
    assert_int_equal(ew__store_record(e->s, evs2, 1, NULL, &err), 0);

    const char *pats[] = {"user.logged_in"};
    scanned s = {0};
    int64_t last = -1;
    assert_int_equal(ew__store_scan(e->s, 0, pats, 1, 0, 0, collect, &s, &last, &err), 0);
    assert_int_equal(s.n, 1 + (int)(last_bad - 2));
    assert_int_equal(s.bad, (int)(last_bad - 2));
    assert_int_equal(s.positions[0], 1);
    assert_int_equal(s.positions[1], 3);
    assert_true(s.errors[1] == EW_EDATA || s.errors[1] == EW_EJSON || s.errors[1] == EW_EMISSING);
    if (!e->pg) assert_int_equal(s.errors[2], EW_EJSON);
    assert_int_equal(last, last_bad + 1); /* the unwanted row at the end was looked at */

    /* max counts rows looked at, wanted or not; from is exclusive */
    memset(&s, 0, sizeof s);
    assert_int_equal(ew__store_scan(e->s, 1, pats, 1, 2, 0, collect, &s, &last, &err), 0);
    assert_int_equal(last, 3);
    assert_int_equal(s.n, 1);
    /* a limit on size hands big rows over undecoded */
    memset(&s, 0, sizeof s);
    assert_int_equal(ew__store_scan(e->s, 0, NULL, 0, 1, 100, collect, &s, &last, &err), 0);
    assert_int_equal(s.errors[0], EW_ETOOBIG);
    /* a bad pattern */
    const char *bad[] = {"user..x"};
    assert_int_equal(ew__store_scan(e->s, 0, bad, 1, 0, 0, collect, &s, &last, &err), EW_EINVAL);
    ew_event_unref(in1);
    ew_event_unref(out);
    ew_event_unref(late);
}

static int first_text(void *ud, const ew_row *row)
{
    snprintf(ud, 32, "%s", row->values[0] ? row->values[0] : "(null)");
    return 1;
}

/* The handle's commit durability as the database reports it: SQLite's synchronous level of the
 * store (1 NORMAL, 2 FULL), PostgreSQL's synchronous_commit of the session. */
static void durability(ew_store *s, int pg, char out[32])
{
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    out[0] = '\0';
    const char *sql = pg ? "SHOW synchronous_commit" : "PRAGMA event_store.synchronous";
    if (ew_txn_query(t, sql, NULL, 0, first_text, out, &err)) fail_msg("%s: %s", sql, err.msg);
    ew_txn_rollback(t);
}

/* ew__store_sync_commits makes the handle's commits wait for the disk, as the database says, and
 * only that handle's; off again, the handle has what it had; not inside a transaction. */
static void sync_commits(void **state)
{
    senv *e = *state;
    ew_error err = {0};
    char before[32], now[32], other[32];
    durability(e->s, e->pg, before);
    assert_string_equal(before, e->pg ? before : "1"); /* SQLite: NORMAL by default */
    assert_int_equal(ew__store_sync_commits(e->s, 1, &err), 0);
    durability(e->s, e->pg, now);
    assert_string_equal(now, e->pg ? "on" : "2");
    ew_store *s2 = open_store(e->url, NULL);
    durability(s2, e->pg, other);
    assert_string_equal(other, before); /* another handle keeps its own */
    ew_event *ev = ev_with(EW_T_USER_LOGGED_IN, NULL);
    const ew_event *evs[] = {ev};
    assert_int_equal(ew__store_record(e->s, evs, 1, NULL, &err), 0);
    durability(e->s, e->pg, now); /* a commit keeps it */
    assert_string_equal(now, e->pg ? "on" : "2");
    ew_txn *t;
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    ew_txn_rollback(t);
    assert_int_equal(ew__store_sync_commits(e->s, 0, &err), 0);
    durability(e->s, e->pg, now);
    assert_string_equal(now, before);
    /* not inside a transaction */
    assert_int_equal(ew_store_begin(s2, &t, &err), 0);
    assert_int_equal(ew__store_sync_commits(s2, 1, &err), EW_ESTATE);
    ew_txn_rollback(t);
    ew_store_close(s2);
    ew_event_unref(ev);
}

#define STORE_CASE(name)                                                                           \
    static void sqlite_##name(void **state)                                                        \
    {                                                                                              \
        name(state);                                                                               \
    }                                                                                              \
    static void postgres_##name(void **state)                                                      \
    {                                                                                              \
        name(state);                                                                               \
    }
STORE_CASE(record_across_streams)
STORE_CASE(record_refuses_big_events)
STORE_CASE(groups_and_leases)
STORE_CASE(batch_txn_and_data_version)
STORE_CASE(scan_hands_over_bad_rows)
STORE_CASE(sync_commits)
#define STORE_CASES(name)                                                                          \
    cmocka_unit_test_setup_teardown(sqlite_##name, setup_store_sqlite, teardown_store),            \
        cmocka_unit_test_setup_teardown(postgres_##name, setup_store_pg, teardown_store)

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(three_processes_one_killed_effects_once, setup, teardown),
    cmocka_unit_test_setup_teardown(group_positions_survive_restart, setup, teardown),
    cmocka_unit_test_setup_teardown(standby_takes_over_at_close, setup, teardown),
    cmocka_unit_test_setup_teardown(in_flight_window_wraps, setup, teardown),
    cmocka_unit_test_setup_teardown(lease_taken_over_and_back, setup, teardown),
    cmocka_unit_test_setup_teardown(full_window_keeps_the_lease, setup, teardown),
    cmocka_unit_test_setup_teardown(group_commit_shares_commits, setup, teardown),
    cmocka_unit_test_setup_teardown(follow_ups_join_the_inbox_transaction, setup, teardown),
    cmocka_unit_test_setup_teardown(held_batch_store_and_the_bus_share_the_file, setup, teardown),
    cmocka_unit_test_setup_teardown(bad_rows_go_to_the_stores_dead_letters, setup, teardown),
    cmocka_unit_test_setup_teardown(bad_row_dead_lettered_once_while_the_sink_is_down, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(bad_store_url, setup, teardown),
    cmocka_unit_test_setup_teardown(another_connection_picks_up_promptly, setup, teardown),
    cmocka_unit_test_setup_teardown(commits_with_events_signal, setup_store_sqlite, teardown_store),
    STORE_CASES(record_across_streams),
    STORE_CASES(record_refuses_big_events),
    STORE_CASES(groups_and_leases),
    STORE_CASES(batch_txn_and_data_version),
    STORE_CASES(scan_hands_over_bad_rows),
    STORE_CASES(sync_commits),
};

EW_TEST_MAIN(tests)

#else /* a build without src/bus/sqlite.c */
#include "support/ew_test.h"

static void sqlite_bus_not_built(void **state)
{
    skip();
}

static const struct CMUnitTest tests[] = {cmocka_unit_test(sqlite_bus_not_built)};

EW_TEST_MAIN(tests)
#endif
