/* The basics of the bus conformance suite against the RabbitMQ backend over TLS (amqps://), on
 * the TLS listener of the node that CTest starts (scripts/test-servers rabbitmq), trusting the
 * fixture's throw-away CA through RABBITMQ_TLS_CA_FILE. The cases that inject messages or count
 * a queue from outside, and the broker restart, run on the plain listener
 * (test_conformance_rabbitmq): the transport below them is the same.
 * ew-fixture: rabbitmq */
#ifdef EW_HAVE_RABBITMQ
#include "bus/conformance.h"

static int rabbitmq_tls_configure(ew_config *cfg, const char *ns)
{
    const char *url = ew_test_server_url("rabbitmq-tls");
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!url || !dir) return -1;
    char ca[1024];
    snprintf(ca, sizeof ca, "%s/rabbitmq-tls/ca.pem", dir);
    ew_error err = {0};
    if (ew_config_set(cfg, "RABBITMQ_URL", url, &err) ||
        ew_config_set(cfg, "RABBITMQ_TLS_CA_FILE", ca, &err) ||
        ew_config_set(cfg, "RABBITMQ_EXCHANGE", ns, &err))
        fail_msg("%s", err.msg);
    return 0;
}

static const cf_backend rabbitmq_tls_backend = {
    .name = "rabbitmq",
    .configure = rabbitmq_tls_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = false,
};

static const cf_backend *cf_be(void)
{
    return &rabbitmq_tls_backend;
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
    cmocka_unit_test(cf_ephemeral_group),
};

EW_TEST_MAIN(tests)

#else /* a build without librabbitmq: nothing to test, and saying so */
#include "support/ew_test.h"

static void rabbitmq_not_built(void **state)
{
    skip();
}

static const struct CMUnitTest tests[] = {cmocka_unit_test(rabbitmq_not_built)};

EW_TEST_MAIN(tests)
#endif
