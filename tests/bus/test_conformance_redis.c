/* The bus conformance suite against the Redis backend (streams), on the test server that CTest
 * starts (scripts/test-servers). Each test's namespace is its REDIS_CHANNEL_PREFIX.
 * ew-fixture: redis */
#ifdef EW_HAVE_REDIS
#include <hiredis/hiredis.h>
#include "bus/conformance.h"

/* The server's URL from $EW_SERVERS_DIR/redis.url, or NULL when there is none. */
static const char *redis_url(void)
{
    return ew_test_server_url("redis");
}

static int redis_configure(ew_config *cfg, const char *ns)
{
    const char *url = redis_url();
    if (!url) return -1;
    ew_error err = {0};
    if (ew_config_set(cfg, "REDIS_EVENT_URL", url, &err) ||
        ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", ns, &err) ||
        /* a killed consumer's entries are taken over after 5 s instead of 30 */
        ew_config_set(cfg, "REDIS_CLAIM_IDLE_MS", "5000", &err))
        fail_msg("%s", err.msg);
    return 0;
}

static int redis_restart(void)
{
    const char *src = getenv("EW_SOURCE_DIR"), *dir = getenv("EW_SERVERS_DIR");
    if (!src || !dir) return -1;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' restart redis '%s' >/dev/null", src, dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* XADD PREFIX:TYPE * event BYTES, as a foreign producer would. */
static int redis_inject(const char *ns, const char *type, const void *bytes, size_t n)
{
    const char *url = redis_url();
    if (!url) return -1;
    char host[128];
    int port;
    if (sscanf(url, "redis://%127[^:]:%d", host, &port) != 2) return -1;
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) {
        if (c) redisFree(c);
        return -1;
    }
    char key[200];
    snprintf(key, sizeof key, "%s:%s", ns, type);
    redisReply *r = redisCommand(c, "XADD %s * event %b", key, bytes, n);
    int rc = r && r->type == REDIS_REPLY_STRING ? 0 : -1;
    if (r) freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* XPENDING PREFIX:TYPE GROUP: entries delivered to the group and not acknowledged. */
static long redis_unsettled(const char *ns, const char *group, const char *type)
{
    const char *url = redis_url();
    char host[128];
    int port;
    if (!url || sscanf(url, "redis://%127[^:]:%d", host, &port) != 2) return -1;
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) {
        if (c) redisFree(c);
        return -1;
    }
    char key[200];
    snprintf(key, sizeof key, "%s:%s", ns, type);
    redisReply *r = redisCommand(c, "XPENDING %s %s", key, group);
    long n = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                     r->element[0]->type == REDIS_REPLY_INTEGER
                 ? (long)r->element[0]->integer
                 : -1;
    if (r) freeReplyObject(r);
    redisFree(c);
    return n;
}

static const cf_backend redis_backend = {
    .name = "redis",
    .configure = redis_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = true,
    .restart_broker = redis_restart,
    .inject_raw = redis_inject,
    .unsettled = redis_unsettled,
};

static const cf_backend *cf_be(void)
{
    return &redis_backend;
}

static const struct CMUnitTest tests[] = {CF_TESTS, CF_WIRE_TESTS};

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
