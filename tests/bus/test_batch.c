/* Tests of batches in the dispatcher, through a memory bus: a worker with several deliveries
 * queued holds the inbox (ew_inbox_ops v2) while it runs them and acknowledges them after the
 * release; a failed release runs them again; the SQLite store's inbox committing a batch at
 * once; one handler taking several patterns (ew_subscribe_opts.add_pattern). */
#include <stdlib.h>
#include <unistd.h>
#include "bus_test_util.h"
#include "eventwire/clock.h"

#define N 300

/* ---- an inbox with hold and release, in memory ------------------------------------------------
 */

/* Commits made while held are kept aside until the release, which moves them to done or, when
 * told to fail, drops them: as a database does with a transaction whose commit fails. */
typedef struct ledger {
    pthread_mutex_t mu;
    char *done[2 * N], *held[2 * N];
    int ndone, nheld;
    int holds, releases, max_held;
    int fail_releases;    /* this many releases fail */
    int release_delay_ms; /* a slow commit */
    atomic_int handler_calls;
} ledger;

static bool has(char *const *list, int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], id) == 0) return true;
    return false;
}

static int l_begin(void *self, const char *handler, const char *id, void **txn, ew_error *err)
{
    ledger *l = self;
    pthread_mutex_lock(&l->mu);
    bool seen = has(l->done, l->ndone, id) || has(l->held, l->nheld, id);
    pthread_mutex_unlock(&l->mu);
    *txn = NULL;
    return seen ? 1 : 0;
}

static int l_commit(void *self, const char *handler, const char *id, void *txn, ew_error *err)
{
    ledger *l = self;
    pthread_mutex_lock(&l->mu);
    if (l->holds > l->releases) {
        l->held[l->nheld++] = strdup(id);
        if (l->nheld > l->max_held) l->max_held = l->nheld;
    } else {
        l->done[l->ndone++] = strdup(id);
    }
    pthread_mutex_unlock(&l->mu);
    return 0;
}

static void l_rollback(void *self, void *txn) {}

static int l_hold(void *self, ew_error *err)
{
    ledger *l = self;
    pthread_mutex_lock(&l->mu);
    l->holds++;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

static int l_release(void *self, ew_error *err)
{
    ledger *l = self;
    if (l->release_delay_ms) usleep((useconds_t)l->release_delay_ms * 1000);
    pthread_mutex_lock(&l->mu);
    l->releases++;
    int rc = 0;
    if (l->fail_releases > 0) {
        l->fail_releases--;
        for (int i = 0; i < l->nheld; i++)
            free(l->held[i]);
        rc = ew_error_set(err, EW_EIO, "the commit failed (on purpose)");
    } else {
        for (int i = 0; i < l->nheld; i++)
            l->done[l->ndone++] = l->held[i];
    }
    l->nheld = 0;
    pthread_mutex_unlock(&l->mu);
    return rc;
}

static const ew_inbox_ops ledger_ops = {2, l_begin, l_commit, l_rollback, l_hold, l_release};

static void ledger_free(ledger *l)
{
    for (int i = 0; i < l->ndone; i++)
        free(l->done[i]);
}

static ew_handler_result count_call(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ledger *l = ud;
    atomic_fetch_add(&l->handler_calls, 1);
    return EW_HANDLER_OK;
}

/* Publishes n events before the bus starts: the worker finds them queued, one batch. */
static void queue_events(ew_bus *bus, int n)
{
    for (int i = 0; i < n; i++)
        tb_publish_owned(bus, tb_event_full(EW_T_USER_REGISTERED, "one-subject", i, NULL));
}

/* The batch is held and committed at its end (or every HOLD_MAX): when wait_for_events
 * returns, every release has finished, slow as it is, and there were far fewer than events. */
static void test_batch_is_held_and_committed(void **state)
{
    ledger l = {.mu = PTHREAD_MUTEX_INITIALIZER, .release_delay_ms = 20};
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = {&ledger_ops, &l}});
    tb_subscribe(bus, "user.registered", count_call, &l, NULL);
    queue_events(bus, N);
    tb_start(bus);
    tb_wait(bus);
    pthread_mutex_lock(&l.mu);
    assert_int_equal(l.ndone, N);
    assert_int_equal(l.nheld, 0);
    assert_true(l.holds >= 1);
    assert_true(l.holds < N / 4); /* batched: far fewer commits than events */
    assert_true(l.max_held > 1);
    assert_int_equal(l.releases, l.holds);
    pthread_mutex_unlock(&l.mu);
    assert_int_equal(atomic_load(&l.handler_calls), N);
    tb_close(bus);
    ledger_free(&l);
}

/* A release that fails: nothing of the hold is recorded, so its deliveries run again, and each
 * event ends up handled and recorded once. */
static void test_failed_release_runs_the_batch_again(void **state)
{
    ledger l = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_releases = 1};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus =
        tb_open(&(ew_bus_options){.inbox = {&ledger_ops, &l}, .log = tb_log_fn, .log_ud = &log});
    tb_subscribe(bus, "user.registered", count_call, &l, NULL);
    queue_events(bus, 40);
    tb_start(bus);
    tb_wait(bus);
    pthread_mutex_lock(&l.mu);
    assert_int_equal(l.ndone, 40);
    for (int i = 0; i < l.ndone; i++)
        for (int j = 0; j < i; j++)
            assert_string_not_equal(l.done[i], l.done[j]);
    pthread_mutex_unlock(&l.mu);
    assert_true(atomic_load(&l.handler_calls) > 40); /* the failed hold's ran twice */
    assert_true(tb_log_has(&log, "they run again"));
    tb_close(bus);
    ledger_free(&l);
}

