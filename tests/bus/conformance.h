/* The bus conformance suite: one set of tests that every backend passes. A backend's test file
 * (tests/bus/test_conformance_<backend>.c) defines a cf_backend profile named CF_BACKEND, then
 * includes this file and ends with
 *
 *     static const struct CMUnitTest tests[] = {CF_TESTS};
 *     EW_TEST_MAIN(tests)
 *
 * Each test runs in a namespace of its own (prefixes, exchange, group names) so that tests
 * running at the same time against one broker never see each other's events. Where a backend
 * is at-least-once, counts are of distinct event ids and duplicates are allowed only where the
 * case says so. */
#ifndef EW_TESTS_CONFORMANCE_H
#define EW_TESTS_CONFORMANCE_H

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "eventwire/clock.h"
#include "eventwire/evauth.h"
#include "eventwire/store.h"

typedef struct cf_backend {
    const char *name; /* EVENT_BUS_TYPE */
    /* Sets the backend's settings on cfg for namespace ns (unique per test: a prefix, an
     * exchange, a database). Returns 0, or -1 to skip the test (the backend is not available). */
    int (*configure)(ew_config *cfg, const char *ns);
    bool durable;       /* events outlive the publisher's and consumers' processes */
    bool at_least_once; /* a consumer that dies mid-event sees it again */
    /* events published while no group subscribes to them are kept (a log, a stream, a topic), so
     * a new group with from_beginning gets them; false where they are dropped (memory, and
     * RabbitMQ, which routes an event only to the queues bound when it is published) */
    bool keeps_history;
    /* A consumer joining a group while another member consumes may make the group see some events
     * twice: librdkafka's mock cluster refuses offset commits while a group rebalances (a broker
     * takes those of the current generation), so what the old member handled and had not
     * committed yet is delivered again after the rebalance. At least once, still. */
    bool join_redelivers;
    /* Restarts the broker (really: the server process); NULL when the backend has none. */
    int (*restart_broker)(void);
    /* Puts raw bytes where a consumer of `type` in namespace ns will read them, as a foreign
     * producer would; NULL when the backend has no wire. */
    int (*inject_raw)(const char *ns, const char *type, const void *bytes, size_t n);
    /* How many messages of `type` the group (a group name as the bus knows it) has not settled on
     * the backend, looked at from outside while no consumer of the group runs: Redis entries
     * pending in its consumer group, Kafka records past its committed offsets, RabbitMQ messages
     * in its queue, SQLite rows past its position. -1 when it cannot tell; NULL without a wire. */
    long (*unsettled)(const char *ns, const char *group, const char *type);
} cf_backend;

static const cf_backend *cf_be(void);

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct cf_ns {
    char name[48];
} cf_ns;

static inline cf_ns cf_new_ns(const char *test)
{
    cf_ns ns;
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    /* the random tail of a UUIDv7, so that names stay short and unique */
    snprintf(ns.name, sizeof ns.name, "cf%.3s%.8s", test, id + 24);
    for (char *p = ns.name; *p; p++)
        if (*p == '_') *p = 'x';
    return ns;
}

/* A bus for namespace ns, as service `service`. Returns NULL and skips when the backend is not
 * available. */
static inline ew_bus *cf_open(const cf_ns *ns, const char *service, ew_bus_options *opts)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", cf_be()->name, &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", service, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_HANDLER_BACKOFF_MS", "2", &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_HANDLER_BACKOFF_MAX_MS", "10", &err), 0);
    if (cf_be()->configure(cfg, ns->name) != 0) {
        ew_config_free(cfg);
        return NULL;
    }
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = cfg;
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &o, &err)) fail_msg("ew_bus_open(%s): %s", cf_be()->name, err.msg);
    ew_config_free(cfg);
    return bus;
}

#define CF_OPEN(bus, ns, service, opts)                                                            \
    do {                                                                                           \
        (bus) = cf_open((ns), (service), (opts));                                                  \
        if (!(bus)) skip();                                                                        \
    } while (0)

/* Waits until *counter >= n, or fails after timeout_ms. */
static inline void cf_wait_count(atomic_int *counter, int n, int timeout_ms, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)timeout_ms * 1000000;
    while (atomic_load(counter) < n) {
        if (ew_mono_ns() > end)
            fail_msg("%s: %d of %d after %d ms", what, atomic_load(counter), n, timeout_ms);
        usleep(2000);
    }
}

/* A set of event ids seen by handlers, with how often each was seen. */
typedef struct cf_seen {
    pthread_mutex_t mu;
    char (*ids)[EW_UUID_LEN + 1];
    int *times;
    long *seq; /* the seq of each delivery, in arrival order, per subject index */
    int n, cap;
    atomic_int distinct, total;
} cf_seen;

static inline void cf_seen_init(cf_seen *s, int cap)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->ids = calloc((size_t)cap, sizeof *s->ids);
    s->times = calloc((size_t)cap, sizeof *s->times);
    s->cap = cap;
}

static inline void cf_seen_release(cf_seen *s)
{
    free(s->ids);
    free(s->times);
    pthread_mutex_destroy(&s->mu);
}

static inline void cf_seen_add(cf_seen *s, const char *id)
{
    pthread_mutex_lock(&s->mu);
    int i;
    for (i = 0; i < s->n; i++)
        if (strcmp(s->ids[i], id) == 0) break;
    if (i == s->n && s->n < s->cap) {
        snprintf(s->ids[s->n], sizeof s->ids[0], "%s", id);
        s->n++;
        atomic_fetch_add(&s->distinct, 1);
    }
    if (i < s->cap) s->times[i]++;
    atomic_fetch_add(&s->total, 1);
    pthread_mutex_unlock(&s->mu);
}

static inline int cf_seen_times(cf_seen *s, const char *id)
{
    pthread_mutex_lock(&s->mu);
    int t = 0;
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->ids[i], id) == 0) t = s->times[i];
    pthread_mutex_unlock(&s->mu);
    return t;
}

/* How many of ids[0..n) s has seen. */
static inline int cf_seen_count(cf_seen *s, char (*ids)[EW_UUID_LEN + 1], int n)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += cf_seen_times(s, ids[i]) > 0;
    return c;
}

/* Waits until s has seen every one of ids[0..n), or fails after timeout_ms. */
static inline void cf_wait_ids(cf_seen *s, char (*ids)[EW_UUID_LEN + 1], int n, int timeout_ms,
                               const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)timeout_ms * 1000000;
    int got;
    while ((got = cf_seen_count(s, ids, n)) < n) {
        if (ew_mono_ns() > end) fail_msg("%s: %d of %d after %d ms", what, got, n, timeout_ms);
        usleep(2000);
    }
}

static inline ew_handler_result cf_record(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_seen_add(ud, ew_event_id(ev));
    return EW_HANDLER_OK;
}

/* ---- the cases ---------------------------------------------------------------------------- */

#define CF_TIMEOUT_MS 60000

/* Publish and subscribe: every event arrives, intact. */
static inline void cf_publish_subscribe(void **state)
{
    cf_ns ns = cf_new_ns("pub");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_seen seen;
    cf_seen_init(&seen, 1000);
    tb_subscribe(bus, "user.registered", cf_record, &seen, NULL);
    tb_start(bus);
    enum { N = 200 };
    char *ids = calloc(N, EW_UUID_LEN + 1);
    for (int i = 0; i < N; i++) {
        ew_event *ev = tb_user_registered();
        strcpy(ids + i * (EW_UUID_LEN + 1), ew_event_id(ev));
        tb_publish_owned(bus, ev);
    }
    cf_wait_count(&seen.distinct, N, CF_TIMEOUT_MS, "events handled");
    for (int i = 0; i < N; i++)
        assert_true(cf_seen_times(&seen, ids + i * (EW_UUID_LEN + 1)) >= 1);
    tb_close(bus);
    assert_int_equal(atomic_load(&seen.distinct), N);
    free(ids);
    cf_seen_release(&seen);
}

/* The event a handler gets equals the event published: every attribute and field. */
typedef struct cf_keep {
    pthread_mutex_t mu;
    ew_event *got;
    atomic_int n;
} cf_keep;

static inline ew_handler_result cf_keep_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_keep *k = ud;
    pthread_mutex_lock(&k->mu);
    if (!k->got) k->got = ew_event_ref(ev);
    pthread_mutex_unlock(&k->mu);
    atomic_fetch_add(&k->n, 1);
    return EW_HANDLER_OK;
}

