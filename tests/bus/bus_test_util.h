/* Helpers shared by the bus tests: a memory bus, events of any catalog type, a log that keeps
 * what the bus says, and a gate that handlers wait at. */
#ifndef EW_TESTS_BUS_TEST_UTIL_H
#define EW_TESTS_BUS_TEST_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include "support/ew_test.h"
#include "support/sample_data.h"
#include "eventwire/bus.h"
#include "eventwire/id.h"
#include "bus/backend.h"
#include "security/keyring.h"

#define TB_SERVICE "test-service"
#define TB_WAIT_MS 60000 /* generous: a hang fails the test instead of the run */
#define TB_LOG_INIT                                                                                \
    {                                                                                              \
        .mu = PTHREAD_MUTEX_INITIALIZER                                                            \
    }

/* ---- the log ---------------------------------------------------------------------------- */

typedef struct tb_log {
    pthread_mutex_t mu;
    char text[16384]; /* every line, appended while there is room */
    int errors, warnings;
} tb_log;

static inline void tb_log_fn(void *ud, const ew_log_record *rec)
{
    tb_log *l = ud;
    ew_log_level level = rec->level;
    const char *msg = rec->msg;
    pthread_mutex_lock(&l->mu);
    size_t n = strlen(l->text);
    snprintf(l->text + n, sizeof l->text - n, "%s: %s\n", ew_log_level_name(level), msg);
    if (level == EW_LOG_ERROR) l->errors++;
    if (level == EW_LOG_WARN) l->warnings++;
    pthread_mutex_unlock(&l->mu);
}

static inline bool tb_log_has(tb_log *l, const char *needle)
{
    pthread_mutex_lock(&l->mu);
    bool has = strstr(l->text, needle) != NULL;
    pthread_mutex_unlock(&l->mu);
    return has;
}

/* ---- buses ------------------------------------------------------------------------------ */

/* A memory bus with SERVICE_NAME test-service; opts may be NULL. Extra settings come as
 * name/value pairs ending in NULL. */
static inline ew_bus *tb_open_with(const ew_bus_options *opts, ...)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", TB_SERVICE, &err), 0);
    va_list ap;
    va_start(ap, opts);
    for (const char *name; (name = va_arg(ap, const char *));) {
        const char *value = va_arg(ap, const char *);
        if (ew_config_set(cfg, name, value, &err)) fail_msg("%s", err.msg);
    }
    va_end(ap);
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = cfg;
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &o, &err)) fail_msg("ew_bus_open: %s", err.msg);
    ew_config_free(cfg); /* the bus keeps its own copy */
    return bus;
}

static inline ew_bus *tb_open(const ew_bus_options *opts)
{
    return tb_open_with(opts, (const char *)NULL);
}

static inline void tb_subscribe(ew_bus *bus, const char *pattern, ew_handler_fn fn, void *ud,
                                const ew_subscribe_opts *opts)
{
    ew_error err = {0};
    if (ew_bus_subscribe(bus, pattern, fn, ud, opts, &err)) fail_msg("subscribe: %s", err.msg);
}

static inline void tb_start(ew_bus *bus)
{
    ew_error err = {0};
    if (ew_bus_start(bus, &err)) fail_msg("start: %s", err.msg);
}

static inline void tb_wait(ew_bus *bus)
{
    ew_error err = {0};
    if (ew_bus_wait_for_events(bus, TB_WAIT_MS, &err)) fail_msg("wait: %s", err.msg);
}

static inline void tb_close(ew_bus *bus)
{
    assert_int_equal(ew_bus_close(bus), 0);
}

/* ---- events ----------------------------------------------------------------------------- */

/* An event of any catalog type with valid sample data. subject NULL: a new uuid, also used as
 * the data's uuids; seq goes into the first plain string field (for order checks). */
static inline ew_event *tb_event_full(ew_type_id type, const char *subject, long seq,
                                      const ew_event_attrs *extra)
{
    const ew_type_info *t = ew_catalog_get(type);
    assert_non_null(t);
    _Alignas(16) char data[1024];
    char uuid[EW_UUID_LEN + 1], seqs[32];
    assert_true(t->struct_size <= sizeof data);
    ew_uuid7(uuid);
    snprintf(seqs, sizeof seqs, "%ld", seq);
    ew_sample_fill(t, data, &(ew_sample_values){.uuid = uuid, .first_text = seqs, .integer = seq});
    ew_event_attrs a = extra ? *extra : (ew_event_attrs){0};
    if (!a.source) a.source = "test";
    a.subject = subject ? subject : uuid;
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_event_new(&ev, type, data, &a, &err)) fail_msg("%s: %s", t->type, err.msg);
    return ev;
}

static inline ew_event *tb_event(ew_type_id type, const char *subject)
{
    return tb_event_full(type, subject, 0, NULL);
}

/* The seed's event: a user registered. */
/* A raw message of a tb_user_registered() event, as decoded from the wire, checked for what the
 * wire must show: the personal fields as ciphertext (ewenc1.…, never the address in clear), and
 * the same event once bus's keys open it (EVENT_ENCRYPTION). Consumes got. */
static inline void tb_check_sealed(ew_bus *bus, const void *raw, size_t raw_len, ew_event *got,
                                   const ew_event *want)
{
    assert_true(ew_event_encrypted(got));
    assert_null(memmem(raw, raw_len, "a@example.com", 13));
    assert_non_null(memmem(raw, raw_len, "ewenc1.", 7));
    ew_event *plain = NULL;
    ew_error err = {0};
    if (ew__keyring_unseal(ew__bus_keyring(bus), got, &plain, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(want, plain));
    ew_event_unref(plain);
    ew_event_unref(got);
}

static inline ew_event *tb_user_registered(void)
{
    char uuid[EW_UUID_LEN + 1];
    ew_uuid7(uuid);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = uuid, .email = "a@example.com", .username = "ann", .roles = {roles, 1}};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "test", .subject = uuid}, &err))
        fail_msg("%s", err.msg);
    return ev;
}

/* Publishes and drops the caller's reference. */
static inline void tb_publish_owned(ew_bus *bus, ew_event *ev)
{
    ew_error err = {0};
    if (ew_bus_publish(bus, ev, &err)) fail_msg("publish: %s", err.msg);
    ew_event_unref(ev);
}

/* ---- handlers ---------------------------------------------------------------------------- */

/* ud: an atomic_int counter. */
static inline ew_handler_result tb_count(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

/* A gate handlers block at until the test opens it; the test can wait for arrivals. */
typedef struct tb_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int arrived;
} tb_gate;

#define TB_GATE_INIT                                                                               \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0                              \
    }

static inline void tb_gate_pass(tb_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->arrived++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static inline void tb_gate_wait_arrivals(tb_gate *g, int n)
{
    pthread_mutex_lock(&g->mu);
    while (g->arrived < n)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static inline void tb_gate_open(tb_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static inline ew_handler_stats tb_stats(ew_bus *bus, size_t i)
{
    ew_handler_stats s;
    assert_int_equal(ew_bus_handler_stats(bus, i, &s), 0);
    return s;
}

#endif
