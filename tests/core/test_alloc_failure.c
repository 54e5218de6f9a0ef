/* Allocation failures: each of the library's own allocations in an operation is made to fail in
 * turn, and the operation must say EW_ENOMEM (or, on a worker thread, retry or dead-letter the
 * delivery), keep nothing half done and leak nothing (ASan checks the leaks in make test).
 *
 * How: CMakeLists.txt links this test with -Wl,--wrap for malloc, calloc, realloc, strdup,
 * strndup and aligned_alloc, so that every call to them from the objects linked into this
 * executable — the static library's and this file's — goes to the __wrap_ functions below. The
 * shared libraries (libc itself, SQLite, the broker clients) are not relinked and keep theirs:
 * only the project's own allocations fail. While armed, the wrappers count the allocations and
 * fail the one numbered fail_at; an operation is run with fail_at = 0, 1, 2, ... until a run in
 * which no failure was injected, which must then succeed. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/bus.h"
#include "eventwire/config.h"
#include "eventwire/dlq.h"
#include "eventwire/event.h"
#include "eventwire/id.h"
#include "eventwire/store.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);

static atomic_bool armed;
static atomic_long seen, fail_at = -1, injected;

static bool inject(void)
{
    if (!atomic_load(&armed)) return false;
    if (atomic_fetch_add(&seen, 1) != atomic_load(&fail_at)) return false;
    atomic_fetch_add(&injected, 1);
    return true;
}

void *__wrap_malloc(size_t n)
{
    return inject() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return inject() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return inject() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return inject() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return inject() ? NULL : __real_strndup(s, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
    return inject() ? NULL : __real_aligned_alloc(align, n);
}

static void arm(long k)
{
    atomic_store(&seen, 0);
    atomic_store(&injected, 0);
    atomic_store(&fail_at, k);
    atomic_store(&armed, true);
}

/* Stops injecting; true when a failure was injected since arm(). */
static bool disarm(void)
{
    atomic_store(&armed, false);
    return atomic_load(&injected) > 0;
}

/* A user.registered event, not armed. */
static ew_event *registered(void)
{
    const char *roles[] = {"user"};
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_registered d = {
        .user_id = id, .email = "ann@example.com", .username = "ann", .roles = {roles, 1}};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "auth-service", .subject = id},
                               &err))
        fail_msg("%s", err.msg);
    return ev;
}

/* ---- a codec round trip: decode, encode, decode ------------------------------------------ */

static void test_codec_roundtrip_fails_cleanly_at_every_allocation(void **state)
{
    (void)state;
    ew_event *orig = registered();
    char *doc;
    size_t doclen;
    assert_int_equal(ew_event_encode(orig, &doc, &doclen, NULL), 0);
    long k = 0;
    for (;; k++) {
        ew_event *ev = NULL, *back = NULL;
        char *json = NULL;
        size_t len = 0;
        ew_error err = {0};
        arm(k);
        int rc = ew_event_decode(&ev, doc, doclen, NULL, &err);
        if (!rc) rc = ew_event_encode(ev, &json, &len, &err);
        if (!rc) rc = ew_event_decode(&back, json, len, NULL, &err);
        bool failed = disarm();
        if (!failed) {
            if (rc) fail_msg("with no failure: %s", err.msg);
            assert_true(ew_event_equal(back, orig));
        } else if (rc != EW_ENOMEM || err.code != EW_ENOMEM) {
            fail_msg("allocation %ld failed, and the round trip said %s: %s", k, ew_err_name(rc),
                     err.msg);
        } else {
            assert_null(back);
        }
        ew_event_unref(ev);
        ew_event_unref(back);
        free(json);
        if (!failed) break;
    }
    print_message("codec round trip: %ld allocations, each failed in turn\n", k);
    assert_true(k > 0);
    free(doc);
    ew_event_unref(orig);
}

/* ---- a store append: all or nothing ------------------------------------------------------- */

static void test_store_append_fails_cleanly_at_every_allocation(void **state)
{
    (void)state;
    char dir[] = "/tmp/ew-allocfail-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/s.db", dir);
    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    long k = 0;
    for (;; k++) {
        ew_event *evs[2] = {registered(), registered()};
        char stream[64];
        snprintf(stream, sizeof stream, "user-%ld", k);
        ew_append_result res = {0};
        arm(k);
        int rc = ew_store_append(st, stream, EW_EXPECT_NO_STREAM, (const ew_event *const *)evs, 2,
                                 &res, &err);
        bool failed = disarm();
        int64_t version = -1;
        assert_int_equal(ew_store_stream_version(st, stream, &version, &err), 0);
        if (!failed) {
            if (rc) fail_msg("with no failure: %s", err.msg);
            assert_int_equal(res.appended, 2);
            assert_int_equal(version, 2);
        } else if (rc != EW_ENOMEM) {
            fail_msg("allocation %ld failed, and the append said %s: %s", k, ew_err_name(rc),
                     err.msg);
        } else {
            assert_int_equal(version, 0); /* nothing of the failed append was kept */
        }
        ew_event_unref(evs[0]);
        ew_event_unref(evs[1]);
        if (!failed) break;
    }
    print_message("store append: %ld allocations, each failed in turn\n", k);
    assert_true(k > 0);
    ew_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- a publish and its handling, on the memory bus --------------------------------------- */
/* With the inbox of a SQLite store, as a service has it: the worker records each event handled
 * in a transaction of its own, so that allocations fail on the worker too. */