static inline void cf_event_arrives_intact(void **state)
{
    cf_ns ns = cf_new_ns("int");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_keep k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.data_collected", cf_keep_fn, &k, NULL);
    tb_start(bus);
    ew_event_attrs a = {.source = "export-service",
                        .correlation_id = "corr-1",
                        .causation_id = "cause-1",
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    ew_event *ev = tb_event_full(EW_T_USER_DATA_COLLECTED, NULL, 7, &a);
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    cf_wait_count(&k.n, 1, CF_TIMEOUT_MS, "event handled");
    tb_close(bus);
    assert_true(ew_event_equal(ev, k.got));
    ew_event_unref(k.got);
    ew_event_unref(ev);
}

/* Patterns: exact, one segment, any number of segments. */
static inline void cf_patterns(void **state)
{
    cf_ns ns = cf_new_ns("pat");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    atomic_int exact = 0, user_star = 0, notif_hash = 0;
    tb_subscribe(bus, "user.logged_in", tb_count, &exact, &(ew_subscribe_opts){.name = "exact"});
    tb_subscribe(bus, "user.*", tb_count, &user_star, &(ew_subscribe_opts){.name = "star"});
    tb_subscribe(bus, "notification.#", tb_count, &notif_hash,
                 &(ew_subscribe_opts){.name = "hash"});
    tb_start(bus);
    ew_type_id types[] = {EW_T_USER_LOGGED_IN, EW_T_USER_LOGGED_OUT, EW_T_NOTIFICATION_EMAIL_SENT,
                          EW_T_PASSWORD_RESET_REQUESTED};
    for (int r = 0; r < 5; r++)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            tb_publish_owned(bus, tb_event(types[i], NULL));
    cf_wait_count(&exact, 5, CF_TIMEOUT_MS, "user.logged_in");
    cf_wait_count(&user_star, 10, CF_TIMEOUT_MS, "user.*");
    cf_wait_count(&notif_hash, 5, CF_TIMEOUT_MS, "notification.#");
    /* a moment for anything wrongly routed to show up */
    usleep(200000);
    tb_close(bus);
    assert_int_equal(atomic_load(&exact), 5);
    assert_int_equal(atomic_load(&user_star), 10);
    assert_int_equal(atomic_load(&notif_hash), 5);
}

/* Groups: each group gets every event; within a group, two instances of one service share
 * them, each event going to one of them. */
static inline void cf_groups(void **state)
{
    cf_ns ns = cf_new_ns("grp");
    /* Instances of a service are buses of their own on a durable backend; in memory they are
     * subscriptions of one bus (nothing else could reach them). */
    bool own = cf_be()->durable;
    ew_bus *a1, *a2, *b, *pub;
    CF_OPEN(pub, &ns, "publisher", NULL);
    a1 = a2 = b = pub;
    if (own) {
        CF_OPEN(a1, &ns, "svc-a", NULL);
        CF_OPEN(a2, &ns, "svc-a", NULL);
        CF_OPEN(b, &ns, "svc-b", NULL);
    }
    cf_seen sa, sb;
    cf_seen_init(&sa, 1000);
    cf_seen_init(&sb, 1000);
    tb_subscribe(a1, "user.*", cf_record, &sa, &(ew_subscribe_opts){.group = "svc-a", .name = "h"});
    tb_subscribe(a2, "user.*", cf_record, &sa, &(ew_subscribe_opts){.group = "svc-a", .name = "h"});
    tb_subscribe(b, "user.*", cf_record, &sb, &(ew_subscribe_opts){.group = "svc-b", .name = "h"});
    if (own) {
        tb_start(a1);
        tb_start(a2);
        tb_start(b);
    }
    tb_start(pub);
    enum { N = 100 };
    for (int i = 0; i < N; i++)
        tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_IN, NULL));
    cf_wait_count(&sa.distinct, N, CF_TIMEOUT_MS, "group a");
    cf_wait_count(&sb.distinct, N, CF_TIMEOUT_MS, "group b");
    usleep(200000);
    if (own) {
        tb_close(a1);
        tb_close(a2);
        tb_close(b);
    }
    tb_close(pub);
    /* no failures happened, so nobody saw an event twice (but see join_redelivers) */
    if (cf_be()->join_redelivers) {
        assert_true(atomic_load(&sa.total) >= N);
    } else {
        assert_int_equal(atomic_load(&sa.total), N);
    }
    assert_int_equal(atomic_load(&sb.total), N);
    cf_seen_release(&sa);
    cf_seen_release(&sb);
}

/* Batch publish: one call, many events, all delivered. */
static inline void cf_batch_publish(void **state)
{
    cf_ns ns = cf_new_ns("bat");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_seen seen;
    cf_seen_init(&seen, 1000);
    tb_subscribe(bus, "#", cf_record, &seen, NULL);
    tb_start(bus);
    enum { N = 300 };
    ew_event *evs[N];
    for (int i = 0; i < N; i++)
        evs[i] = tb_event(i % 2 ? EW_T_USER_LOGGED_IN : EW_T_USER_LOGGED_OUT, NULL);
    ew_error err = {0};
    if (ew_bus_publish_batch(bus, (const ew_event *const *)evs, N, &err))
        fail_msg("publish_batch: %s", err.msg);
    cf_wait_count(&seen.distinct, N, CF_TIMEOUT_MS, "batch handled");
    tb_close(bus);
    for (int i = 0; i < N; i++)
        ew_event_unref(evs[i]);
    cf_seen_release(&seen);
}

/* Retry, then dead letter: the failing event goes to the dead letter queue with its error and
 * attempts, and the events after it are handled. */
static atomic_int cf_fail_calls;
static inline ew_handler_result cf_fail_some(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_logged_in *d = ew_user_logged_in_data(ev);
    if (d && strcmp(d->session_id, "poison") == 0) {
        atomic_fetch_add(&cf_fail_calls, 1);
        ew_ctx_set_error(ctx, "cannot handle session %s", d->session_id);
        return EW_HANDLER_RETRY;
    }
    cf_seen_add(ud, ew_event_id(ev));
    return EW_HANDLER_OK;
}

