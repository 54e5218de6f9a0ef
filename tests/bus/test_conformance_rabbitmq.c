/* The bus conformance suite against the RabbitMQ backend, on the server that CTest starts.
 * ew-fixture: rabbitmq */
#ifdef EW_HAVE_RABBITMQ
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include "bus/conformance.h"

/* The broker's URL from $EW_SERVERS_DIR/rabbitmq.url, or NULL when no server runs. */
static const char *rabbitmq_url(void)
{
    return ew_test_server_url("rabbitmq");
}

static int rabbitmq_configure(ew_config *cfg, const char *ns)
{
    const char *url = rabbitmq_url();
    if (!url) return -1;
    ew_error err = {0};
    if (ew_config_set(cfg, "RABBITMQ_URL", url, &err) ||
        ew_config_set(cfg, "RABBITMQ_EXCHANGE", ns, &err))
        fail_msg("%s", err.msg);
    return 0;
}

static int rabbitmq_restart(void)
{
    const char *src = getenv("EW_SOURCE_DIR"), *dir = getenv("EW_SERVERS_DIR");
    if (!src || !dir) return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' restart rabbitmq '%s' >/dev/null 2>&1",
             src, dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Publishes bytes to the namespace's exchange with the type as routing key, as a foreign
 * producer would: rabbitmq-c directly, persistent, waiting for the broker's confirm. */
static int rabbitmq_inject(const char *ns, const char *type, const void *bytes, size_t n)
{
    const char *url = rabbitmq_url();
    if (!url) return -1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", url);
    struct amqp_connection_info ci;
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK) return -1;
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    int rc = -1;
    if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK) goto out;
    if (amqp_login(st, *ci.vhost ? ci.vhost : "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                   ci.password)
            .reply_type != AMQP_RESPONSE_NORMAL)
        goto out;
    amqp_channel_open(st, 1);
    if (amqp_get_rpc_reply(st).reply_type != AMQP_RESPONSE_NORMAL) goto out;
    amqp_confirm_select(st, 1);
    if (amqp_get_rpc_reply(st).reply_type != AMQP_RESPONSE_NORMAL) goto out;
    amqp_basic_properties_t p = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG, .delivery_mode = 2};
    if (amqp_basic_publish(st, 1, amqp_cstring_bytes(ns), amqp_cstring_bytes(type), 0, 0, &p,
                           (amqp_bytes_t){.len = n, .bytes = (void *)bytes}) != AMQP_STATUS_OK)
        goto out;
    amqp_frame_t f;
    while (amqp_simple_wait_frame(st, &f) == AMQP_STATUS_OK) {
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) rc = 0;
        break;
    }
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
out:
    amqp_destroy_connection(st);
    return rc;
}

/* The messages waiting in the group's queue {exchange}.{group} (a passive queue.declare): with no
 * consumer of the group running, what was not acknowledged is back there. */
static long rabbitmq_unsettled(const char *ns, const char *group, const char *type)
{
    (void)type;
    const char *url = rabbitmq_url();
    if (!url) return -1;
    char buf[256], queue[200];
    snprintf(buf, sizeof buf, "%s", url);
    snprintf(queue, sizeof queue, "%s.%s", ns, group);
    struct amqp_connection_info ci;
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK) return -1;
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    long n = -1;
    if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK) goto out;
    if (amqp_login(st, *ci.vhost ? ci.vhost : "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                   ci.password)
            .reply_type != AMQP_RESPONSE_NORMAL)
        goto out;
    amqp_channel_open(st, 1);
    if (amqp_get_rpc_reply(st).reply_type != AMQP_RESPONSE_NORMAL) goto out;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(st, 1, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (ok) n = (long)ok->message_count;
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
out:
    amqp_destroy_connection(st);
    return n;
}

static const cf_backend rabbitmq_backend = {
    .name = "rabbitmq",
    .configure = rabbitmq_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = false,
    .restart_broker = rabbitmq_restart,
    .inject_raw = rabbitmq_inject,
    .unsettled = rabbitmq_unsettled,
};

static const cf_backend *cf_be(void)
{
    return &rabbitmq_backend;
}

static const struct CMUnitTest tests[] = {CF_TESTS, CF_WIRE_TESTS};

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