/* One delivery at a time: no hold. */
static void test_single_delivery_is_not_held(void **state)
{
    ledger l = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = {&ledger_ops, &l}});
    tb_subscribe(bus, "user.registered", count_call, &l, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(l.holds, 0);
    assert_int_equal(l.ndone, 1);
    tb_close(bus);
    ledger_free(&l);
}

/* ---- the store's inbox ------------------------------------------------------------------------
 */

static ew_handler_result write_row(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ew_error err = {0};
    const char *p[] = {ew_event_id(ev)};
    if (ew_txn_exec(ew_ctx_txn(ctx), "INSERT INTO event_store.batch_rows (id) VALUES ($1)", p, 1,
                    NULL, &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_RETRY;
    }
    return EW_HANDLER_OK;
}

static int count_cb(void *ud, const ew_row *row)
{
    *(long *)ud = strtol(row->values[0], NULL, 10);
    return 0;
}

static long count(ew_store *s, const char *sql)
{
    ew_txn *t;
    ew_error err = {0};
    long n = -1;
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    assert_int_equal(ew_txn_query(t, sql, NULL, 0, count_cb, &n, &err), 0);
    ew_txn_rollback(t);
    return n;
}

/* Handlers write in the inbox's transactions on an SQLite store; the batch commits as one and
 * every row and inbox record is there, for another connection, once the bus says it is done. */
static void test_store_inbox_batch(void **state)
{
    char dir[] = "/tmp/ew-batch-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/events.db", dir);
    ew_store *st = NULL, *other = NULL;
    ew_error err = {0};
    ew_store_options so = {.url = url};
    assert_int_equal(ew_store_open(&st, &so, &err), 0);
    assert_int_equal(ew_store_open(&other, &so, &err), 0);
    ew_txn *t;
    assert_int_equal(ew_store_begin(st, &t, &err), 0);
    assert_int_equal(ew_txn_exec(t, "CREATE TABLE event_store.batch_rows (id TEXT PRIMARY KEY)",
                                 NULL, 0, NULL, &err),
                     0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = ew_store_inbox(st)});
    tb_subscribe(bus, "user.registered", write_row, NULL, NULL);
    queue_events(bus, N);
    tb_start(bus);
    tb_wait(bus);
    assert_int_equal(count(other, "SELECT count(*) FROM event_store.batch_rows"), N);
    assert_int_equal(count(other, "SELECT count(*) FROM event_store.processed_events"), N);
    tb_close(bus);
    ew_store_close(other);
    ew_store_close(st);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- one handler, several patterns ------------------------------------------------------------
 */

typedef struct seen {
    pthread_mutex_t mu;
    char types[8][64];
    pthread_t threads[8];
    int n;
} seen;

static ew_handler_result note_type(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    seen *s = ud;
    pthread_mutex_lock(&s->mu);
    if (s->n < 8) {
        snprintf(s->types[s->n], sizeof s->types[0], "%s", ew_event_type(ev));
        s->threads[s->n++] = pthread_self();
    }
    pthread_mutex_unlock(&s->mu);
    return EW_HANDLER_OK;
}

static void test_add_pattern(void **state)
{
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(NULL);
    ew_error err = {0};
    ew_subscribe_opts o = {.group = "g", .name = "steps"};
    tb_subscribe(bus, "user.registered", note_type, &s, &o);
    /* another pattern under a taken name: refused, unless added on purpose */
    assert_int_equal(ew_bus_subscribe(bus, "user.profile_created", note_type, &s, &o, &err),
                     EW_EEXIST);
    o.add_pattern = true;
    tb_subscribe(bus, "user.profile_created", note_type, &s, &o);
    tb_subscribe(bus, "user.deactivated", note_type, &s, &o);
    ew_bus_stats bs;
    ew_bus_stats_get(bus, &bs);
    assert_int_equal(bs.subscriptions, 1);
    /* In one queue: in the order published, on one worker. */
    tb_publish_owned(bus, tb_event(EW_T_USER_PROFILE_CREATED, "s"));
    tb_publish_owned(bus, tb_event(EW_T_USER_REGISTERED, "s"));
    tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_IN, "s")); /* not subscribed */
    tb_publish_owned(bus, tb_event(EW_T_USER_DEACTIVATED, "s"));
    tb_start(bus);
    tb_wait(bus);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.types[0], "user.profile_created");
    assert_string_equal(s.types[1], "user.registered");
    assert_string_equal(s.types[2], "user.deactivated");
    assert_true(pthread_equal(s.threads[0], s.threads[1]) &&
                pthread_equal(s.threads[1], s.threads[2]));
    ew_handler_stats st = tb_stats(bus, 0);
    assert_int_equal(st.consumers, 1);
    assert_int_equal(st.handled, 3);
    tb_close(bus);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_batch_is_held_and_committed),
    cmocka_unit_test(test_failed_release_runs_the_batch_again),
    cmocka_unit_test(test_single_delivery_is_not_held),
    cmocka_unit_test(test_store_inbox_batch),
    cmocka_unit_test(test_add_pattern),
};

EW_TEST_MAIN(tests)