static inline void cf_retry_then_dead_letter(void **state)
{
    cf_ns ns = cf_new_ns("dlq");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_seen seen;
    cf_seen_init(&seen, 100);
    atomic_store(&cf_fail_calls, 0);
    tb_subscribe(bus, "user.logged_in", cf_fail_some, &seen,
                 &(ew_subscribe_opts){.name = "picky", .max_attempts = 3, .no_jitter = true});
    tb_start(bus);
    ew_user_logged_in d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                           .session_id = "poison"};
    ew_event *poison;
    assert_int_equal(ew_user_logged_in_new(&poison, &d, &(ew_event_attrs){.source = "t"}, NULL), 0);
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, poison, &err), 0);
    for (int i = 0; i < 10; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_IN, NULL));
    cf_wait_count(&seen.distinct, 10, CF_TIMEOUT_MS, "good events after the poison one");
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (ew_memdlq_count(q) < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(ew_memdlq_count(q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_string_equal(e.event_id, ew_event_id(poison));
    assert_string_equal(e.handler, "picky");
    assert_string_equal(e.group, "svc-a");
    assert_int_equal(e.attempts, 3);
    assert_non_null(strstr(e.error, "cannot handle session poison"));
    assert_true(e.first_failed_us <= e.last_failed_us);
    ew_memdlq_entry_release(&e);
    tb_close(bus);
    assert_int_equal(atomic_load(&cf_fail_calls), 3);
    ew_event_unref(poison);
    cf_seen_release(&seen);
}

/* Idempotent redelivery: the same event (same id) twice reaches the handler once. */
static inline void cf_inbox_absorbs_redelivery(void **state)
{
    cf_ns ns = cf_new_ns("inb");
    ew_meminbox *ib;
    assert_int_equal(ew_meminbox_new(&ib, NULL), 0);
    ew_bus_options o = {.inbox = ew_meminbox_inbox(ib)};
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", &o);
    cf_seen seen;
    cf_seen_init(&seen, 100);
    tb_subscribe(bus, "user.registered", cf_record, &seen, NULL);
    tb_start(bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    ew_event *after = tb_user_registered();
    assert_int_equal(ew_bus_publish(bus, after, &err), 0);
    cf_wait_count(&seen.distinct, 2, CF_TIMEOUT_MS, "events handled");
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (tb_stats(bus, 0).duplicates < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(tb_stats(bus, 0).duplicates, 1);
    tb_close(bus);
    assert_int_equal(cf_seen_times(&seen, ew_event_id(ev)), 1);
    ew_event_unref(ev);
    ew_event_unref(after);
    ew_meminbox_free(ib);
    cf_seen_release(&seen);
}

/* Order: one subject's events of one type are handled in publish order, also with several
 * workers and many subjects interleaved. */
enum { CF_SUBJECTS = 8, CF_PER_SUBJECT = 40 };
typedef struct cf_order {
    pthread_mutex_t mu;
    char subjects[CF_SUBJECTS][EW_UUID_LEN + 1];
    long last[CF_SUBJECTS];
    int out_of_order;
    atomic_int n;
} cf_order;

static inline ew_handler_result cf_order_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_order *o = ud;
    const ew_user_data_deleted *d = ew_user_data_deleted_data(ev);
    pthread_mutex_lock(&o->mu);
    for (int i = 0; i < CF_SUBJECTS; i++) {
        if (strcmp(o->subjects[i], ew_event_subject(ev)) != 0) continue;
        if (d->records != o->last[i] + 1) o->out_of_order++;
        o->last[i] = d->records;
    }
    pthread_mutex_unlock(&o->mu);
    atomic_fetch_add(&o->n, 1);
    return EW_HANDLER_OK;
}

static inline void cf_order_per_subject(void **state)
{
    cf_ns ns = cf_new_ns("ord");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    static cf_order o;
    memset(&o, 0, sizeof o);
    pthread_mutex_init(&o.mu, NULL);
    for (int i = 0; i < CF_SUBJECTS; i++)
        ew_uuid7(o.subjects[i]);
    tb_subscribe(bus, "user.data_deleted", cf_order_fn, &o, &(ew_subscribe_opts){.concurrency = 4});
    tb_start(bus);
    for (int k = 1; k <= CF_PER_SUBJECT; k++)
        for (int i = 0; i < CF_SUBJECTS; i++)
            tb_publish_owned(bus, tb_event_full(EW_T_USER_DATA_DELETED, o.subjects[i], k, NULL));
    cf_wait_count(&o.n, CF_SUBJECTS * CF_PER_SUBJECT, CF_TIMEOUT_MS, "ordered events");
    tb_close(bus);
    assert_int_equal(o.out_of_order, 0);
    for (int i = 0; i < CF_SUBJECTS; i++)
        assert_int_equal(o.last[i], CF_PER_SUBJECT);
}

/* Graceful close: what was published before close is handled; on a durable backend, what a
 * closed consumer did not take is handled by the next one. */
static inline void cf_graceful_close(void **state)
{
    cf_ns ns = cf_new_ns("cls");
    ew_bus *pub, *con;
    cf_seen seen;
    cf_seen_init(&seen, 1000);
    enum { N = 200 };
    if (!cf_be()->durable) {
        /* in memory the consumer's bus is the publisher's: close drains it, losing nothing */
        CF_OPEN(pub, &ns, "svc-a", NULL);
        tb_subscribe(pub, "user.logged_out", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
        tb_start(pub);
        for (int i = 0; i < N; i++)
            tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_OUT, NULL));
        tb_close(pub);
        assert_int_equal(atomic_load(&seen.distinct), N);
        cf_seen_release(&seen);
        return;
    }
    CF_OPEN(pub, &ns, "publisher", NULL);
    CF_OPEN(con, &ns, "svc-a", NULL);
    tb_subscribe(con, "user.logged_out", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
    tb_start(con);
    tb_start(pub);
    for (int i = 0; i < N; i++)
        tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_OUT, NULL));
    tb_close(pub);
    {
        cf_wait_count(&seen.distinct, 1, CF_TIMEOUT_MS, "first event");
        tb_close(con);
        CF_OPEN(con, &ns, "svc-a", NULL);
        tb_subscribe(con, "user.logged_out", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
        tb_start(con);
        cf_wait_count(&seen.distinct, N, CF_TIMEOUT_MS, "events after reopening");
        tb_close(con);
    }
    cf_seen_release(&seen);
}

/* A consumer killed with SIGKILL mid-stream and started again: no event is lost; duplicates only
 * where the backend is at-least-once. The consumers are child processes that write the ids they
 * handle to a file; the parent has no threads when it forks them. */
typedef struct cf_file_rec {
    int fd;
} cf_file_rec;

static inline ew_handler_result cf_write_id(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    char line[EW_UUID_LEN + 2];
    snprintf(line, sizeof line, "%s\n", ew_event_id(ev));
    if (write(((cf_file_rec *)ud)->fd, line, strlen(line)) < 0) return EW_HANDLER_RETRY;
    usleep(1000); /* slow enough to be killed mid-stream */
    return EW_HANDLER_OK;
}

/* Returns once the child has subscribed (it creates path.ready then), so that the group exists
 * before anything is published: a broker that routes at publish time (RabbitMQ) keeps nothing
 * for a group whose queue is not bound yet. */
static inline pid_t cf_spawn_consumer(const cf_ns *ns, const char *path)
{
    char ready[256];
    snprintf(ready, sizeof ready, "%s.ready", path);
    unlink(ready);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ew_bus *bus = cf_open(ns, "svc-k", NULL);
        if (!bus) _exit(3);
        static cf_file_rec rec;
        rec.fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
        ew_error err = {0};
        if (rec.fd < 0 ||
            ew_bus_subscribe(bus, "user.logged_in", cf_write_id, &rec,
                             &(ew_subscribe_opts){.name = "k"}, &err) ||
            ew_bus_start(bus, &err))
            _exit(4);
        int rfd = open(ready, O_WRONLY | O_CREAT, 0600);
        if (rfd < 0) _exit(5);
        close(rfd);
        for (;;)
            pause();
    }
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    int status;
    while (access(ready, F_OK) != 0) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("the consumer process exited (status %d) before it subscribed", status);
        if (ew_mono_ns() > end) fail_msg("the consumer process did not subscribe in time");
        usleep(2000);
    }
    unlink(ready);
    return pid;
}

/* How many lines the file has, and whether each of ids[0..n) is among them (and how often). */
static inline int cf_count_ids(const char *path, char (*ids)[EW_UUID_LEN + 1], int n, int *missing,
                               int *dups)
{
    FILE *f = fopen(path, "r");
    int lines = 0;
    int *times = calloc((size_t)n, sizeof *times);
    char line[128];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        lines++;
        for (int i = 0; i < n; i++)
            if (strcmp(ids[i], line) == 0) times[i]++;
    }
    if (f) fclose(f);
    *missing = *dups = 0;
    for (int i = 0; i < n; i++) {
        if (times[i] == 0) (*missing)++;
        if (times[i] > 1) *dups += times[i] - 1;
    }
    free(times);
    return lines;
}

static inline void cf_consumer_killed_and_restarted(void **state)
{
    if (!cf_be()->durable) skip();
    cf_ns ns = cf_new_ns("kil");
    char path[] = "/tmp/ew-cf-kill-XXXXXX";
    int tfd = mkstemp(path);
    assert_true(tfd >= 0);
    close(tfd);
    enum { N = 400 };
    static char ids[N][EW_UUID_LEN + 1];
    /* the consumer group exists before the events: start and stop one consumer first */
    pid_t c = cf_spawn_consumer(&ns, path);
    ew_bus *pub;
    CF_OPEN(pub, &ns, "publisher", NULL);
    tb_start(pub);
    /* one batch, so that the stream is there at once and the consumer (1 ms an event) is still
     * in the middle of it when it is killed, however fast publishing one by one would be */
    static const ew_event *evs[N];
    for (int i = 0; i < N; i++) {
        ew_event *ev = tb_event(EW_T_USER_LOGGED_IN, NULL);
        strcpy(ids[i], ew_event_id(ev));
        evs[i] = ev;
    }
    ew_error perr = {0};
    int prc = ew_bus_publish_batch(pub, evs, N, &perr);
    for (int i = 0; i < N; i++)
        ew_event_unref(evs[i]);
    if (prc) {
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        fail_msg("publishing the stream: %s", perr.msg);
    }
    tb_close(pub);
    int missing, dups, lines;
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while ((lines = cf_count_ids(path, ids, N, &missing, &dups)) < N / 4 && ew_mono_ns() < end)
        usleep(5000);
    /* killed before anything is asserted: a consumer left running would hold the test's output
     * open until its time-out */
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    lines = cf_count_ids(path, ids, N, &missing, &dups);
    if (lines < N / 4 || lines >= N) unlink(path);
    assert_true(lines >= N / 4);
    assert_true(lines < N); /* killed mid-stream */
    c = cf_spawn_consumer(&ns, path);
    end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while ((cf_count_ids(path, ids, N, &missing, &dups), missing) > 0 && ew_mono_ns() < end)
        usleep(10000);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    unlink(path);
    assert_int_equal(missing, 0);
    if (!cf_be()->at_least_once) assert_int_equal(dups, 0);
    /* duplicates are what the dead consumer had taken but not yet acknowledged or committed
     * (up to its in-flight bound), never the whole stream again */
    if (dups >= N / 2) fail_msg("%d duplicates of %d events: the stream was replayed", dups, N);
}

