/* The Redis backend's own cases, beyond the conformance suite: the URL and the settings it
 * reads, opening against an unreachable server, how the streams look to other Redis clients
 * (acknowledged, trimmed, taken over), bad entries, a vanished group, and the Pub/Sub mode.
 * ew-fixture: redis */
#ifdef EW_HAVE_REDIS
#include <hiredis/hiredis.h>
#include <time.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "eventwire/clock.h"

#define WAIT_MS 60000

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *srv_url(void)
{
    return ew_test_server_url("redis");
}

static int srv_port(void)
{
    const char *u = srv_url();
    const char *colon = u ? strrchr(u, ':') : NULL;
    return colon ? atoi(colon + 1) : 0;
}

#define NEED_SERVER()                                                                              \
    do {                                                                                           \
        if (!srv_url()) skip();                                                                    \
    } while (0)

/* A unique prefix per test, so that runs never share streams. */
static void new_prefix(char *out, size_t n, const char *test)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(out, n, "rt-%s-%.8s", test, id + 28);
}

/* A raw connection to the test server (database db). */
static redisContext *raw(int db)
{
    redisContext *c = redisConnect("127.0.0.1", srv_port());
    if (!c || c->err) fail_msg("cannot connect to the test server: %s", c ? c->errstr : "oom");
    if (db) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        assert_non_null(r);
        freeReplyObject(r);
    }
    return c;
}

static long long raw_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) fail_msg("raw command failed: %s", c->errstr);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->integer; /* XPENDING summary: the count first */
    freeReplyObject(r);
    return v;
}

/* The number of entries of stream key that group has read and not acknowledged. */
static long long pending(redisContext *c, const char *key, const char *group)
{
    return raw_int(c, "XPENDING %s %s", key, group);
}

/* Opens a redis bus as service `service` with settings given as name/value pairs ending in
 * NULL. Returns the error code; *out is the bus on success. */
static int open_bus(ew_bus **out, ew_error *err, const ew_bus_options *opts, const char *service,
                    ...)
{
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "redis", err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", service, err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_HANDLER_BACKOFF_MS", "2", err), 0);
    if (srv_url()) assert_int_equal(ew_config_set(cfg, "REDIS_EVENT_URL", srv_url(), err), 0);
    va_list ap;
    va_start(ap, service);
    for (const char *name; (name = va_arg(ap, const char *));) {
        const char *value = va_arg(ap, const char *);
        if (ew_config_set(cfg, name, value, err)) fail_msg("%s", err->msg);
    }
    va_end(ap);
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = cfg;
    *out = NULL;
    int rc = ew_bus_open(out, &o, err);
    ew_config_free(cfg);
    return rc;
}

#define OPEN(bus, opts, service, ...)                                                              \
    do {                                                                                           \
        ew_error oerr_ = {0};                                                                      \
        if (open_bus(&(bus), &oerr_, (opts), (service), __VA_ARGS__, (const char *)NULL))          \
            fail_msg("open: %s", oerr_.msg);                                                       \
    } while (0)

static void wait_until_ll(redisContext *c,
                          long long (*get)(redisContext *, const char *, const char *),
                          const char *key, const char *group, long long want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    long long v;
    while ((v = get(c, key, group)) != want) {
        if (ew_mono_ns() > end) fail_msg("%s: %lld, not %lld", what, v, want);
        usleep(5000);
    }
}

static void wait_atomic(atomic_int *n, int want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(n) < want) {
        if (ew_mono_ns() > end) fail_msg("%s: %d of %d", what, atomic_load(n), want);
        usleep(2000);
    }
}

/* Keeps the id of the last event handled. */
typedef struct cf_keep_like {
    pthread_mutex_t mu;
    char id[EW_UUID_LEN + 1];
    atomic_int n;
} cf_keep_like;

static ew_handler_result keep_id(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    cf_keep_like *k = ud;
    pthread_mutex_lock(&k->mu);
    snprintf(k->id, sizeof k->id, "%s", ew_event_id(ev));
    pthread_mutex_unlock(&k->mu);
    atomic_fetch_add(&k->n, 1);
    return EW_HANDLER_OK;
}

/* ---- the URL ------------------------------------------------------------------------------ */

static void bad_url(const char *url, const char *needle)
{
    ew_error err = {0};
    ew_bus *bus;
    int rc = open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", url, (const char *)NULL);
    if (rc != EW_ECONFIG)
        fail_msg("%s: got %s (%s), not EW_ECONFIG", url, ew_err_name(rc), err.msg);
    assert_null(bus);
    assert_non_null(strstr(err.msg, "REDIS_EVENT_URL"));
    if (!strstr(err.msg, needle)) fail_msg("%s: '%s' does not say '%s'", url, err.msg, needle);
}

