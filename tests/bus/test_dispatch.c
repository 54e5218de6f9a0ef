/* Tests of the dispatcher, through a memory bus: retries and back-off, dead letters, routing by
 * pattern, groups and competing consumers, per-subject order, follow-up events, the inbox, the
 * handler context and the handler metrics. Back-offs are 1-5 ms without jitter; nothing here
 * waits on the clock to synchronise: wait_for_events, gates and atomics do. */
#include <stdlib.h>
#include <unistd.h>
#include "bus_test_util.h"

/* ---- retries and dead letters ------------------------------------------------------------- */

typedef struct attempts {
    pthread_mutex_t mu;
    int seen[16];
    int n;
    int ok_at; /* return ok on this attempt; 0: never */
    ew_handler_result otherwise;
} attempts;

#define ATTEMPTS_INIT(ok, other)                                                                   \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, {0}, 0, ok, other                                               \
    }

static ew_handler_result record_attempt(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    attempts *a = ud;
    int at = ew_ctx_attempt(ctx);
    pthread_mutex_lock(&a->mu);
    if (a->n < 16) a->seen[a->n++] = at;
    pthread_mutex_unlock(&a->mu);
    if (at == a->ok_at) return EW_HANDLER_OK;
    ew_ctx_set_error(ctx, "boom on attempt %d", at);
    return a->otherwise;
}