/* The broker restarted mid-stream: publishers and consumers reconnect and nothing is lost. */
static inline void cf_broker_restart(void **state)
{
    if (!cf_be()->restart_broker) skip();
    cf_ns ns = cf_new_ns("rst");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_seen seen;
    cf_seen_init(&seen, 1000);
    tb_subscribe(bus, "user.verified", cf_record, &seen, NULL);
    tb_start(bus);
    enum { N = 100 };
    for (int i = 0; i < N; i++) {
        if (i == N / 2) {
            cf_wait_count(&seen.distinct, N / 2, CF_TIMEOUT_MS, "events before the restart");
            assert_int_equal(cf_be()->restart_broker(), 0);
        }
        ew_event *ev = tb_event(EW_T_USER_VERIFIED, NULL);
        ew_error err = {0};
        int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
        while (ew_bus_publish(bus, ev, &err) != 0) {
            if (ew_mono_ns() > end) fail_msg("publish after the restart: %s", err.msg);
            assert_true(ew_err_retriable(err.code)); /* the error says it is worth retrying */
            usleep(100000);
        }
        ew_event_unref(ev);
    }
    cf_wait_count(&seen.distinct, N, CF_TIMEOUT_MS, "events after the restart");
    tb_close(bus);
    cf_seen_release(&seen);
}

/* Bad input on the wire: a foreign message that is not JSON, one whose data its schema refuses,
 * one of a type the catalog does not have and one larger than EVENT_MAX_BYTES each go to the dead
 * letter sink exactly once — with the bytes as received, where they came from and the reason,
 * under the handler "<decode>" — and are settled on the broker (nothing pending, the offset
 * committed past them, nothing requeued, the group's position past them), and the consumer
 * carries on with the next event. The one policy of docs/bus.md. */
static inline void cf_bad_input_is_dead_lettered(void **state)
{
    if (!cf_be()->inject_raw) skip();
    cf_ns ns = cf_new_ns("bad");
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", NULL);
    cf_seen seen;
    cf_seen_init(&seen, 100);
    tb_subscribe(bus, "user.registered", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
    tb_start(bus);
    const char *garbage = "this is not an event";
    const char *wrong = "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"s\","
                        "\"type\":\"user.registered\",\"data\":{\"user_id\":5}}";
    const char *unknown = "{\"specversion\":\"1.0\",\"id\":\"u\",\"source\":\"s\","
                          "\"type\":\"user.no_such_thing\",\"data\":{}}";
    size_t big_n = 2u << 20;
    char *big = malloc(big_n);
    memset(big, 'x', big_n);
    const char *sent[4] = {garbage, wrong, unknown, big};
    size_t sent_n[4] = {strlen(garbage), strlen(wrong), strlen(unknown), big_n};
    for (int i = 0; i < 4; i++)
        assert_int_equal(cf_be()->inject_raw(ns.name, "user.registered", sent[i], sent_n[i]), 0);
    ew_event *good = tb_user_registered();
    tb_publish_owned(bus, good);
    cf_wait_count(&seen.distinct, 1, CF_TIMEOUT_MS, "the good event after the bad ones");
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (ew_memdlq_count(q) < 4 && ew_mono_ns() < end)
        usleep(2000);
    usleep(200000); /* a moment for a second copy to show up, were there one */
    assert_int_equal(ew_memdlq_count(q), 4); /* once each */
    int json = 0, data = 0, type = 0, size = 0, raw = 0;
    for (size_t i = 0; i < 4; i++) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(q, i, &e), 0);
        assert_null(e.event);
        assert_non_null(e.payload);
        assert_string_equal(e.handler, "<decode>");
        assert_string_equal(e.group, "svc-a");
        assert_int_equal(e.attempts, 1);
        json += strstr(e.error, "EW_EJSON") != NULL;
        data += strstr(e.error, "EW_EDATA") != NULL;
        type += strstr(e.error, "EW_EUNKNOWNTYPE") != NULL;
        size += strstr(e.error, "EW_ETOOBIG") != NULL;
        /* the bytes as received (the SQLite bus: the row's CloudEvent, rebuilt from its metadata
         * and data columns, so the last byte of what is no JSON object differs) */
        for (int k = 0; k < 4; k++)
            if (e.payload_len >= sent_n[k] - 1 &&
                memmem(e.payload, e.payload_len, sent[k], sent_n[k] <= 64 ? sent_n[k] - 1 : 64)) {
                raw++;
                break;
            }
        /* where it came from, in the transport's words: "kafka topic=... offset=..." */
        assert_non_null(e.transport);
        assert_int_equal(strncmp(e.transport, cf_be()->name, strlen(cf_be()->name)), 0);
        ew_memdlq_entry_release(&e);
    }
    free(big);
    tb_close(bus);
    assert_int_equal(json, 1);
    assert_int_equal(data, 1);
    assert_int_equal(type, 1);
    assert_int_equal(size, 1);
    assert_int_equal(raw, 4);
    if (cf_be()->unsettled)
        assert_int_equal(cf_be()->unsettled(ns.name, "svc-a", "user.registered"), 0);
    cf_seen_release(&seen);
}

/* A dead letter sink that refuses (a database that is down) and then takes it. */
typedef struct cf_flaky_sink {
    atomic_int refuse; /* puts still to refuse; < 0: refuse every one */
    atomic_int puts, kept;
    ew_memdlq *q;
} cf_flaky_sink;

static inline int cf_flaky_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    cf_flaky_sink *f = self;
    atomic_fetch_add(&f->puts, 1);
    int left = atomic_load(&f->refuse);
    if (left < 0 || (left > 0 && atomic_fetch_sub(&f->refuse, 1) > 0))
        return ew_error_set(err, EW_EIO, "the dead letter database is down");
    atomic_fetch_add(&f->kept, 1);
    ew_dlq_sink s = ew_memdlq_sink(f->q);
    return s.ops->put(s.self, dl, err);
}

/* An undecodable message while the dead letter sink refuses: tried again with back-off, and not
 * acknowledged meanwhile — a bus closed then leaves it unsettled, and the group's next consumer
 * gets it again; once the sink takes it, it is settled, and kept once. */