static void test_url_malformed(void **state)
{
    bad_url("http://127.0.0.1:6379", "neither redis:// nor rediss://");
    bad_url("127.0.0.1:6379", "does not start with redis:// or rediss://");
    bad_url("rediss://", "host is missing");
    bad_url("rediss://127.0.0.1:0", "port '0'");
    bad_url("redis://", "host is missing");
    bad_url("redis://:6379", "host is missing");
    bad_url("redis://127.0.0.1:0", "port '0'");
    bad_url("redis://127.0.0.1:65536", "port '65536'");
    bad_url("redis://127.0.0.1:http", "port 'http'");
    bad_url("redis://127.0.0.1:", "port ''");
    bad_url("redis://127.0.0.1:6379/x", "database 'x'");
    bad_url("redis://127.0.0.1:6379/-1", "database '-1'");
    bad_url("redis://127.0.0.1:6379?db=1", "query");
    bad_url("redis://ann@127.0.0.1:6379", "needs a password");
    bad_url("redis://ann:@127.0.0.1:6379", "password is empty");
    bad_url("redis://ann:%zz@127.0.0.1:6379", "%-escape");
    bad_url("redis://[::1:6379", "']'");
}

static void test_url_good_forms_connect(void **state)
{
    NEED_SERVER();
    char url[300];
    int port = srv_port();
    const char *hosts[] = {"127.0.0.1", "localhost", "127.0.0.1", "127.0.0.1", "127.0.0.1"};
    const char *paths[] = {"", "", "/", "/0", "/3"};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        snprintf(url, sizeof url, "redis://%s:%d%s", hosts[i], port, paths[i]);
        ew_bus *bus;
        ew_error err = {0};
        if (open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", url, (const char *)NULL))
            fail_msg("%s: %s", url, err.msg);
        tb_close(bus);
    }
}

/* The database of the URL is where the streams go: SELECT happened. */
static void test_url_database_is_selected(void **state)
{
    NEED_SERVER();
    char prefix[64], url[300], key[128];
    new_prefix(prefix, sizeof prefix, "db");
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/5", srv_port());
    ew_bus *bus;
    OPEN(bus, NULL, "t", "REDIS_EVENT_URL", url, "REDIS_CHANNEL_PREFIX", prefix);
    tb_publish_owned(bus, tb_user_registered());
    tb_close(bus);
    snprintf(key, sizeof key, "%s:user.registered", prefix);
    redisContext *c0 = raw(0), *c5 = raw(5);
    assert_int_equal(raw_int(c5, "XLEN %s", key), 1);
    assert_int_equal(raw_int(c0, "EXISTS %s", key), 0);
    raw_int(c5, "DEL %s", key);
    redisFree(c0);
    redisFree(c5);
}

/* user:password@ authenticates as that ACL user (percent-escapes decoded); a wrong password and a
 * password alone where the server has none configured are refused with EW_ECONFIG. */
static void test_url_credentials(void **state)
{
    NEED_SERVER();
    char prefix[64], user[64], url[400];
    new_prefix(prefix, sizeof prefix, "acl");
    snprintf(user, sizeof user, "ew-%s", prefix + 7);
    redisContext *c = raw(0);
    redisReply *r = redisCommand(c, "ACL SETUSER %s on >s3cr@t/pw ~* &* +@all", user);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);

    snprintf(url, sizeof url, "redis://%s:s3cr%%40t%%2Fpw@127.0.0.1:%d/0", user, srv_port());
    ew_bus *bus;
    OPEN(bus, NULL, "t", "REDIS_EVENT_URL", url, "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int n = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    wait_atomic(&n, 1, "handled as the ACL user");
    tb_close(bus);

    ew_error err = {0};
    snprintf(url, sizeof url, "redis://%s:wrong@127.0.0.1:%d", user, srv_port());
    assert_int_equal(open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", url, (const char *)NULL),
                     EW_ECONFIG);
    assert_non_null(strstr(err.msg, "refused the credentials"));
    assert_null(strstr(err.msg, "wrong")); /* the password is not repeated */
    snprintf(url, sizeof url, "redis://:only-a-password@127.0.0.1:%d", srv_port());
    assert_int_equal(open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", url, (const char *)NULL),
                     EW_ECONFIG);
    assert_non_null(strstr(err.msg, "REDIS_EVENT_URL"));

    r = redisCommand(c, "ACL DELUSER %s", user);
    freeReplyObject(r);
    redisFree(c);
}

/* ---- opening ------------------------------------------------------------------------------ */

/* Nobody listens: EW_ECONNECT at once, naming the address. */
static void test_open_refused(void **state)
{
    ew_error err = {0};
    ew_bus *bus;
    int64_t t0 = ew_mono_ns();
    int rc = open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", "redis://127.0.0.1:1",
                      (const char *)NULL);
    assert_int_equal(rc, EW_ECONNECT);
    assert_true(ew_err_retriable(rc));
    assert_null(bus);
    assert_non_null(strstr(err.msg, "127.0.0.1:1"));
    assert_true(ew_mono_ns() - t0 < 10000000000LL);
}