static void test_retry_then_succeed(void **state)
{
    ew_bus *bus = tb_open(NULL);
    attempts a = ATTEMPTS_INIT(3, EW_HANDLER_RETRY);
    tb_subscribe(
        bus, "user.registered", record_attempt, &a,
        &(ew_subscribe_opts){
            .max_attempts = 5, .backoff_initial_ms = 1, .backoff_max_ms = 5, .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(a.n, 3);
    assert_int_equal(a.seen[0], 1);
    assert_int_equal(a.seen[1], 2);
    assert_int_equal(a.seen[2], 3);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_int_equal(s.received, 3);
    assert_int_equal(s.retried, 2);
    assert_int_equal(s.handled, 1);
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 0);
    tb_close(bus);
}

static void test_retries_exhausted_go_to_dead_letters(void **state)
{
    ew_bus *bus = tb_open(NULL);
    attempts a = ATTEMPTS_INIT(0, EW_HANDLER_RETRY);
    tb_subscribe(bus, "user.registered", record_attempt, &a,
                 &(ew_subscribe_opts){.group = "billing",
                                      .name = "charge",
                                      .max_attempts = 4,
                                      .backoff_initial_ms = 1,
                                      .backoff_max_ms = 2,
                                      .no_jitter = true});
    tb_start(bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    tb_wait(bus);

    assert_int_equal(a.n, 4);
    ew_memdlq *dlq = ew_bus_dead_letters(bus);
    assert_int_equal(ew_memdlq_count(dlq), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(dlq, 0, &e), 0);
    assert_string_equal(e.error, "boom on attempt 4");
    assert_int_equal(e.attempts, 4);
    assert_true(e.first_failed_us > 0);
    assert_true(e.first_failed_us <= e.last_failed_us);
    assert_string_equal(e.group, "billing");
    assert_string_equal(e.handler, "charge");
    assert_string_equal(e.event_id, ew_event_id(ev));
    assert_string_equal(e.event_type, "user.registered");
    assert_non_null(e.event);
    assert_true(ew_event_equal(e.event, ev));
    ew_memdlq_entry_release(&e);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_int_equal(s.retried, 3);
    assert_int_equal(s.dead_lettered, 1);
    assert_int_equal(s.handled, 0);
    ew_event_unref(ev);
    tb_close(bus);
}

static void test_fail_dead_letters_at_once(void **state)
{
    ew_bus *bus = tb_open(NULL);
    attempts a = ATTEMPTS_INIT(0, EW_HANDLER_FAIL);
    tb_subscribe(
        bus, "user.registered", record_attempt, &a,
        &(ew_subscribe_opts){.max_attempts = 5, .backoff_initial_ms = 1, .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(a.n, 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(ew_bus_dead_letters(bus), 0, &e), 0);
    assert_int_equal(e.attempts, 1);
    assert_string_equal(e.error, "boom on attempt 1");
    assert_int_equal(e.first_failed_us, e.last_failed_us);
    ew_memdlq_entry_release(&e);
    assert_int_equal(tb_stats(bus, 0).retried, 0);
    tb_close(bus);
}

static ew_handler_result bad_result(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    return (ew_handler_result)42;
}

static ew_handler_result silent_retry(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    return EW_HANDLER_RETRY;
}

static void test_dead_letter_reasons_without_set_error(void **state)
{
    ew_bus *bus = tb_open(NULL);
    tb_subscribe(bus, "user.registered", bad_result, NULL, &(ew_subscribe_opts){.group = "a"});
    tb_subscribe(bus, "user.registered", silent_retry, NULL,
                 &(ew_subscribe_opts){.group = "b", .max_attempts = 1});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    ew_memdlq *dlq = ew_bus_dead_letters(bus);
    assert_int_equal(ew_memdlq_count(dlq), 2);
    for (size_t i = 0; i < 2; i++) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(dlq, i, &e), 0);
        assert_int_equal(e.attempts, 1);
        if (strcmp(e.group, "a") == 0)
            assert_non_null(strstr(e.error, "returned 42"));
        else
            assert_non_null(strstr(e.error, "retry"));
        ew_memdlq_entry_release(&e);
    }
    tb_close(bus);
}

/* A sink that refuses the first puts: the dispatcher must keep trying, never drop. */
typedef struct flaky_sink {
    atomic_int refusals_left, puts;
    ew_memdlq *q;
} flaky_sink;

static int flaky_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    flaky_sink *f = self;
    atomic_fetch_add(&f->puts, 1);
    if (atomic_fetch_sub(&f->refusals_left, 1) > 0)
        return ew_error_set(err, EW_EIO, "disk on fire");
    ew_dlq_sink inner = ew_memdlq_sink(f->q);
    return inner.ops->put(inner.self, dl, err);
}

static void test_dead_letter_sink_failure_is_retried(void **state)
{
    static const ew_dlq_sink_ops flaky_ops = {.version = 1, .put = flaky_put};
    flaky_sink f = {.refusals_left = 3};
    assert_int_equal(ew_memdlq_new(&f.q, NULL), 0);
    tb_log log = TB_LOG_INIT;
    ew_bus *bus =
        tb_open(&(ew_bus_options){.dlq = {&flaky_ops, &f}, .log = tb_log_fn, .log_ud = &log});
    attempts a = ATTEMPTS_INIT(0, EW_HANDLER_FAIL);
    tb_subscribe(
        bus, "user.registered", record_attempt, &a,
        &(ew_subscribe_opts){.backoff_initial_ms = 1, .backoff_max_ms = 2, .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(atomic_load(&f.puts), 4);
    assert_int_equal(ew_memdlq_count(f.q), 1);
    assert_true(tb_log_has(&log, "disk on fire"));
    assert_int_equal(log.errors, 3);
    assert_int_equal(a.n, 1); /* the handler is not run again for it */
    tb_close(bus);
    ew_memdlq_free(f.q);
}

/* ---- routing ------------------------------------------------------------------------------ */

static void test_patterns_route_correctly(void **state)
{
    ew_bus *bus = tb_open(NULL);
    static const char *const patterns[] = {"user.*",
                                           "user.#",
                                           "*",
                                           "#",
                                           "user.registered",
                                           "password.*",
                                           "saga.completed",
                                           "user.registered.x",
                                           "notification.*"};
    enum { NP = sizeof patterns / sizeof patterns[0] };
    atomic_int n[NP];
    for (int i = 0; i < NP; i++) {
        atomic_init(&n[i], 0);
        tb_subscribe(bus, patterns[i], tb_count, &n[i], NULL);
    }
    tb_start(bus);
    /* 1 user.registered, 2 user.logged_in, 3 password.reset_requested, 4 saga.completed */
    ew_type_id types[] = {EW_T_USER_REGISTERED,          EW_T_USER_LOGGED_IN,
                          EW_T_USER_LOGGED_IN,           EW_T_PASSWORD_RESET_REQUESTED,
                          EW_T_PASSWORD_RESET_REQUESTED, EW_T_PASSWORD_RESET_REQUESTED,
                          EW_T_SAGA_COMPLETED,           EW_T_SAGA_COMPLETED,
                          EW_T_SAGA_COMPLETED,           EW_T_SAGA_COMPLETED};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        tb_publish_owned(bus, tb_event(types[i], NULL));
    tb_wait(bus);
    int want[NP] = {3, 3, 10, 10, 1, 3, 4, 0, 0};
    for (int i = 0; i < NP; i++) {
        if (atomic_load(&n[i]) != want[i])
            fail_msg("%s got %d events, want %d", patterns[i], atomic_load(&n[i]), want[i]);
    }
    tb_close(bus);
}

static void test_two_groups_both_receive_every_event(void **state)
{
    ew_bus *bus = tb_open(NULL);
    atomic_int a = 0, b = 0;
    tb_subscribe(bus, "user.registered", tb_count, &a,
                 &(ew_subscribe_opts){.group = "user-service", .concurrency = 2});
    tb_subscribe(bus, "user.registered", tb_count, &b,
                 &(ew_subscribe_opts){.group = "notification-service"});
    tb_start(bus);
    for (int i = 0; i < 500; i++)
        tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(atomic_load(&a), 500);
    assert_int_equal(atomic_load(&b), 500);
    tb_close(bus);
}

static void test_different_names_in_one_group_each_receive(void **state)
{
    ew_bus *bus = tb_open(NULL);
    atomic_int a = 0, b = 0;
    tb_subscribe(bus, "user.registered", tb_count, &a, &(ew_subscribe_opts){.name = "profile"});
    tb_subscribe(bus, "user.*", tb_count, &b, &(ew_subscribe_opts){.name = "audit"});
    tb_start(bus);
    for (int i = 0; i < 50; i++)
        tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(atomic_load(&a), 50);
    assert_int_equal(atomic_load(&b), 50);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_string_equal(s.group, TB_SERVICE); /* the default group */
    assert_string_equal(s.name, "profile");
    assert_string_equal(s.pattern, "user.registered");
    tb_close(bus);
}

/* Competing consumers: each records the event ids it got. */
#define CC_EVENTS 1000

typedef struct consumer {
    pthread_mutex_t mu;
    char (*ids)[EW_UUID_LEN + 1];
    int n;
} consumer;

static ew_handler_result consume(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    consumer *c = ud;
    pthread_mutex_lock(&c->mu);
    snprintf(c->ids[c->n++], EW_UUID_LEN + 1, "%s", ew_event_id(ev));
    pthread_mutex_unlock(&c->mu);
    return EW_HANDLER_OK;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_competing_consumers_each_event_once(void **state)
{
    ew_bus *bus = tb_open(NULL);
    consumer c1 = {.mu = PTHREAD_MUTEX_INITIALIZER}, c2 = {.mu = PTHREAD_MUTEX_INITIALIZER};
    c1.ids = calloc(CC_EVENTS, sizeof *c1.ids);
    c2.ids = calloc(CC_EVENTS, sizeof *c2.ids);
    ew_subscribe_opts o = {.group = "workers", .name = "job", .concurrency = 2};
    tb_subscribe(bus, "user.registered", consume, &c1, &o);
    tb_start(bus); /* the second instance joins a running subscription */
    tb_subscribe(bus, "user.registered", consume, &c2, &o);
    /* The same name with another pattern is a different handler: refused. */
    ew_error err = {0};
    assert_int_equal(ew_bus_subscribe(bus, "user.*", consume, &c2, &o, &err), EW_EEXIST);

    char(*published)[EW_UUID_LEN + 1] = calloc(CC_EVENTS, sizeof *published);
    for (int i = 0; i < CC_EVENTS; i++) {
        ew_event *ev = tb_user_registered();
        snprintf(published[i], EW_UUID_LEN + 1, "%s", ew_event_id(ev));
        tb_publish_owned(bus, ev);
    }
    tb_wait(bus);

    assert_int_equal(c1.n + c2.n, CC_EVENTS);
    assert_true(c1.n > 0);
    assert_true(c2.n > 0);
    char(*all)[EW_UUID_LEN + 1] = calloc(CC_EVENTS, sizeof *all);
    memcpy(all, c1.ids, (size_t)c1.n * sizeof *all);
    memcpy(all + c1.n, c2.ids, (size_t)c2.n * sizeof *all);
    qsort(all, CC_EVENTS, sizeof *all, cmp_id);
    qsort(published, CC_EVENTS, sizeof *published, cmp_id);
    for (int i = 0; i < CC_EVENTS; i++)
        assert_string_equal(all[i], published[i]);

    ew_bus_stats st;
    ew_bus_stats_get(bus, &st);
    assert_int_equal(st.subscriptions, 1);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_int_equal(s.consumers, 4);
    assert_int_equal(s.handled, CC_EVENTS);
    free(all);
    free(published);
    free(c1.ids);
    free(c2.ids);
    tb_close(bus);
}

/* ---- order -------------------------------------------------------------------------------- */

#define ORDER_SUBJECTS 64
#define ORDER_PER_SUBJECT 100

typedef struct order {
    char subjects[ORDER_SUBJECTS][EW_UUID_LEN + 1];
    long next[ORDER_SUBJECTS]; /* each subject is handled by one worker at a time */
    atomic_int violations, handled;
} order;

static ew_handler_result check_order(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    order *o = ud;
    const ew_user_logged_in *d = ew_user_logged_in_data(ev);
    long seq = strtol(d->session_id, NULL, 10);
    int subj = -1;
    for (int i = 0; i < ORDER_SUBJECTS && subj < 0; i++)
        if (strcmp(o->subjects[i], ew_event_subject(ev)) == 0) subj = i;
    /* Every seventh event fails once first: the retry must hold back the subject's later ones. */
    if (seq % 7 == 3 && ew_ctx_attempt(ctx) == 1) return EW_HANDLER_RETRY;
    if (subj < 0 || seq != o->next[subj]) atomic_fetch_add(&o->violations, 1);
    if (subj >= 0) o->next[subj] = seq + 1;
    atomic_fetch_add(&o->handled, 1);
    return EW_HANDLER_OK;
}

static void test_per_subject_order_with_concurrency_4(void **state)
{
    ew_bus *bus = tb_open(NULL);
    order *o = calloc(1, sizeof *o);
    for (int i = 0; i < ORDER_SUBJECTS; i++)
        ew_uuid7(o->subjects[i]);
    tb_subscribe(
        bus, "user.logged_in", check_order, o,
        &(ew_subscribe_opts){.concurrency = 4, .backoff_initial_ms = 1, .no_jitter = true});
    tb_start(bus);
    for (long seq = 0; seq < ORDER_PER_SUBJECT; seq++)
        for (int i = 0; i < ORDER_SUBJECTS; i++)
            tb_publish_owned(bus, tb_event_full(EW_T_USER_LOGGED_IN, o->subjects[i], seq, NULL));
    tb_wait(bus);
    assert_int_equal(atomic_load(&o->violations), 0);
    assert_int_equal(atomic_load(&o->handled), ORDER_SUBJECTS * ORDER_PER_SUBJECT);
    for (int i = 0; i < ORDER_SUBJECTS; i++)
        assert_int_equal(o->next[i], ORDER_PER_SUBJECT);
    tb_close(bus);
    free(o);
}

/* ---- follow-ups --------------------------------------------------------------------------- */

typedef struct chain {
    attempts parent; /* ok_at: the attempt that returns ok */
    pthread_mutex_t mu;
    int follow_ups;
    char correlation[64], causation[64], source[64], traceparent[64];
} chain;

static ew_handler_result publish_profile(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    chain *c = ud;
    const ew_user_registered *u = ew_user_registered_data(ev);
    ew_user_profile_created p = {.user_id = u->user_id, .display_name = u->username};
    ew_error err = {0};
    if (ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &p, u->user_id, &err))
        fail_msg("%s", err.msg);
    return record_attempt(ev, ctx, &c->parent);
}

static ew_handler_result record_follow_up(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    chain *c = ud;
    pthread_mutex_lock(&c->mu);
    c->follow_ups++;
    snprintf(c->correlation, sizeof c->correlation, "%s", ew_event_correlation_id(ev));
    snprintf(c->causation, sizeof c->causation, "%s",
             ew_event_causation_id(ev) ? ew_event_causation_id(ev) : "");
    snprintf(c->source, sizeof c->source, "%s", ew_event_source(ev));
    snprintf(c->traceparent, sizeof c->traceparent, "%s",
             ew_event_traceparent(ev) ? ew_event_traceparent(ev) : "");
    pthread_mutex_unlock(&c->mu);
    return EW_HANDLER_OK;
}

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define CORRELATION "0190a8e6-0b7a-7cc1-8b7e-5f2d3c4b5a69"

static void run_chain(chain *c, int *follow_ups, const char **parent_id)
{
    ew_bus *bus = tb_open(NULL);
    tb_subscribe(bus, "user.registered", publish_profile, c,
                 &(ew_subscribe_opts){.group = "user-service",
                                      .max_attempts = 3,
                                      .backoff_initial_ms = 1,
                                      .no_jitter = true});
    tb_subscribe(bus, "user.profile_created", record_follow_up, c,
                 &(ew_subscribe_opts){.group = "auth-service"});
    tb_start(bus);
    ew_event *ev =
        tb_event_full(EW_T_USER_REGISTERED, NULL, 0,
                      &(ew_event_attrs){.correlation_id = CORRELATION, .traceparent = TRACEPARENT});
    static char id[EW_UUID_LEN + 1];
    snprintf(id, sizeof id, "%s", ew_event_id(ev));
    *parent_id = id;
    tb_publish_owned(bus, ev);
    tb_wait(bus); /* covers the follow-up too */
    *follow_ups = c->follow_ups;
    ew_bus_stats st;
    ew_bus_stats_get(bus, &st);
    assert_int_equal(st.pending, 0);
    tb_close(bus);
}

static void test_follow_up_inherits_correlation_and_causation(void **state)
{
    chain c = {.parent = ATTEMPTS_INIT(1, EW_HANDLER_RETRY), .mu = PTHREAD_MUTEX_INITIALIZER};
    int n;
    const char *parent_id;
    run_chain(&c, &n, &parent_id);
    assert_int_equal(n, 1);
    assert_string_equal(c.correlation, CORRELATION);
    assert_string_equal(c.causation, parent_id);
    assert_string_equal(c.source, TB_SERVICE);
    /* the same trace; the span is the handler's, a child of the event's (W3C trace context) */
    ew_trace_ctx parent, follow_up;
    assert_true(ew_trace_parse(TRACEPARENT, &parent));
    assert_true(ew_trace_parse(c.traceparent, &follow_up));
    assert_memory_equal(follow_up.trace_id, parent.trace_id, 16);
    assert_memory_not_equal(follow_up.span_id, parent.span_id, 8);
    assert_int_equal(follow_up.flags, parent.flags);
}

static void test_follow_up_published_once_after_retries(void **state)
{
    chain c = {.parent = ATTEMPTS_INIT(3, EW_HANDLER_RETRY), .mu = PTHREAD_MUTEX_INITIALIZER};
    int n;
    const char *parent_id;
    run_chain(&c, &n, &parent_id);
    assert_int_equal(c.parent.n, 3); /* published on each of 3 attempts ... */
    assert_int_equal(n, 1);          /* ... and out once, after the ok */
    assert_string_equal(c.causation, parent_id);
}

static void test_follow_up_dropped_when_handler_fails(void **state)
{
    chain c = {.parent = ATTEMPTS_INIT(0, EW_HANDLER_FAIL), .mu = PTHREAD_MUTEX_INITIALIZER};
    int n;
    const char *parent_id;
    run_chain(&c, &n, &parent_id);
    assert_int_equal(c.parent.n, 1);
    assert_int_equal(n, 0);
}

/* ---- the inbox ---------------------------------------------------------------------------- */

static void test_inbox_skips_redelivered_event(void **state)
{
    ew_meminbox *ib;
    assert_int_equal(ew_meminbox_new(&ib, NULL), 0);
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = ew_meminbox_inbox(ib)});
    atomic_int n = 0, unchecked = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_subscribe(bus, "user.registered", tb_count, &unchecked,
                 &(ew_subscribe_opts){.name = "unchecked", .no_inbox = true});
    tb_start(bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    tb_wait(bus);
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0); /* the same id again */
    tb_wait(bus);
    assert_int_equal(atomic_load(&n), 1);
    assert_int_equal(atomic_load(&unchecked), 2);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_int_equal(s.duplicates, 1);
    assert_int_equal(s.handled, 1);
    assert_int_equal(tb_stats(bus, 1).duplicates, 0);
    assert_int_equal(ew_meminbox_count(ib), 1);
    ew_event_unref(ev);
    tb_close(bus);
    ew_meminbox_free(ib);
}

/* An inbox that records what the dispatcher asks of it. */
typedef struct spy_inbox {
    pthread_mutex_t mu;
    char handler[128];
    int begins, commits, rollbacks;
    int txn_token;
    void *txn_seen_by_handler;
    int fail_commits; /* commits to refuse */
} spy_inbox;

static int spy_begin(void *self, const char *handler, const char *event_id, void **txn,
                     ew_error *err)
{
    spy_inbox *s = self;
    pthread_mutex_lock(&s->mu);
    snprintf(s->handler, sizeof s->handler, "%s", handler);
    s->begins++;
    pthread_mutex_unlock(&s->mu);
    *txn = &s->txn_token;
    return 0;
}

static int spy_commit(void *self, const char *handler, const char *event_id, void *txn,
                      ew_error *err)
{
    spy_inbox *s = self;
    pthread_mutex_lock(&s->mu);
    s->commits++;
    int refuse = s->fail_commits > 0 ? s->fail_commits-- : 0;
    pthread_mutex_unlock(&s->mu);
    return refuse ? ew_error_set(err, EW_EIO, "commit refused") : 0;
}

static void spy_rollback(void *self, void *txn)
{
    spy_inbox *s = self;
    pthread_mutex_lock(&s->mu);
    s->rollbacks++;
    pthread_mutex_unlock(&s->mu);
}

static const ew_inbox_ops spy_ops = {
    .version = 1, .begin = spy_begin, .commit = spy_commit, .rollback = spy_rollback};

static ew_handler_result take_txn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    spy_inbox *s = ud;
    s->txn_seen_by_handler = ew_ctx_txn(ctx);
    return ew_ctx_attempt(ctx) < 2 ? EW_HANDLER_RETRY : EW_HANDLER_OK;
}

