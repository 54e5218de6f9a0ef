/* The basics of the bus conformance suite against the Redis backend over TLS (rediss://), on the
 * TLS-only server that CTest starts (scripts/test-servers redis_tls), trusting the fixture's
 * throw-away CA through REDIS_TLS_CA_FILE. The cases that inject bytes or look at the streams
 * from outside run on plain Redis (test_conformance_redis): hiredis 0.14, which they use for
 * that, has no TLS.
 * ew-fixture: redis_tls */
#ifdef EW_HAVE_REDIS
#include "bus/conformance.h"

static int redis_tls_configure(ew_config *cfg, const char *ns)
{
    const char *url = ew_test_server_url("redis-tls");
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!url || !dir) return -1;
    char ca[1024];
    snprintf(ca, sizeof ca, "%s/redis-tls/ca.pem", dir);
    ew_error err = {0};
    if (ew_config_set(cfg, "REDIS_EVENT_URL", url, &err) ||
        ew_config_set(cfg, "REDIS_TLS_CA_FILE", ca, &err) ||
        ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", ns, &err) ||
        ew_config_set(cfg, "REDIS_CLAIM_IDLE_MS", "5000", &err))
        fail_msg("%s", err.msg);
    return 0;
}

static const cf_backend redis_tls_backend = {
    .name = "redis",
    .configure = redis_tls_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = true,
};

static const cf_backend *cf_be(void)
{
    return &redis_tls_backend;
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cf_publish_subscribe),
    cmocka_unit_test(cf_event_arrives_intact),
    cmocka_unit_test(cf_patterns),
    cmocka_unit_test(cf_groups),
    cmocka_unit_test(cf_batch_publish),
    cmocka_unit_test(cf_retry_then_dead_letter),
    cmocka_unit_test(cf_order_per_subject),
    cmocka_unit_test(cf_graceful_close),
    cmocka_unit_test(cf_consumer_killed_and_restarted),
    cmocka_unit_test(cf_from_beginning),
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