static inline void cf_dead_letter_sink_refuses(void **state)
{
    if (!cf_be()->inject_raw) skip();
    cf_ns ns = cf_new_ns("snk");
    static const ew_dlq_sink_ops flaky_ops = {.version = 1, .put = cf_flaky_put};
    cf_flaky_sink f = {.refuse = -1};
    assert_int_equal(ew_memdlq_new(&f.q, NULL), 0);
    ew_bus_options o = {.dlq = {.ops = &flaky_ops, .self = &f}};
    cf_seen seen;
    cf_seen_init(&seen, 100);
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-s", &o);
    tb_subscribe(bus, "user.registered", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
    tb_start(bus);
    const char *garbage = "{\"not\": \"an event\"}";
    assert_int_equal(cf_be()->inject_raw(ns.name, "user.registered", garbage, strlen(garbage)), 0);
    int64_t t0 = ew_mono_ns();
    cf_wait_count(&f.puts, 4, CF_TIMEOUT_MS, "attempts at the refusing sink");
    /* back-off: 4 attempts take at least 50 + 100 + 200 ms, less the jitter (a quarter) */
    assert_true(ew_mono_ns() - t0 >= 250LL * 1000000);
    tb_close(bus);
    assert_int_equal(atomic_load(&f.kept), 0);
    if (cf_be()->unsettled)
        assert_int_equal(cf_be()->unsettled(ns.name, "svc-s", "user.registered"), 1);

    /* The group again, with a sink that refuses twice more, then takes it. */
    atomic_store(&f.refuse, 2);
    CF_OPEN(bus, &ns, "svc-s", &o);
    tb_subscribe(bus, "user.registered", cf_record, &seen, &(ew_subscribe_opts){.name = "h"});
    tb_start(bus);
    cf_wait_count(&f.kept, 1, CF_TIMEOUT_MS, "the dead letter, once the sink takes it");
    tb_publish_owned(bus, tb_user_registered());
    cf_wait_count(&seen.distinct, 1, CF_TIMEOUT_MS, "the next event");
    usleep(200000); /* a moment for a second copy to show up, were there one */
    tb_close(bus);
    assert_int_equal(atomic_load(&f.kept), 1);
    assert_int_equal(ew_memdlq_count(f.q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(f.q, 0, &e), 0);
    assert_string_equal(e.handler, "<decode>");
    assert_non_null(e.transport);
    assert_non_null(memmem(e.payload, e.payload_len, garbage, strlen(garbage) - 1));
    ew_memdlq_entry_release(&e);
    if (cf_be()->unsettled)
        assert_int_equal(cf_be()->unsettled(ns.name, "svc-s", "user.registered"), 0);
    ew_memdlq_free(f.q);
    cf_seen_release(&seen);
}

/* Where a new group starts (ew_subscribe_opts.from_beginning). Events are published while no
 * group subscribes to their type; then group A subscribes with from_beginning and group B
 * without, and more events follow. A gets the old ones (where the backend keeps them) and the
 * new ones, B only the new ones. Then both subscribe again, both with from_beginning: groups
 * that exist resume where they left off, so neither sees an old event again. */
static inline void cf_from_beginning(void **state)
{
    cf_ns ns = cf_new_ns("frm");
    enum { OLD = 12, NEW = 12 };
    static char old_ids[OLD][EW_UUID_LEN + 1], new_ids[NEW][EW_UUID_LEN + 1],
        last_id[1][EW_UUID_LEN + 1];
    bool history = cf_be()->keeps_history;
    ew_bus *pub;
    CF_OPEN(pub, &ns, "publisher", NULL);
    tb_start(pub);
    for (int i = 0; i < OLD; i++) {
        ew_event *ev = tb_event(EW_T_USER_LOGGED_OUT, NULL);
        strcpy(old_ids[i], ew_event_id(ev));
        tb_publish_owned(pub, ev);
    }
    tb_close(pub);

    cf_seen sa, sb;
    cf_seen_init(&sa, 1000);
    cf_seen_init(&sb, 1000);
    ew_bus *con;
    CF_OPEN(con, &ns, "svc-f", NULL);
    tb_subscribe(con, "user.logged_out", cf_record, &sa,
                 &(ew_subscribe_opts){.group = "from-start", .name = "h", .from_beginning = true});
    tb_subscribe(con, "user.logged_out", cf_record, &sb,
                 &(ew_subscribe_opts){.group = "from-now", .name = "h"});
    tb_start(con);
    /* The new events share a subject (one Kafka partition): on the others the groups handle
     * nothing, and must still resume there, not start again, when subscribed again below. */
    char subject[EW_UUID_LEN + 1];
    ew_uuid7(subject);
    for (int i = 0; i < NEW; i++) {
        ew_event *ev = tb_event(EW_T_USER_LOGGED_OUT, subject);
        strcpy(new_ids[i], ew_event_id(ev));
        tb_publish_owned(con, ev);
    }
    cf_wait_ids(&sb, new_ids, NEW, CF_TIMEOUT_MS, "new events, group without from_beginning");
    cf_wait_ids(&sa, new_ids, NEW, CF_TIMEOUT_MS, "new events, group with from_beginning");
    if (history) cf_wait_ids(&sa, old_ids, OLD, CF_TIMEOUT_MS, "old events, from_beginning");
    usleep(500000); /* a moment for anything wrongly replayed to show up */
    tb_close(con);
    if (cf_seen_count(&sb, old_ids, OLD) > 0)
        fail_msg("the group without from_beginning got %d of the %d events published before it "
                 "existed",
                 cf_seen_count(&sb, old_ids, OLD), OLD);
    if (!history) assert_int_equal(cf_seen_count(&sa, old_ids, OLD), 0);
    if (!cf_be()->at_least_once) {
        assert_int_equal(atomic_load(&sa.total), (history ? OLD : 0) + NEW);
        assert_int_equal(atomic_load(&sb.total), NEW);
    }

    /* Both groups exist now: from_beginning changes nothing for them. */
    cf_seen ra, rb;
    cf_seen_init(&ra, 1000);
    cf_seen_init(&rb, 1000);
    CF_OPEN(con, &ns, "svc-f", NULL);
    tb_subscribe(con, "user.logged_out", cf_record, &ra,
                 &(ew_subscribe_opts){.group = "from-start", .name = "h", .from_beginning = true});
    tb_subscribe(con, "user.logged_out", cf_record, &rb,
                 &(ew_subscribe_opts){.group = "from-now", .name = "h", .from_beginning = true});
    tb_start(con);
    ew_event *ev = tb_event(EW_T_USER_LOGGED_OUT, NULL);
    strcpy(last_id[0], ew_event_id(ev));
    tb_publish_owned(con, ev);
    cf_wait_ids(&ra, last_id, 1, CF_TIMEOUT_MS, "the last event, first group");
    cf_wait_ids(&rb, last_id, 1, CF_TIMEOUT_MS, "the last event, second group");
    usleep(500000);
    tb_close(con);
    if (cf_seen_count(&ra, old_ids, OLD) + cf_seen_count(&rb, old_ids, OLD) > 0)
        fail_msg("groups that existed replayed old events when subscribed again with "
                 "from_beginning (%d and %d of %d)",
                 cf_seen_count(&ra, old_ids, OLD), cf_seen_count(&rb, old_ids, OLD), OLD);
    /* what they had handled before is not handled again (a closed consumer committed it) */
    assert_int_equal(cf_seen_count(&ra, new_ids, NEW) + cf_seen_count(&rb, new_ids, NEW), 0);
    cf_seen_release(&sa);
    cf_seen_release(&sb);
    cf_seen_release(&ra);
    cf_seen_release(&rb);
}

/* A dead letter retried from another bus (another process, as `ewctl dlq retry` is) reaches its
 * handler only, through the backend, and is resolved. The service's dead letter queue is a
 * store's (an in-memory SQLite one). */
typedef struct cf_flaky {
    atomic_int fail, handled;
} cf_flaky;

static inline ew_handler_result cf_flaky_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_flaky *f = ud;
    if (atomic_load(&f->fail)) {
        ew_ctx_set_error(ctx, "downstream unavailable");
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&f->handled, 1);
    return EW_HANDLER_OK;
}

static inline int cf_first_dead_letter(void *ud, const ew_dlq_row *r)
{
    *(int64_t *)ud = r->id;
    return 1;
}

static inline ew_dlq_status cf_dlq_status(ew_store *st, int64_t id)
{
    ew_dlq_row r;
    assert_int_equal(ew_store_dlq_get(st, id, &r, NULL), 0);
    ew_dlq_status s = r.status;
    ew_dlq_row_release(&r);
    return s;
}

/* An ephemeral group leaves nothing on the backend: subscribed again after its bus closed it is a
 * new group, which does not get what was published while nobody consumed; a group kept the
 * ordinary way, beside it, does. */
static inline void cf_ephemeral_group(void **state)
{
    if (!cf_be()->durable) skip(); /* in memory every group goes with its bus anyway */
    cf_ns ns = cf_new_ns("eph");
    static char first[1][EW_UUID_LEN + 1], between[1][EW_UUID_LEN + 1], last[1][EW_UUID_LEN + 1];
    char subject[EW_UUID_LEN + 1];
    ew_uuid7(subject); /* one Kafka partition */
    ew_bus *pub, *a, *b;
    CF_OPEN(pub, &ns, "publisher", NULL);
    tb_start(pub);
    cf_seen eph, kept;
    cf_seen_init(&eph, 100);
    cf_seen_init(&kept, 100);
    ew_subscribe_opts oe = {.group = "looker", .name = "h", .ephemeral = true};
    ew_subscribe_opts ok = {.group = "keeper", .name = "h"};
    CF_OPEN(a, &ns, "svc-e", NULL);
    tb_subscribe(a, "user.logged_in", cf_record, &eph, &oe);
    tb_subscribe(a, "user.logged_in", cf_record, &kept, &ok);
    tb_start(a);
    ew_event *ev = tb_event(EW_T_USER_LOGGED_IN, subject);
    strcpy(first[0], ew_event_id(ev));
    tb_publish_owned(pub, ev);
    cf_wait_ids(&eph, first, 1, CF_TIMEOUT_MS, "first event, ephemeral group");
    cf_wait_ids(&kept, first, 1, CF_TIMEOUT_MS, "first event, kept group");
    tb_close(a);

    ev = tb_event(EW_T_USER_LOGGED_IN, subject); /* nobody consumes now */
    strcpy(between[0], ew_event_id(ev));
    tb_publish_owned(pub, ev);

    CF_OPEN(b, &ns, "svc-e", NULL);
    tb_subscribe(b, "user.logged_in", cf_record, &eph, &oe);
    tb_subscribe(b, "user.logged_in", cf_record, &kept, &ok);
    tb_start(b);
    ev = tb_event(EW_T_USER_LOGGED_IN, subject);
    strcpy(last[0], ew_event_id(ev));
    tb_publish_owned(pub, ev);
    cf_wait_ids(&eph, last, 1, CF_TIMEOUT_MS, "last event, ephemeral group again");
    cf_wait_ids(&kept, between, 1, CF_TIMEOUT_MS, "the event between, kept group");
    cf_wait_ids(&kept, last, 1, CF_TIMEOUT_MS, "last event, kept group");
    usleep(300000); /* a moment for a wrongly kept event to show up */
    tb_close(b);
    tb_close(pub);
    assert_int_equal(cf_seen_count(&eph, between, 1), 0);
    cf_seen_release(&eph);
    cf_seen_release(&kept);
}

static inline void cf_dead_letter_retry(void **state)
{
    cf_ns ns = cf_new_ns("rty");
    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.url = "sqlite::memory:"}, &err))
        fail_msg("%s", err.msg);
    ew_bus_options so = {.dlq = ew_store_dlq_sink(st)};
    ew_bus *svc;
    CF_OPEN(svc, &ns, "svc-r", &so);
    cf_flaky f = {.fail = 1};
    atomic_int others = 0;
    tb_subscribe(svc, "user.registered", cf_flaky_fn, &f,
                 &(ew_subscribe_opts){.name = "create-profile", .max_attempts = 1});
    tb_subscribe(svc, "#", tb_count, &others, &(ew_subscribe_opts){.group = "svc-other"});
    tb_start(svc);
    /* the operator's side: another bus on the same backend, unless nothing is shared */
    ew_bus *ops = cf_be()->durable ? cf_open(&ns, "ops", NULL) : svc;
    assert_non_null(ops);
    tb_start(ops);
    ew_event *ev = tb_user_registered();
    assert_int_equal(ew_bus_publish(ops, ev, &err), 0);
    int64_t id = 0, end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    ew_dlq_filter df = {.handler = "create-profile", .status = -1};
    while (id == 0 && ew_mono_ns() < end) {
        assert_int_equal(ew_store_dlq_list(st, &df, cf_first_dead_letter, &id, &err), 0);
        if (!id) usleep(5000);
    }
    if (!id) fail_msg("the failing event never reached the dead letter queue");
    cf_wait_count(&others, 1, CF_TIMEOUT_MS, "the other group's copy");

    atomic_store(&f.fail, 0);
    assert_int_equal(ew_store_dlq_set_status(st, id, EW_DLQ_RETRIED, &err), 0);
    assert_int_equal(ew_bus_redeliver(ops, "svc-r", "create-profile", ev, id, &err), 0);
    cf_wait_count(&f.handled, 1, CF_TIMEOUT_MS, "the retried event");
    end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (cf_dlq_status(st, id) != EW_DLQ_RESOLVED && ew_mono_ns() < end)
        usleep(5000);
    assert_int_equal(cf_dlq_status(st, id), EW_DLQ_RESOLVED);
    /* the other group never saw the retry, neither wrapped nor unwrapped */
    usleep(200000);
    assert_int_equal(atomic_load(&others), 1);
    assert_int_equal(atomic_load(&f.handled), 1);
    if (ops != svc) tb_close(ops);
    tb_close(svc);
    ew_store_close(st);
    ew_event_unref(ev);
}