static void test_inbox_hooks_around_the_handler(void **state)
{
    spy_inbox spy = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_commits = 1};
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = {&spy_ops, &spy}});
    tb_subscribe(bus, "user.registered", take_txn, &spy,
                 &(ew_subscribe_opts){.group = "billing",
                                      .name = "charge",
                                      .max_attempts = 5,
                                      .backoff_initial_ms = 1,
                                      .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    /* attempt 1: retry → rollback; 2: ok, commit refused → retried; 3: ok, committed. */
    assert_string_equal(spy.handler, "billing/charge");
    assert_int_equal(spy.begins, 3);
    assert_int_equal(spy.rollbacks, 1);
    assert_int_equal(spy.commits, 2);
    assert_ptr_equal(spy.txn_seen_by_handler, &spy.txn_token);
    ew_handler_stats s = tb_stats(bus, 0);
    assert_int_equal(s.handled, 1);
    assert_int_equal(s.retried, 2);
    tb_close(bus);
}

/* The outcome of each handler call as its span reports it, in order. */
typedef struct span_errors {
    pthread_mutex_t mu;
    bool error[8];
    int n;
} span_errors;

static void note_span_error(void *ud, const ew_span *sp)
{
    span_errors *e = ud;
    pthread_mutex_lock(&e->mu);
    if (e->n < 8) e->error[e->n++] = sp->error;
    pthread_mutex_unlock(&e->mu);
}

/* A span ends when its call is settled: a call whose handler said ok and whose inbox commit
 * failed (so that it runs again) is an error, as the retry it turns into. */
static void test_a_span_reports_the_settled_outcome(void **state)
{
    spy_inbox spy = {.mu = PTHREAD_MUTEX_INITIALIZER, .fail_commits = 1};
    span_errors se = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(
        &(ew_bus_options){.inbox = {&spy_ops, &spy}, .span = note_span_error, .span_ud = &se});
    tb_subscribe(bus, "user.registered", take_txn, &spy,
                 &(ew_subscribe_opts){.group = "billing",
                                      .name = "charge",
                                      .max_attempts = 5,
                                      .backoff_initial_ms = 1,
                                      .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    tb_close(bus);
    /* attempt 1: the handler said retry; 2: ok, commit refused; 3: ok, committed */
    assert_int_equal(se.n, 3);
    assert_true(se.error[0]);
    assert_true(se.error[1]);
    assert_false(se.error[2]);
}

static void test_inbox_does_not_record_dead_letters(void **state)
{
    ew_meminbox *ib;
    assert_int_equal(ew_meminbox_new(&ib, NULL), 0);
    ew_bus *bus = tb_open(&(ew_bus_options){.inbox = ew_meminbox_inbox(ib)});
    attempts a = ATTEMPTS_INIT(0, EW_HANDLER_FAIL);
    tb_subscribe(bus, "user.registered", record_attempt, &a, NULL);
    tb_start(bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    tb_wait(bus);
    assert_int_equal(ew_meminbox_count(ib), 0);
    /* Retrying the dead letter runs the handler again. */
    a.ok_at = 1;
    assert_int_equal(ew_bus_deliver_to(bus, TB_SERVICE, "user.registered", ev, &err), 0);
    tb_wait(bus);
    assert_int_equal(a.n, 2);
    assert_int_equal(ew_meminbox_count(ib), 1);
    ew_event_unref(ev);
    tb_close(bus);
    ew_meminbox_free(ib);
}

/* ---- the context -------------------------------------------------------------------------- */

typedef struct ctx_seen {
    char group[64], handler[64];
    void *txn;
    int attempt;
} ctx_seen;

static ew_handler_result look_at_ctx(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ctx_seen *s = ud;
    snprintf(s->group, sizeof s->group, "%s", ew_ctx_group(ctx));
    snprintf(s->handler, sizeof s->handler, "%s", ew_ctx_handler(ctx));
    s->txn = ew_ctx_txn(ctx);
    s->attempt = ew_ctx_attempt(ctx);
    ew_event_attrs a;
    ew_ctx_follow_up_attrs(ctx, &a);
    if (strcmp(a.causation_id, ew_event_id(ev)) != 0) s->attempt = -1;
    return EW_HANDLER_OK;
}

static void test_handler_context(void **state)
{
    ew_bus *bus = tb_open(NULL);
    ctx_seen s = {.txn = &s};
    tb_subscribe(bus, "user.*", look_at_ctx, &s, &(ew_subscribe_opts){.group = "g1"});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_string_equal(s.group, "g1");
    assert_string_equal(s.handler, "user.*");
    assert_null(s.txn);
    assert_int_equal(s.attempt, 1);
    tb_close(bus);
}

typedef struct self_wait {
    ew_bus *bus;
    int rc;
} self_wait;

static ew_handler_result wait_on_own_bus(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    self_wait *w = ud;
    w->rc = ew_bus_wait_for_events(w->bus, 1000, NULL);
    return EW_HANDLER_OK;
}

static void test_wait_from_a_handler_is_refused(void **state)
{
    ew_bus *bus = tb_open(NULL);
    self_wait w = {.bus = bus};
    tb_subscribe(bus, "user.registered", wait_on_own_bus, &w, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    assert_int_equal(w.rc, EW_ESTATE);
    tb_close(bus);
}

/* ---- metrics ------------------------------------------------------------------------------ */

static ew_handler_result gated(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tb_gate_pass(ud);
    return EW_HANDLER_OK;
}

static void test_handler_stats_and_queue_depth(void **state)
{
    ew_bus *bus = tb_open(NULL);
    tb_gate gate = TB_GATE_INIT;
    tb_subscribe(bus, "user.registered", gated, &gate,
                 &(ew_subscribe_opts){.group = "g", .name = "slow"});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    tb_gate_wait_arrivals(&gate, 1); /* the worker holds event 1 */
    for (int i = 0; i < 5; i++)
        tb_publish_owned(bus, tb_user_registered());

    ew_handler_stats s = tb_stats(bus, 0);
    assert_string_equal(s.group, "g");
    assert_string_equal(s.name, "slow");
    assert_string_equal(s.pattern, "user.registered");
    assert_int_equal(s.consumers, 1);
    assert_int_equal(s.queue_depth, 5);
    assert_int_equal(s.received, 1);
    assert_int_equal(s.handled, 0);
    ew_bus_stats bs;
    ew_bus_stats_get(bus, &bs);
    assert_int_equal(bs.pending, 6);

    tb_gate_open(&gate);
    tb_wait(bus);
    s = tb_stats(bus, 0);
    assert_int_equal(s.queue_depth, 0);
    assert_int_equal(s.received, 6);
    assert_int_equal(s.handled, 6);
    assert_int_equal(s.retried + s.dead_lettered + s.duplicates, 0);
    assert_true(s.time_total_ns >= s.time_max_ns);
    assert_true(s.time_max_ns > 0);
    assert_true(s.time_p50_ms <= s.time_p99_ms);
    assert_true(s.time_p99_ms <= (double)s.time_max_ns / 1e6); /* capped by the maximum */
    assert_true(s.time_p99_ms > 0);
    ew_handler_stats none;
    assert_int_equal(ew_bus_handler_stats(bus, 1, &none), EW_ENOTFOUND);
    tb_close(bus);
}

/* A worker going straight from one call to the next starts timing the next where the one before
 * ended (one clock reading a call): a wait in between, for work or a retry's back-off, must not
 * count in the next call's time. The handler does nothing, so each call takes microseconds;
 * WAIT_MS is what a call would show if a wait were counted in it. */
#define WAIT_MS 300
static void test_handler_times_leave_out_waits(void **state)
{
    ew_bus *bus = tb_open(NULL);
    attempts a = ATTEMPTS_INIT(2, EW_HANDLER_RETRY); /* retry, then ok, for every event */
    tb_subscribe(bus, "user.registered", record_attempt, &a,
                 &(ew_subscribe_opts){.group = "g",
                                      .max_attempts = 2,
                                      .backoff_initial_ms = WAIT_MS,
                                      .backoff_max_ms = WAIT_MS,
                                      .no_jitter = true});
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered()); /* two calls with a back-off between */
    tb_wait(bus);
    usleep(WAIT_MS * 1000); /* the worker waits for work */
    tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    ew_handler_stats s = tb_stats(bus, 0);
    tb_close(bus);
    assert_int_equal(s.handled, 2);
    assert_int_equal(s.retried, 2);
    uint64_t calls = 0;
    for (int b = 0; b < EW_HANDLER_HIST_BUCKETS; b++)
        calls += s.time_hist[b];
    assert_int_equal(calls, 4); /* every call timed */
    /* half the wait: room for a loaded machine, far below a wait counted in */
    assert_true(s.time_max_ns < (uint64_t)WAIT_MS * 1000000 / 2);
    assert_true(s.time_total_ns < (uint64_t)WAIT_MS * 1000000 / 2);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_retry_then_succeed),
    cmocka_unit_test(test_retries_exhausted_go_to_dead_letters),
    cmocka_unit_test(test_fail_dead_letters_at_once),
    cmocka_unit_test(test_dead_letter_reasons_without_set_error),
    cmocka_unit_test(test_dead_letter_sink_failure_is_retried),
    cmocka_unit_test(test_patterns_route_correctly),
    cmocka_unit_test(test_two_groups_both_receive_every_event),
    cmocka_unit_test(test_different_names_in_one_group_each_receive),
    cmocka_unit_test(test_competing_consumers_each_event_once),
    cmocka_unit_test(test_per_subject_order_with_concurrency_4),
    cmocka_unit_test(test_follow_up_inherits_correlation_and_causation),
    cmocka_unit_test(test_follow_up_published_once_after_retries),
    cmocka_unit_test(test_follow_up_dropped_when_handler_fails),
    cmocka_unit_test(test_inbox_skips_redelivered_event),
    cmocka_unit_test(test_inbox_hooks_around_the_handler),
    cmocka_unit_test(test_a_span_reports_the_settled_outcome),
    cmocka_unit_test(test_inbox_does_not_record_dead_letters),
    cmocka_unit_test(test_handler_context),
    cmocka_unit_test(test_wait_from_a_handler_is_refused),
    cmocka_unit_test(test_handler_stats_and_queue_depth),
    cmocka_unit_test(test_handler_times_leave_out_waits),
};

EW_TEST_MAIN(tests)