/* A server that never answers the connection (a listening socket whose backlog is full, or an
 * address that drops packets): EW_ECONNECT after EVENT_BUS_CONNECT_TIMEOUT_MS, not later. */
static void test_open_times_out(void **state)
{
    ew_error err = {0};
    ew_bus *bus;
    int64_t t0 = ew_mono_ns();
    int rc = open_bus(&bus, &err, NULL, "t", "REDIS_EVENT_URL", "redis://10.255.255.1:6379",
                      "EVENT_BUS_CONNECT_TIMEOUT_MS", "300", (const char *)NULL);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    assert_int_equal(rc, EW_ECONNECT);
    assert_null(bus);
    assert_non_null(strstr(err.msg, "10.255.255.1:6379"));
    if (ms > 300 + 5000) fail_msg("open took %lld ms with a 300 ms time-out", (long long)ms);
}

/* ---- streams as other Redis clients see them --------------------------------------------- */

/* publish returns once the entry is in the stream; after the handler it is acknowledged. */
static void test_publish_durable_then_acked(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "ack");
    snprintf(key, sizeof key, "%s:user.registered", prefix);
    tb_log log = TB_LOG_INIT;
    ew_bus_options lo = {.log = tb_log_fn, .log_ud = &log};
    ew_bus *bus;
    OPEN(bus, &lo, "svc-ack", "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int n = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_start(bus);
    redisContext *c = raw(0);
    for (int i = 0; i < 20; i++) {
        tb_publish_owned(bus, tb_user_registered());
        assert_int_equal(raw_int(c, "XLEN %s", key), i + 1);
    }
    wait_atomic(&n, 20, "handled");
    wait_until_ll(c, pending, key, "svc-ack", 0, "entries left pending after the handlers");
    tb_close(bus);
    assert_int_equal(log.errors, 0);
    /* the entry is the CloudEvent under the field `event` */
    redisReply *r = redisCommand(c, "XRANGE %s - + COUNT 1", key);
    assert_non_null(r);
    assert_int_equal(r->element[0]->element[1]->elements, 2);
    assert_string_equal(r->element[0]->element[1]->element[0]->str, "event");
    ew_event *ev;
    assert_int_equal(ew_event_decode(&ev, r->element[0]->element[1]->element[1]->str,
                                     r->element[0]->element[1]->element[1]->len, NULL, NULL),
                     0);
    assert_string_equal(ew_event_type(ev), "user.registered");
    ew_event_unref(ev);
    freeReplyObject(r);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* REDIS_STREAM_MAXLEN trims the stream (approximately: Redis trims whole nodes); 0 never trims. */
static void test_stream_maxlen(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    redisContext *c = raw(0);
    for (int trim = 0; trim < 2; trim++) {
        new_prefix(prefix, sizeof prefix, trim ? "trim" : "keep");
        snprintf(key, sizeof key, "%s:user.logged_in", prefix);
        ew_bus *bus;
        OPEN(bus, NULL, "t", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_STREAM_MAXLEN",
             trim ? "100" : "0");
        enum { N = 1000 };
        ew_event *evs[100];
        for (int b = 0; b < N / 100; b++) {
            for (int i = 0; i < 100; i++)
                evs[i] = tb_event(EW_T_USER_LOGGED_IN, NULL);
            ew_error err = {0};
            if (ew_bus_publish_batch(bus, (const ew_event *const *)evs, 100, &err))
                fail_msg("%s", err.msg);
            for (int i = 0; i < 100; i++)
                ew_event_unref(evs[i]);
        }
        tb_close(bus);
        long long len = raw_int(c, "XLEN %s", key);
        if (trim) {
            if (len < 100 || len >= N) fail_msg("MAXLEN ~ 100 left %lld of %d entries", len, N);
        } else {
            assert_int_equal(len, N);
        }
        raw_int(c, "DEL %s", key);
    }
    redisFree(c);
}

/* REDIS_STREAM_MAX_AGE_SECONDS: entries past the age are deleted by the publisher of the stream
 * (at its next publish once the trim period has passed) and by the readers of a subscribed
 * stream (on their own, with nothing published). */
static void test_stream_max_age(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    redisContext *c = raw(0);
    new_prefix(prefix, sizeof prefix, "age");
    snprintf(key, sizeof key, "%s:user.logged_in", prefix);
    ew_bus *bus;
    OPEN(bus, NULL, "t", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_STREAM_MAX_AGE_SECONDS", "1");
    for (int i = 0; i < 3; i++) {
        ew_event *ev = tb_event(EW_T_USER_LOGGED_IN, NULL);
        ew_error err = {0};
        if (ew_bus_publish(bus, ev, &err)) fail_msg("%s", err.msg);
        ew_event_unref(ev);
    }
    assert_int_equal(raw_int(c, "XLEN %s", key), 3); /* none old enough yet */
    usleep(1300 * 1000);
    ew_event *ev = tb_event(EW_T_USER_LOGGED_IN, NULL);
    ew_error err = {0};
    if (ew_bus_publish(bus, ev, &err)) fail_msg("%s", err.msg);
    ew_event_unref(ev);
    assert_int_equal(raw_int(c, "XLEN %s", key), 1); /* the three older than a second are gone */
    tb_close(bus);
    raw_int(c, "DEL %s", key);

    /* a subscribed stream is trimmed by its reader, with no publisher trimming */
    snprintf(key, sizeof key, "%s:user.logged_out", prefix);
    ew_bus *pub, *sub;
    OPEN(pub, NULL, "p", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_STREAM_MAX_AGE_SECONDS", "0");
    OPEN(sub, NULL, "s", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_STREAM_MAX_AGE_SECONDS", "1");
    atomic_int n = 0;
    tb_subscribe(sub, "user.logged_out", tb_count, &n, NULL);
    tb_start(sub);
    for (int i = 0; i < 2; i++) {
        ev = tb_event(EW_T_USER_LOGGED_OUT, NULL);
        if (ew_bus_publish(pub, ev, &err)) fail_msg("%s", err.msg);
        ew_event_unref(ev);
    }
    assert_int_equal(raw_int(c, "XLEN %s", key), 2);
    long long len = 2;
    for (int i = 0; i < 100 && (len = raw_int(c, "XLEN %s", key)) > 0; i++)
        usleep(50 * 1000);
    if (len != 0) fail_msg("the reader left %lld entries older than a second", len);
    assert_int_equal(atomic_load(&n), 2); /* both were handled first */
    tb_close(sub);
    tb_close(pub);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* An event larger than EVENT_MAX_BYTES is refused with EW_ETOOBIG and nothing of the batch is
 * published. */
static void test_publish_too_big(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "big");
    snprintf(key, sizeof key, "%s:user.logged_in", prefix);
    ew_bus *bus;
    OPEN(bus, NULL, "t", "REDIS_CHANNEL_PREFIX", prefix, "EVENT_MAX_BYTES", "1024");
    char session[2000];
    memset(session, 's', sizeof session - 1);
    session[sizeof session - 1] = '\0';
    ew_user_logged_in d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                           .session_id = session};
    ew_event *big;
    assert_int_equal(ew_user_logged_in_new(&big, &d, &(ew_event_attrs){.source = "t"}, NULL), 0);
    ew_event *small = tb_event(EW_T_USER_LOGGED_IN, NULL);
    const ew_event *batch[] = {small, big};
    ew_error err = {0};
    assert_int_equal(ew_bus_publish_batch(bus, batch, 2, &err), EW_ETOOBIG);
    assert_non_null(strstr(err.msg, "EVENT_MAX_BYTES"));
    assert_non_null(strstr(err.msg, "event 1 of 2"));
    assert_int_equal(ew_bus_publish(bus, small, &err), 0);
    tb_close(bus);
    redisContext *c = raw(0);
    assert_int_equal(raw_int(c, "XLEN %s", key), 1);
    raw_int(c, "DEL %s", key);
    redisFree(c);
    ew_event_unref(big);
    ew_event_unref(small);
}

/* A batch where Redis refuses one XADD (the key holds a string): the error names the index. */
static void test_publish_batch_error_names_index(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "wrt");
    snprintf(key, sizeof key, "%s:user.logged_out", prefix);
    redisContext *c = raw(0);
    raw_int(c, "SET %s not-a-stream", key);
    ew_bus *bus;
    OPEN(bus, NULL, "t", "REDIS_CHANNEL_PREFIX", prefix);
    ew_event *evs[3] = {tb_event(EW_T_USER_LOGGED_IN, NULL), tb_event(EW_T_USER_LOGGED_OUT, NULL),
                        tb_event(EW_T_USER_LOGGED_IN, NULL)};
    ew_error err = {0};
    int rc = ew_bus_publish_batch(bus, (const ew_event *const *)evs, 3, &err);
    assert_int_equal(rc, EW_EIO);
    assert_non_null(strstr(err.msg, "event 1 of 3"));
    assert_non_null(strstr(err.msg, "WRONGTYPE"));
    ew_bus_stats st;
    ew_bus_stats_get(bus, &st);
    assert_int_equal(st.published, 1);
    /* the connection is still in step: the next publish works */
    assert_int_equal(ew_bus_publish(bus, evs[0], &err), 0);
    tb_close(bus);
    for (int i = 0; i < 3; i++)
        ew_event_unref(evs[i]);
    char k2[128];
    snprintf(k2, sizeof k2, "%s:user.logged_in", prefix);
    raw_int(c, "DEL %s %s", key, k2);
    redisFree(c);
}

/* EVENT_BUS_MAX_IN_FLIGHT bounds what a consumer has read and not finished: with handlers held
 * at a gate, no more than that many entries are pending in the group. */
static tb_gate in_flight_gate = TB_GATE_INIT;
static ew_handler_result gate_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tb_gate_pass(&in_flight_gate);
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

static void test_max_in_flight(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "mif");
    snprintf(key, sizeof key, "%s:user.logged_in", prefix);
    ew_bus *bus;
    OPEN(bus, NULL, "svc-mif", "REDIS_CHANNEL_PREFIX", prefix, "EVENT_BUS_MAX_IN_FLIGHT", "5");
    atomic_int n = 0;
    tb_subscribe(bus, "user.*", gate_fn, &n, &(ew_subscribe_opts){.concurrency = 8});
    tb_start(bus);
    for (int i = 0; i < 50; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_IN, NULL));
    tb_gate_wait_arrivals(&in_flight_gate, 1);
    /* handlers are held: the consumer reads up to the bound and then no more */
    redisContext *c = raw(0);
    wait_until_ll(c, pending, key, "svc-mif", 5, "entries in flight");
    usleep(300000); /* room for a wrong read to happen */
    assert_int_equal(pending(c, key, "svc-mif"), 5);
    tb_gate_open(&in_flight_gate);
    wait_atomic(&n, 50, "handled after the gate opened");
    wait_until_ll(c, pending, key, "svc-mif", 0, "pending after all were handled");
    tb_close(bus);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* Entries another consumer took and never acknowledged (it died) are taken over after
 * REDIS_CLAIM_IDLE_MS and handled. */
static void test_claims_from_dead_consumer(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "clm");
    snprintf(key, sizeof key, "%s:user.verified", prefix);
    ew_bus *pub, *con;
    OPEN(pub, NULL, "pub", "REDIS_CHANNEL_PREFIX", prefix);
    redisContext *c = raw(0);
    raw_int(c, "DEL %s", key);
    redisReply *r = redisCommand(c, "XGROUP CREATE %s svc-clm $ MKSTREAM", key);
    freeReplyObject(r);
    for (int i = 0; i < 10; i++)
        tb_publish_owned(pub, tb_event(EW_T_USER_VERIFIED, NULL));
    /* the dead consumer takes all ten and vanishes */
    r = redisCommand(c, "XREADGROUP GROUP svc-clm ghost COUNT 100 STREAMS %s >", key);
    assert_non_null(r);
    freeReplyObject(r);
    assert_int_equal(pending(c, key, "svc-clm"), 10);
    OPEN(con, NULL, "svc-clm", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_CLAIM_IDLE_MS", "300");
    atomic_int n = 0;
    tb_subscribe(con, "user.verified", tb_count, &n, NULL);
    tb_start(con);
    wait_atomic(&n, 10, "entries taken over from the dead consumer");
    wait_until_ll(c, pending, key, "svc-clm", 0, "pending after the take-over");
    tb_close(con);
    tb_close(pub);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* A handler slower than REDIS_CLAIM_IDLE_MS keeps its entry: the other consumer of the group
 * does not take it over while it works (the entry is refreshed). */
static atomic_int slow_calls;
static ew_handler_result slow_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add(&slow_calls, 1);
    usleep(2000000);
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

static void test_slow_handler_keeps_its_entry(void **state)
{
    NEED_SERVER();
    char prefix[64];
    new_prefix(prefix, sizeof prefix, "slw");
    atomic_store(&slow_calls, 0);
    ew_bus *a, *b;
    OPEN(a, NULL, "svc-slow", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_CLAIM_IDLE_MS", "500");
    OPEN(b, NULL, "svc-slow", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_CLAIM_IDLE_MS", "500");
    atomic_int na = 0, nb = 0;
    tb_subscribe(a, "user.deactivated", slow_fn, &na, NULL);
    tb_subscribe(b, "user.deactivated", slow_fn, &nb, NULL);
    tb_start(a);
    tb_start(b);
    tb_publish_owned(a, tb_event(EW_T_USER_DEACTIVATED, NULL));
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(&na) + atomic_load(&nb) < 1 && ew_mono_ns() < end)
        usleep(5000);
    usleep(500000);
    tb_close(a);
    tb_close(b);
    assert_int_equal(atomic_load(&na) + atomic_load(&nb), 1);
    assert_int_equal(atomic_load(&slow_calls), 1);
}

/* An entry a closing bus did not finish is not acknowledged: the next consumer of the group
 * takes it over. Two events of one subject: the first holds the only worker past the drain
 * time-out, so the second is still queued when the bus stops, and is abandoned. */
static tb_gate abandon_gate = TB_GATE_INIT;
static ew_handler_result abandon_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tb_gate_pass(&abandon_gate);
    return EW_HANDLER_OK;
}

static void *open_gate_later(void *g)
{
    usleep(1000000);
    tb_gate_open(g);
    return NULL;
}

static void test_abandoned_is_redelivered(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128], subject[EW_UUID_LEN + 1];
    new_prefix(prefix, sizeof prefix, "abn");
    snprintf(key, sizeof key, "%s:user.role_changed", prefix);
    ew_uuid7(subject);
    ew_bus *a;
    OPEN(a, NULL, "svc-abn", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_CLAIM_IDLE_MS", "300",
         "EVENT_BUS_DRAIN_TIMEOUT_MS", "100");
    tb_subscribe(a, "user.role_changed", abandon_fn, NULL, NULL);
    tb_start(a);
    ew_event *second = tb_event(EW_T_USER_ROLE_CHANGED, subject);
    tb_publish_owned(a, tb_event(EW_T_USER_ROLE_CHANGED, subject));
    tb_publish_owned(a, ew_event_ref(second));
    tb_gate_wait_arrivals(&abandon_gate, 1);
    redisContext *c = raw(0);
    wait_until_ll(c, pending, key, "svc-abn", 2, "both entries read");
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_later, &abandon_gate), 0);
    assert_int_equal(ew_bus_close(a), EW_ETIMEDOUT); /* the second was still queued */
    pthread_join(opener, NULL);
    assert_int_equal(pending(c, key, "svc-abn"), 1);
    ew_bus *b;
    OPEN(b, NULL, "svc-abn", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_CLAIM_IDLE_MS", "300");
    cf_keep_like got = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(b, "user.role_changed", keep_id, &got, NULL);
    tb_start(b);
    wait_atomic(&got.n, 1, "the abandoned entry, taken over");
    wait_until_ll(c, pending, key, "svc-abn", 0, "pending at the end");
    tb_close(b);
    assert_int_equal(atomic_load(&got.n), 1);
    assert_string_equal(got.id, ew_event_id(second));
    ew_event_unref(second);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* An entry without the `event` field (a foreign producer's) is dead-lettered with EW_EMISSING,
 * its first value and where it came from (stream and entry id), and acknowledged; the consumer
 * carries on. */
static void test_foreign_entry_without_event_field(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "frn");
    snprintf(key, sizeof key, "%s:user.registered", prefix);
    ew_bus *bus;
    OPEN(bus, NULL, "svc-frn", "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int n = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_start(bus);
    redisContext *c = raw(0);
    redisReply *r = redisCommand(c, "XADD %s * payload hello", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char where[256];
    snprintf(where, sizeof where, "redis stream=%s entry=%s", key, r->str);
    freeReplyObject(r);
    tb_publish_owned(bus, tb_user_registered());
    wait_atomic(&n, 1, "the good event");
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_memdlq_count(q) < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(ew_memdlq_count(q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_non_null(strstr(e.error, "EW_EMISSING"));
    assert_string_equal(e.handler, "<decode>");
    assert_string_equal(e.group, "svc-frn");
    assert_string_equal(e.event_type, "user.registered");
    assert_int_equal(e.payload_len, 5);
    assert_memory_equal(e.payload, "hello", 5); /* the first field's value: all it had */
    assert_string_equal(e.transport, where);
    ew_memdlq_entry_release(&e);
    wait_until_ll(c, pending, key, "svc-frn", 0, "pending after the dead letter");
    tb_close(bus);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* The stream (and with it the group) is deleted under a running consumer: it creates the group
 * again and goes on with the events published after. */
static void test_group_recreated_after_delete(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "del");
    snprintf(key, sizeof key, "%s:user.verified", prefix);
    tb_log log = TB_LOG_INIT;
    ew_bus_options lo = {.log = tb_log_fn, .log_ud = &log};
    ew_bus *bus;
    OPEN(bus, &lo, "svc-del", "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int n = 0;
    tb_subscribe(bus, "user.verified", tb_count, &n, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_atomic(&n, 1, "before the delete");
    redisContext *c = raw(0);
    raw_int(c, "DEL %s", key);
    for (int i = 0; i < 5; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_atomic(&n, 6, "after the delete");
    tb_close(bus);
    assert_true(tb_log_has(&log, "created again"));
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* A pattern subscription reads the streams of every catalog type it matches, also those that do
 * not exist yet when it subscribes; other types' streams are not read. */
static void test_pattern_streams(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "pst");
    redisContext *c = raw(0);
    ew_bus *bus;
    OPEN(bus, NULL, "svc-pst", "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int n = 0;
    tb_subscribe(bus, "password.*", tb_count, &n, NULL);
    tb_start(bus);
    snprintf(key, sizeof key, "%s:password.reset_expired", prefix);
    assert_int_equal(raw_int(c, "EXISTS %s", key), 1); /* made with its group at subscribe */
    snprintf(key, sizeof key, "%s:user.registered", prefix);
    assert_int_equal(raw_int(c, "EXISTS %s", key), 0);
    tb_publish_owned(bus, tb_event(EW_T_PASSWORD_RESET_EXPIRED, NULL));
    tb_publish_owned(bus, tb_event(EW_T_PASSWORD_RESET_REQUESTED, NULL));
    tb_publish_owned(bus, tb_event(EW_T_USER_REGISTERED, NULL));
    wait_atomic(&n, 2, "password events");
    usleep(200000);
    tb_close(bus);
    assert_int_equal(atomic_load(&n), 2);
    redisReply *r = redisCommand(c, "KEYS %s:*", prefix);
    for (size_t i = 0; r && i < r->elements; i++)
        raw_int(c, "DEL %s", r->element[i]->str);
    if (r) freeReplyObject(r);
    redisFree(c);
}

/* Two buses in one process are independent: each has its own consumer in the group, and closing
 * one leaves the other working. */
static void test_two_buses_independent(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128];
    new_prefix(prefix, sizeof prefix, "two");
    snprintf(key, sizeof key, "%s:user.logged_out", prefix);
    ew_bus *a, *b;
    OPEN(a, NULL, "svc-two", "REDIS_CHANNEL_PREFIX", prefix);
    OPEN(b, NULL, "svc-two", "REDIS_CHANNEL_PREFIX", prefix);
    atomic_int na = 0, nb = 0;
    tb_subscribe(a, "user.logged_out", tb_count, &na, NULL);
    tb_subscribe(b, "user.logged_out", tb_count, &nb, NULL);
    tb_start(a);
    tb_start(b);
    redisContext *c = raw(0);
    /* both consumers have shown themselves to the group */
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        redisReply *r = redisCommand(c, "XINFO CONSUMERS %s svc-two", key);
        size_t nc = r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        if (r) freeReplyObject(r);
        if (nc == 2) break;
        if (ew_mono_ns() > end) fail_msg("%zu consumers in the group, not 2", nc);
        usleep(5000);
    }
    tb_close(a);
    for (int i = 0; i < 10; i++)
        tb_publish_owned(b, tb_event(EW_T_USER_LOGGED_OUT, NULL));
    wait_atomic(&nb, 10, "the remaining bus");
    tb_close(b);
    assert_int_equal(atomic_load(&na), 0);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* The consumer's connections are killed while a handler holds an entry: an entry id outlives
 * its connection, so what the bus held is acknowledged on the next connection when the handler
 * finishes, and reading our own pending entries again after the reconnection does not deliver a
 * second time what is still held. The bus works in database 11, so that the connections killed
 * are only this test's (the others' tests share the server). */
static tb_gate lost_gate = TB_GATE_INIT;
static ew_handler_result lost_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tb_gate_pass(&lost_gate);
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

/* Kills every client of database db but c itself. Returns how many. */
static int kill_clients_of_db(redisContext *c, int db)
{
    long long me = raw_int(c, "CLIENT ID");
    redisReply *r = redisCommand(c, "CLIENT LIST");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char want[16];
    snprintf(want, sizeof want, " db=%d ", db);
    int killed = 0;
    for (char *line = r->str; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        long long id = -1;
        if (strstr(line, want) && sscanf(line, "id=%lld", &id) == 1 && id != me) {
            raw_int(c, "CLIENT KILL ID %lld", id);
            killed++;
        }
        line = nl ? nl + 1 : NULL;
    }
    freeReplyObject(r);
    return killed;
}

static void test_held_entries_survive_a_lost_connection(void **state)
{
    NEED_SERVER();
    char prefix[64], key[128], url[128];
    new_prefix(prefix, sizeof prefix, "lst");
    snprintf(key, sizeof key, "%s:user.verified", prefix);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/11", srv_port());
    tb_log log = TB_LOG_INIT;
    ew_bus_options lo = {.log = tb_log_fn, .log_ud = &log};
    ew_bus *bus;
    OPEN(bus, &lo, "svc-lst", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_EVENT_URL", url);
    atomic_int n = 0;
    tb_subscribe(bus, "user.verified", lost_fn, &n, NULL);
    tb_start(bus);
    for (int i = 0; i < 3; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    tb_gate_wait_arrivals(&lost_gate, 1);
    redisContext *c = raw(11);
    wait_until_ll(c, pending, key, "svc-lst", 3, "all three read");
    assert_true(kill_clients_of_db(c, 11) >= 2); /* the reading and acknowledging connections */
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (!tb_log_has(&log, "reconnected") && ew_mono_ns() < end)
        usleep(5000);
    assert_true(tb_log_has(&log, "lost its connection")); /* the situation was reached */
    assert_true(tb_log_has(&log, "reconnected"));
    usleep(200000); /* room for a wrong redelivery of what is held */
    tb_gate_open(&lost_gate);
    wait_atomic(&n, 3, "handled after the reconnection");
    wait_until_ll(c, pending, key, "svc-lst", 0, "pending after the handlers finished");
    usleep(300000);
    assert_int_equal(atomic_load(&n), 3); /* each once */
    tb_close(bus);
    raw_int(c, "DEL %s", key);
    redisFree(c);
}

/* ---- Pub/Sub ----------------------------------------------------------------------------- */

/* REDIS_MODE=pubsub: PUBLISH to PREFIX:TYPE, pattern subscriptions; nothing is stored, so an
 * event published while nobody listens is gone. */
static void test_pubsub_mode(void **state)
{
    NEED_SERVER();
    char prefix[64];
    new_prefix(prefix, sizeof prefix, "ps");
    ew_bus *pub, *sub;
    OPEN(pub, NULL, "pub", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_MODE", "pubsub");
    tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_IN, NULL)); /* nobody listens: lost */
    OPEN(sub, NULL, "svc-ps", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_MODE", "pubsub");
    atomic_int user = 0, exact = 0, hash = 0;
    tb_subscribe(sub, "user.*", tb_count, &user, &(ew_subscribe_opts){.name = "star"});
    tb_subscribe(sub, "notification.email_sent", tb_count, &exact,
                 &(ew_subscribe_opts){.name = "exact"});
    tb_start(sub);
    for (int i = 0; i < 10; i++) {
        tb_publish_owned(pub, tb_event(EW_T_USER_LOGGED_IN, NULL));
        tb_publish_owned(pub, tb_event(EW_T_NOTIFICATION_EMAIL_SENT, NULL));
        tb_publish_owned(pub, tb_event(EW_T_PASSWORD_RESET_REQUESTED, NULL));
    }
    wait_atomic(&user, 10, "user.* over pubsub");
    wait_atomic(&exact, 10, "notification.email_sent over pubsub");
    /* a subscription added while running is confirmed before subscribe returns */
    tb_subscribe(sub, "password.#", tb_count, &hash, &(ew_subscribe_opts){.name = "hash"});
    tb_publish_owned(pub, tb_event(EW_T_PASSWORD_RESET_REQUESTED, NULL));
    wait_atomic(&hash, 1, "password.# over pubsub");
    usleep(200000);
    tb_close(sub);
    tb_close(pub);
    assert_int_equal(atomic_load(&user), 10);
    assert_int_equal(atomic_load(&exact), 10);
    assert_int_equal(atomic_load(&hash), 1);
    redisContext *c = raw(0);
    redisReply *r = redisCommand(c, "KEYS %s*", prefix);
    assert_int_equal(r->elements, 0); /* nothing stored */
    freeReplyObject(r);
    redisFree(c);
}

/* Pub/Sub: a message that is not an event is dead-lettered, the next one handled. */
static void test_pubsub_bad_message(void **state)
{
    NEED_SERVER();
    char prefix[64], channel[128];
    new_prefix(prefix, sizeof prefix, "psb");
    ew_bus *bus;
    OPEN(bus, NULL, "svc-psb", "REDIS_CHANNEL_PREFIX", prefix, "REDIS_MODE", "pubsub");
    atomic_int n = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_start(bus);
    redisContext *c = raw(0);
    snprintf(channel, sizeof channel, "%s:user.registered", prefix);
    redisReply *r = redisCommand(c, "PUBLISH %s {not-json", channel);
    freeReplyObject(r);
    tb_publish_owned(bus, tb_user_registered());
    wait_atomic(&n, 1, "the good event");
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_memdlq_count(q) < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(ew_memdlq_count(q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_non_null(strstr(e.error, "EW_EJSON"));
    ew_memdlq_entry_release(&e);
    tb_close(bus);
    redisFree(c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_url_malformed),
    cmocka_unit_test(test_url_good_forms_connect),
    cmocka_unit_test(test_url_database_is_selected),
    cmocka_unit_test(test_url_credentials),
    cmocka_unit_test(test_open_refused),
    cmocka_unit_test(test_open_times_out),
    cmocka_unit_test(test_publish_durable_then_acked),
    cmocka_unit_test(test_stream_maxlen),
    cmocka_unit_test(test_stream_max_age),
    cmocka_unit_test(test_publish_too_big),
    cmocka_unit_test(test_publish_batch_error_names_index),
    cmocka_unit_test(test_max_in_flight),
    cmocka_unit_test(test_claims_from_dead_consumer),
    cmocka_unit_test(test_slow_handler_keeps_its_entry),
    cmocka_unit_test(test_abandoned_is_redelivered),
    cmocka_unit_test(test_foreign_entry_without_event_field),
    cmocka_unit_test(test_group_recreated_after_delete),
    cmocka_unit_test(test_pattern_streams),
    cmocka_unit_test(test_two_buses_independent),
    cmocka_unit_test(test_held_entries_survive_a_lost_connection),
    cmocka_unit_test(test_pubsub_mode),
    cmocka_unit_test(test_pubsub_bad_message),
};

EW_TEST_MAIN(tests)

#else /* a build without hiredis: nothing to test, and saying so */
#include "support/ew_test.h"

static void redis_not_built(void **state)
{
    skip();
}

static const struct CMUnitTest tests[] = {cmocka_unit_test(redis_not_built)};

EW_TEST_MAIN(tests)
#endif