/* ---- consumer lag ------------------------------------------------------------------------- */

typedef struct cf_lag_seen {
    const char *group; /* the group looked for */
    uint64_t lag;
    int calls, matches;
} cf_lag_seen;

static inline int cf_lag_record(void *ud, const char *group, uint64_t lag)
{
    cf_lag_seen *l = ud;
    l->calls++;
    if (strcmp(group, l->group) == 0) {
        l->matches++;
        l->lag = lag;
    }
    return 0;
}

/* The group's lag by ew_bus_lag(bus, group): exactly one call, for that group. */
static inline uint64_t cf_lag_of(ew_bus *bus, const char *group)
{
    cf_lag_seen l = {.group = group};
    ew_error err = {0};
    int rc = ew_bus_lag(bus, group, cf_lag_record, &l, &err);
    if (rc) fail_msg("ew_bus_lag(%s): %s", group, err.msg);
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.matches, 1);
    return l.lag;
}

/* Waits until the group's lag is want (acknowledgements and commits reach the broker a moment
 * after the handlers finish), or fails with the last figure. */
static inline void cf_wait_lag(ew_bus *bus, const char *group, uint64_t want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    uint64_t lag;
    while ((lag = cf_lag_of(bus, group)) != want) {
        if (ew_mono_ns() > end)
            fail_msg("%s: lag of group %s is %llu, not %llu, after %d ms", what, group,
                     (unsigned long long)lag, (unsigned long long)want, CF_TIMEOUT_MS);
        usleep(20000);
    }
}

typedef struct cf_lag_handler {
    atomic_int handled;
    int free_passes; /* handled at once; the ones after wait at the gate */
    tb_gate gate;
} cf_lag_handler;

static inline ew_handler_result cf_lag_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_lag_handler *h = ud;
    if (atomic_load(&h->handled) >= h->free_passes) tb_gate_pass(&h->gate);
    atomic_fetch_add(&h->handled, 1);
    return EW_HANDLER_OK;
}

/* Consumer lag (ew_bus_lag): publish N, consume K, and the group's lag is N - K as the backend
 * records it; once the rest is consumed it is 0. A durable backend is asked by a bus that does
 * not consume for the group (as `ewctl metrics` asks), while no consumer runs, so the figure is
 * exact; the memory bus knows only its own handlers: K handled, one held in the handler, the
 * rest queued. A group the backend has no record of is EW_ENOTFOUND. */
static inline void cf_consumer_lag(void **state)
{
    cf_ns ns = cf_new_ns("lag");
    enum { N = 30, K = 12 };
    ew_error err = {0};
    char subject[EW_UUID_LEN + 1]; /* one subject: one Kafka partition, committed in by K */
    ew_uuid7(subject);
    cf_lag_handler h = {.free_passes = K, .gate = TB_GATE_INIT};
    const ew_subscribe_opts so = {.group = "lagged", .name = "h"};
    ew_bus *con, *pub;
    if (!cf_be()->durable) {
        CF_OPEN(con, &ns, "svc-l", NULL);
        tb_subscribe(con, "user.logged_in", cf_lag_handle, &h, &so);
        tb_start(con);
        assert_int_equal(cf_lag_of(con, "lagged"), 0);
        for (int i = 0; i < N; i++)
            tb_publish_owned(con, tb_event(EW_T_USER_LOGGED_IN, subject));
        tb_gate_wait_arrivals(&h.gate, 1);
        assert_int_equal(atomic_load(&h.handled), K);
        cf_wait_lag(con, "lagged", N - K, "K handled, one in the handler");
        tb_gate_open(&h.gate);
        cf_wait_lag(con, "lagged", 0, "all handled");
        assert_int_equal(atomic_load(&h.handled), N);
        assert_int_equal(
            ew_bus_lag(con, "nobody", cf_lag_record, &(cf_lag_seen){.group = ""}, &err),
            EW_ENOTFOUND);
        tb_close(con);
        return;
    }
    h.free_passes = N; /* nobody waits */
    CF_OPEN(con, &ns, "svc-l", NULL);
    tb_subscribe(con, "user.logged_in", cf_lag_handle, &h, &so);
    tb_start(con);
    for (int i = 0; i < K; i++)
        tb_publish_owned(con, tb_event(EW_T_USER_LOGGED_IN, subject));
    cf_wait_count(&h.handled, K, CF_TIMEOUT_MS, "first events handled");
    cf_wait_lag(con, "lagged", 0, "first events acknowledged");
    tb_close(con); /* the group's consumers are gone; its record stays */

    CF_OPEN(pub, &ns, "publisher", NULL);
    tb_start(pub);
    for (int i = K; i < N; i++)
        tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_IN, subject));
    cf_wait_lag(pub, "lagged", N - K, "published while nobody consumed");
    usleep(200000); /* and it stays there: nothing consumes */
    assert_int_equal(cf_lag_of(pub, "lagged"), N - K);

    /* Every group at once, where the backend lists them. */
    cf_lag_seen all = {.group = "lagged"};
    int rc = ew_bus_lag(pub, NULL, cf_lag_record, &all, &err);
    if (rc == 0) {
        assert_int_equal(all.matches, 1);
        assert_int_equal(all.lag, N - K);
    } else {
        assert_int_equal(rc, EW_ENOTSUP);
    }
    err = (ew_error){0};
    assert_int_equal(ew_bus_lag(pub, "nobody", cf_lag_record, &(cf_lag_seen){.group = ""}, &err),
                     EW_ENOTFOUND);

    CF_OPEN(con, &ns, "svc-l", NULL);
    tb_subscribe(con, "user.logged_in", cf_lag_handle, &h, &so);
    tb_start(con);
    cf_wait_count(&h.handled, N, CF_TIMEOUT_MS, "the rest handled");
    cf_wait_lag(pub, "lagged", 0, "the rest acknowledged");
    tb_close(con);
    tb_close(pub);
}