/* What the handler saw: the ids it handled, without allocating (it runs while armed). */
typedef struct seen_ids {
    pthread_mutex_t mu;
    char ids[4096][EW_UUID_LEN + 1];
    size_t n;
} seen_ids;

/* Group "a": each user.registered is followed up by a user.logged_out of the same user,
 * published from the worker thread. */
static ew_handler_result follow_up(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ud;
    ew_user_logged_out d = {.user_id = ew_event_subject(ev), .session_id = "s"};
    ew_error err = {0};
    if (ew_ctx_publish(ctx, EW_T_USER_LOGGED_OUT, &d, d.user_id, &err) == 0) return EW_HANDLER_OK;
    ew_ctx_set_error(ctx, "%s", err.msg);
    return EW_HANDLER_RETRY;
}

/* Group "b": remembers the user of each user.logged_out. */
static ew_handler_result remember(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ctx;
    seen_ids *s = ud;
    const ew_user_logged_out *d = ew_event_data_as(ev, EW_T_USER_LOGGED_OUT);
    pthread_mutex_lock(&s->mu);
    if (s->n < 4096) snprintf(s->ids[s->n++], EW_UUID_LEN + 1, "%s", d->user_id);
    pthread_mutex_unlock(&s->mu);
    return EW_HANDLER_OK;
}

static size_t times_handled(seen_ids *s, const char *id)
{
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++)
        n += strcmp(s->ids[i], id) == 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Whether the memory sink holds a dead letter of an event of user, and its reason. */
static bool dead_lettered(ew_memdlq *q, const char *user, char *why, size_t n)
{
    for (size_t i = 0; i < ew_memdlq_count(q); i++) {
        ew_memdlq_entry e;
        if (ew_memdlq_get(q, i, &e)) continue;
        const char *subject = e.event ? ew_event_subject(e.event) : NULL;
        bool match = subject && strcmp(subject, user) == 0;
        if (match) snprintf(why, n, "%s", e.error ? e.error : "");
        ew_memdlq_entry_release(&e);
        if (match) return true;
    }
    return false;
}

static void test_publish_and_handle_fail_cleanly_at_every_allocation(void **state)
{
    (void)state;
    static seen_ids s;
    pthread_mutex_init(&s.mu, NULL);
    s.n = 0;
    ew_config *cfg;
    ew_error err = {0};
    ew_memdlq *q;
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err), 0);
    assert_int_equal(ew_memdlq_new(&q, &err), 0);
    char dir[] = "/tmp/ew-allocfail-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/inbox.db", dir);
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_bus *bus;
    if (ew_bus_open(
            &bus,
            &(ew_bus_options){.config = cfg, .dlq = ew_memdlq_sink(q), .inbox = ew_store_inbox(st)},
            &err))
        fail_msg("%s", err.msg);
    ew_subscribe_opts o = {.group = "a",
                           .name = "follow-up",
                           .max_attempts = 5,
                           .backoff_initial_ms = 1,
                           .backoff_max_ms = 2,
                           .no_jitter = true};
    assert_int_equal(ew_bus_subscribe(bus, "user.registered", follow_up, NULL, &o, &err), 0);
    o.group = "b";
    o.name = "remember";
    assert_int_equal(ew_bus_subscribe(bus, "user.logged_out", remember, &s, &o, &err), 0);
    assert_int_equal(ew_bus_start(bus, &err), 0);
    long k = 0, refused = 0, retried_or_dead = 0;
    for (;; k++) {
        ew_event *ev = registered();
        arm(k);
        int rc = ew_bus_publish(bus, ev, &err);
        int wait = ew_bus_wait_for_events(bus, 10000, &err);
        bool failed = disarm();
        assert_int_equal(wait, 0);             /* nothing stuck */
        const char *id = ew_event_subject(ev); /* the user: the follow-up's too */
        char why[256] = "";
        size_t handled = times_handled(&s, id);
        bool dead = dead_lettered(q, id, why, sizeof why);
        if (!failed) {
            if (rc) fail_msg("with no failure: %s", err.msg);
            assert_int_equal(handled, 1);
        } else if (rc == EW_ENOMEM) {
            /* refused on the publishing thread: nothing of it went anywhere */
            assert_int_equal(handled, 0);
            assert_false(dead);
            refused++;
        } else if (rc != 0) {
            fail_msg("allocation %ld failed, and the publish said %s: %s", k, ew_err_name(rc),
                     err.msg);
        } else if (handled == 1 && !dead) {
            retried_or_dead++; /* failed on a worker, then handled once */
        } else if (handled == 0 && dead) {
            if (!strstr(why, "memory"))
                fail_msg("allocation %ld: dead-lettered for '%s', not for memory", k, why);
            retried_or_dead++;
        } else {
            fail_msg("allocation %ld failed: handled %zu times, dead-lettered: %s", k, handled,
                     dead ? why : "no");
        }
        ew_event_unref(ev);
        if (!failed) break;
    }
    print_message("publish -> handle: %ld allocations, each failed in turn (%ld refused at "
                  "publish, %ld retried or dead-lettered)\n",
                  k, refused, retried_or_dead);
    assert_true(k > 0);
    assert_int_equal(ew_bus_close(bus), 0);
    ew_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    ew_memdlq_free(q);
    ew_config_free(cfg);
    pthread_mutex_destroy(&s.mu);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_codec_roundtrip_fails_cleanly_at_every_allocation),
    cmocka_unit_test(test_store_append_fails_cleanly_at_every_allocation),
    cmocka_unit_test(test_publish_and_handle_fail_cleanly_at_every_allocation),
};

EW_TEST_MAIN(tests)