/* ---- authenticated events (docs/bus-auth.md) ---------------------------------------------- */

/* A key store, the services' keys and a policy of their own, in a folder of the test's. */
typedef struct cf_auth {
    char dir[64];
    ew_config *cfg;
    ew_keys *keys;
    ew_policy *policy;
} cf_auth;

static inline ew_evauth *cf_auth_as(cf_auth *a, const char *service)
{
    ew_evauth *e;
    ew_error err = {0};
    ew_evauth_options o = {
        .config = a->cfg, .service = service, .keys = a->keys, .policy = a->policy};
    if (ew_evauth_open(&e, &o, &err)) fail_msg("ew_evauth_open(%s): %s", service, err.msg);
    return e;
}

static inline void cf_auth_init(cf_auth *a)
{
    static const char policy[] =
        "publish auth-service user.*\n"
        "publish export-service user.data_export_completed\n"
        "publish ewctl eventwire.redelivery\n"
        "subscribe user-service user.deletion_requested user.logged_in user.registered\n";
    snprintf(a->dir, sizeof a->dir, "/tmp/ew-cfauth-XXXXXX");
    assert_non_null(mkdtemp(a->dir));
    char url[128];
    ew_error err = {0};
    snprintf(url, sizeof url, "sqlite:%s/keys.db", a->dir);
    assert_int_equal(ew_config_new(&a->cfg, &err), 0);
    assert_int_equal(ew_config_set(a->cfg, "KEY_STORE_URL", url, &err), 0);
    assert_int_equal(ew_keys_open(&a->keys, &(ew_keys_options){.config = a->cfg}, &err), 0);
    assert_int_equal(ew_policy_parse(&a->policy, policy, strlen(policy), "cf", &err), 0);
}

static inline void cf_auth_release(cf_auth *a)
{
    ew_keys_close(a->keys);
    ew_policy_free(a->policy);
    ew_config_free(a->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", a->dir);
    assert_int_equal(system(cmd), 0);
}

/* s with the first `from` replaced by `to`, malloc'ed. */
static inline char *cf_str_edited(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    assert_non_null(at);
    size_t fl = strlen(from), tl = strlen(to);
    char *out = malloc(strlen(s) + tl + 1);
    memcpy(out, s, (size_t)(at - s));
    memcpy(out + (at - s), to, tl);
    strcpy(out + (at - s) + tl, at + fl);
    return out;
}

/* ev's structured JSON with the first `from` replaced by `to` (from NULL: as it is), as bytes a
 * client without the key writes to the broker. malloc'ed. */
static inline char *cf_json_edited(const ew_event *ev, const char *from, const char *to)
{
    char *json;
    ew_error err = {0};
    assert_int_equal(ew_event_encode(ev, &json, NULL, &err), 0);
    if (!from) return json;
    char *out = cf_str_edited(json, from, to);
    free(json);
    return out;
}

static inline ew_event *cf_deletion(const char *source, const char *user)
{
    char rid[EW_UUID_LEN + 1];
    ew_uuid7(rid);
    ew_user_deletion_requested d = {.request_id = rid, .user_id = user};
    ew_event *ev;
    ew_error err = {0};
    assert_int_equal(ew_user_deletion_requested_new(
                         &ev, &d, &(ew_event_attrs){.source = source, .subject = user}, &err),
                     0);
    return ev;
}

/* Forged events written straight to the broker (or the log) by a client without the key:
 * unauthenticated, signed with another service's key, tampered, replayed under another type, and
 * well signed but outside the policy — each is dead-lettered once with its reason and never
 * handled (a forged user.deletion_requested deletes nothing), while the real publisher's event
 * is handled; a publish outside the policy fails with EW_EPERM before anything leaves. */
static inline void cf_forged_events_are_dead_lettered(void **state)
{
    if (!cf_be()->inject_raw) skip();
    cf_ns ns = cf_new_ns("frg");
    cf_auth au;
    cf_auth_init(&au);
    ew_evauth *user = cf_auth_as(&au, "user-service"), *auth = cf_auth_as(&au, "auth-service"),
              *exp = cf_auth_as(&au, "export-service");
    ew_bus *bus, *pub;
    CF_OPEN(bus, &ns, "user-service", &(ew_bus_options){.auth = user});
    cf_seen deleted, logins;
    cf_seen_init(&deleted, 100);
    cf_seen_init(&logins, 100);
    tb_subscribe(bus, "user.deletion_requested", cf_record, &deleted,
                 &(ew_subscribe_opts){.name = "delete"});
    tb_subscribe(bus, "user.logged_in", cf_record, &logins, &(ew_subscribe_opts){.name = "login"});
    ew_error err = {0};
    /* subscribing outside the policy is refused */
    assert_int_equal(ew_bus_subscribe(bus, "user.role_changed", cf_record, &logins,
                                      &(ew_subscribe_opts){.name = "roles"}, &err),
                     EW_EPERM);
    tb_start(bus);

    const char *victim = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    /* 1. unauthenticated */
    ew_event *plain = cf_deletion("auth-service", victim);
    /* 2. another service's key on auth-service's event */
    ew_event *other = cf_deletion("auth-service", victim), *other_s;
    assert_int_equal(ew_evauth_sign(exp, other, &other_s, &err), 0);
    /* 3. tampered: auth-service's real event, for another user */
    ew_event *real = cf_deletion("auth-service", "0192d3c4-0000-7a8b-9c0d-1e2f3a4b5c6d"), *real_s;
    assert_int_equal(ew_evauth_sign(auth, real, &real_s, &err), 0);
    /* 4. replayed under another type: a logout, signed, as a login */
    ew_user_logged_out lo = {.user_id = victim, .session_id = "s1"};
    ew_event *out, *out_s;
    assert_int_equal(
        ew_user_logged_out_new(&out, &lo, &(ew_event_attrs){.source = "auth-service"}, &err), 0);
    assert_int_equal(ew_evauth_sign(auth, out, &out_s, &err), 0);
    char *retyped0 =
        cf_json_edited(out_s, "\"type\":\"user.logged_out\"", "\"type\":\"user.logged_in\"");
    /* its dataschema names the type too: both changed, as a forger would */
    char *retyped = cf_str_edited(retyped0, "schema:user.logged_out:", "schema:user.logged_in:");
    free(retyped0);
    /* 5. well signed, outside the policy: export-service may not ask for deletions */
    ew_event *exp_ev = cf_deletion("export-service", victim), *exp_s;
    assert_int_equal(ew_evauth_sign(exp, exp_ev, &exp_s, &err), 0);

    char *bytes[5] = {cf_json_edited(plain, NULL, NULL), cf_json_edited(other_s, NULL, NULL),
                      cf_json_edited(real_s, "0192d3c4-0000-", "0192d3c4-5e6f-"), retyped,
                      cf_json_edited(exp_s, NULL, NULL)};
    const char *types[5] = {"user.deletion_requested", "user.deletion_requested",
                            "user.deletion_requested", "user.logged_in", "user.deletion_requested"};
    const char *reasons[5] = {"EW_EAUTH: unauthenticated", "belongs to service:export-service",
                              "does not verify", "does not verify",
                              "EW_EPERM: the policy does not let export-service"};
    for (int i = 0; i < 5; i++)
        assert_int_equal(cf_be()->inject_raw(ns.name, types[i], bytes[i], strlen(bytes[i])), 0);

    /* the real publisher, through its own bus: handled */
    CF_OPEN(pub, &ns, "auth-service", &(ew_bus_options){.auth = auth});
    tb_start(pub);
    ew_event *good = cf_deletion("auth-service", victim);
    assert_int_equal(ew_bus_publish(pub, good, &err), 0);
    cf_wait_count(&deleted.distinct, 1, CF_TIMEOUT_MS, "the real deletion request");
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (ew_memdlq_count(q) < 5 && ew_mono_ns() < end)
        usleep(2000);
    usleep(200000); /* a moment for a handler call or a second copy, were there one */
    assert_int_equal(ew_memdlq_count(q), 5);
    int found[5] = {0};
    for (size_t i = 0; i < 5; i++) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(q, i, &e), 0);
        assert_string_equal(e.group, "user-service");
        assert_int_equal(strncmp(e.transport, cf_be()->name, strlen(cf_be()->name)), 0);
        for (int k = 0; k < 5; k++)
            if (strstr(e.error, reasons[k]) && strcmp(e.event_type, types[k]) == 0) found[k]++;
        ew_memdlq_entry_release(&e);
    }
    for (int k = 0; k < 5; k++)
        if (found[k] != 1)
            fail_msg("forgery %d (%s): %d dead letters", k + 1, reasons[k], found[k]);
    /* nothing forged was handled: one deletion (the real one), no login */
    assert_int_equal(atomic_load(&deleted.total), 1);
    assert_int_equal(cf_seen_times(&deleted, ew_event_id(good)), 1);
    assert_int_equal(atomic_load(&logins.total), 0);

    /* a publish outside the policy: refused here, nothing leaves */
    ew_event *mine = cf_deletion("user-service", victim);
    assert_int_equal(ew_bus_publish(bus, mine, &err), EW_EPERM);
    assert_non_null(strstr(err.msg, "does not let user-service publish"));
    usleep(200000);
    assert_int_equal(atomic_load(&deleted.total), 1);

    tb_close(pub);
    tb_close(bus);
    if (cf_be()->unsettled)
        assert_int_equal(cf_be()->unsettled(ns.name, "user-service", "user.deletion_requested"), 0);
    for (int i = 0; i < 5; i++)
        free(bytes[i]);
    ew_event *evs[] = {plain, other, other_s, real, real_s, out, out_s, exp_ev, exp_s, good, mine};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        ew_event_unref(evs[i]);
    cf_seen_release(&deleted);
    cf_seen_release(&logins);
    ew_evauth_close(user);
    ew_evauth_close(auth);
    ew_evauth_close(exp);
    cf_auth_release(&au);
}

/* A handler of user.registered that fails while `fail` is set, and counts the events it gets as
 * the latest version (roles, and the address in clear) when it does not. */
typedef struct cf_upcast_seen {
    atomic_int fail, handled, latest;
} cf_upcast_seen;

static inline ew_handler_result cf_upcast_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_upcast_seen *u = ud;
    if (atomic_load(&u->fail)) {
        ew_ctx_set_error(ctx, "profile database unavailable");
        return EW_HANDLER_FAIL;
    }
    const ew_user_registered *d = ew_user_registered_data(ev);
    if (d && ew_event_version(ev) == 2 && d->roles.count == 1 &&
        strcmp(d->roles.items[0], "user") == 0 && strcmp(d->email, "ada@example.com") == 0)
        atomic_fetch_add(&u->latest, 1);
    atomic_fetch_add(&u->handled, 1);
    return EW_HANDLER_OK;
}

static inline int cf_count_rows_fn(void *ud, const ew_dlq_row *r)
{
    (void)r;
    (*(int *)ud)++;
    return 0;
}

/* An event published at an older version of its type (user.registered v1) by a keyed service
 * verifies at a consumer whose catalog upcasts it to the current version, through the backend:
 * the handler gets the upcast event. Its dead letter keeps it as received, so that the retry of
 * it (read back from the dead letter queue and redelivered by another bus, as `ewctl dlq retry`
 * does) verifies too; nothing is refused on the way. */
static inline void cf_upcast_events_verify(void **state)
{
    if (!cf_be()->inject_raw) skip();
    cf_ns ns = cf_new_ns("upc");
    cf_auth au;
    cf_auth_init(&au);
    ew_evauth *user = cf_auth_as(&au, "user-service"), *auth = cf_auth_as(&au, "auth-service"),
              *ctl = cf_auth_as(&au, "ewctl");
    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.url = "sqlite::memory:"}, &err))
        fail_msg("%s", err.msg);
    ew_bus *bus, *pub, *ops;
    ew_bus_options bo = {.auth = user, .dlq = ew_store_dlq_sink(st)};
    CF_OPEN(bus, &ns, "user-service", &bo);
    cf_upcast_seen u = {.fail = 1};
    tb_subscribe(bus, "user.registered", cf_upcast_fn, &u,
                 &(ew_subscribe_opts){.name = "create-profile", .max_attempts = 1});
    tb_start(bus);
    CF_OPEN(pub, &ns, "auth-service", &(ew_bus_options){.auth = auth});
    tb_start(pub);
    CF_OPEN(ops, &ns, "ewctl", &(ew_bus_options){.auth = ctl});
    tb_start(ops);

    char uid[EW_UUID_LEN + 1];
    ew_uuid7(uid);
    ew_user_registered_v1 d1 = {.user_id = uid, .email = "ada@example.com", .username = "ada"};
    ew_event *v1;
    assert_int_equal(ew_event_new(&v1, EW_T_USER_REGISTERED_V1, &d1,
                                  &(ew_event_attrs){.source = "auth-service", .subject = uid},
                                  &err),
                     0);
    assert_int_equal(ew_bus_publish(pub, v1, &err), 0);

    /* it reached the handler (which failed): a dead letter of the handler, not of <decode> */
    int64_t id = 0, end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    ew_dlq_filter df = {.handler = "create-profile", .status = -1};
    while (id == 0 && ew_mono_ns() < end) {
        assert_int_equal(ew_store_dlq_list(st, &df, cf_first_dead_letter, &id, &err), 0);
        if (!id) usleep(5000);
    }
    int refused = 0;
    ew_dlq_filter rf = {.handler = "<decode>", .status = -1};
    assert_int_equal(ew_store_dlq_list(st, &rf, cf_count_rows_fn, &refused, &err), 0);
    if (!id) {
        ew_dlq_row r;
        int64_t rid = 0;
        ew_store_dlq_list(st, &rf, cf_first_dead_letter, &rid, NULL);
        if (rid && ew_store_dlq_get(st, rid, &r, NULL) == 0)
            fail_msg("the v1 event was refused: %s", r.error);
        fail_msg("the v1 event never reached its handler");
    }
    assert_int_equal(refused, 0);

    /* the operator retries it from another bus: the dead letter as stored, decoded and upcast */
    ew_dlq_row row;
    assert_int_equal(ew_store_dlq_get(st, id, &row, &err), 0);
    assert_non_null(strstr(row.error, "profile database unavailable"));
    assert_non_null(strstr(row.event, "\"eventversion\":1"));
    ew_event *dead;
    if (ew_event_decode(&dead, row.event, strlen(row.event), NULL, &err))
        fail_msg("the dead letter: %s", err.msg);
    assert_int_equal(ew_event_version(dead), 2);
    atomic_store(&u.fail, 0);
    assert_int_equal(ew_store_dlq_set_status(st, id, EW_DLQ_RETRIED, &err), 0);
    assert_int_equal(ew_bus_redeliver(ops, "user-service", "create-profile", dead, id, &err), 0);
    cf_wait_count(&u.handled, 1, CF_TIMEOUT_MS, "the retried v1 event");
    end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (cf_dlq_status(st, id) != EW_DLQ_RESOLVED && ew_mono_ns() < end)
        usleep(5000);
    assert_int_equal(cf_dlq_status(st, id), EW_DLQ_RESOLVED);
    usleep(200000); /* a moment for a refusal, were there one */
    refused = 0;
    assert_int_equal(ew_store_dlq_list(st, &rf, cf_count_rows_fn, &refused, &err), 0);
    assert_int_equal(refused, 0);
    assert_int_equal(atomic_load(&u.handled), 1);
    assert_int_equal(atomic_load(&u.latest), 1);

    tb_close(ops);
    tb_close(pub);
    tb_close(bus);
    ew_dlq_row_release(&row);
    ew_event_unref(dead);
    ew_event_unref(v1);
    ew_store_close(st);
    ew_evauth_close(user);
    ew_evauth_close(auth);
    ew_evauth_close(ctl);
    cf_auth_release(&au);
}

#define CF_TESTS                                                                                   \
    cmocka_unit_test(cf_publish_subscribe), cmocka_unit_test(cf_event_arrives_intact),             \
        cmocka_unit_test(cf_patterns), cmocka_unit_test(cf_groups),                                \
        cmocka_unit_test(cf_batch_publish), cmocka_unit_test(cf_retry_then_dead_letter),           \
        cmocka_unit_test(cf_inbox_absorbs_redelivery), cmocka_unit_test(cf_order_per_subject),     \
        cmocka_unit_test(cf_graceful_close), cmocka_unit_test(cf_consumer_killed_and_restarted),   \
        cmocka_unit_test(cf_broker_restart), cmocka_unit_test(cf_bad_input_is_dead_lettered),      \
        cmocka_unit_test(cf_dead_letter_sink_refuses), cmocka_unit_test(cf_from_beginning),        \
        cmocka_unit_test(cf_dead_letter_retry), cmocka_unit_test(cf_ephemeral_group),              \
        cmocka_unit_test(cf_consumer_lag)

/* The cases of the backends that carry events between processes (not the memory bus, whose
 * events never leave the process and are not checked). */
#define CF_WIRE_TESTS                                                                              \
    cmocka_unit_test(cf_forged_events_are_dead_lettered), cmocka_unit_test(cf_upcast_events_verify)

#endif
