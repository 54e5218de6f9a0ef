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

/* A bus of namespace ns whose lag comes from the management API at mgmt (its own credentials
 * in it, or none: RABBITMQ_URL's). EW_ECONFIG and the like come back in *rc with err. */
static ew_bus *open_with_management(const cf_ns *ns, const char *mgmt, int *rc, ew_error *err)
{
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "rabbitmq", err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "metrics", err), 0);
    assert_int_equal(rabbitmq_configure(cfg, ns->name), 0);
    assert_int_equal(ew_config_set(cfg, "RABBITMQ_MANAGEMENT_URL", mgmt, err), 0);
    ew_bus *bus = NULL;
    *rc = ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, err);
    ew_config_free(cfg);
    return bus;
}

/* The lag as the management API last collected it: polls while the plugin has no figures for the
 * queue yet (EW_EAGAIN) or they differ from want (collected every 500 ms on the test's node). */
static void wait_mgmt_lag(ew_bus *bus, const char *group, uint64_t want, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    for (;;) {
        cf_lag_seen l = {.group = group};
        ew_error err = {0};
        int rc = ew_bus_lag(bus, group, cf_lag_record, &l, &err);
        if (rc && rc != EW_EAGAIN) fail_msg("%s: ew_bus_lag(%s): %s", what, group, err.msg);
        if (!rc) {
            assert_int_equal(l.calls, 1);
            assert_int_equal(l.matches, 1);
            if (l.lag == want) return;
        }
        if (ew_mono_ns() > end)
            fail_msg("%s: lag of group %s is %llu (%s), not %llu, after %d ms", what, group,
                     (unsigned long long)l.lag, rc ? err.msg : "counted", (unsigned long long)want,
                     CF_TIMEOUT_MS);
        usleep(50000);
    }
}

/* With RABBITMQ_MANAGEMENT_URL the lag counts the messages delivered to a consumer and not yet
 * acknowledged: a consumer handles K of N and holds the rest (one in its handler, the others in
 * its prefetch window). Over AMQP alone the queue's ready count is then 0; through the management
 * API the lag is N - K, and 0 once the consumer lets them go. Wrong credentials are refused with
 * a message that does not hold the password; an unknown group is EW_ENOTFOUND. */
static void rabbitmq_lag_counts_unacked_with_management(void **state)
{
    if (!rabbitmq_url()) skip();
    const char *u = ew_test_server_url("rabbitmq-management"); /* a static buffer: copied */
    if (!u) fail_msg("the rabbitmq fixture gives no rabbitmq-management.url");
    char mgmt[256], bad[300];
    snprintf(mgmt, sizeof mgmt, "%s", u);
    /* http://guest:WRONG@host:port/ */
    snprintf(bad, sizeof bad, "http://guest:not-the-password-42@%s", mgmt + strlen("http://"));
    cf_ns ns = cf_new_ns("mgl");
    enum { N = 30, K = 12 };
    cf_lag_handler h = {.free_passes = K, .gate = TB_GATE_INIT};
    const ew_subscribe_opts so = {.group = "lagged", .name = "h"};
    ew_bus *con;
    CF_OPEN(con, &ns, "svc-l", NULL);
    tb_subscribe(con, "user.logged_in", cf_lag_handle, &h, &so);
    tb_start(con);
    for (int i = 0; i < N; i++)
        tb_publish_owned(con, tb_event(EW_T_USER_LOGGED_IN, NULL));
    tb_gate_wait_arrivals(&h.gate, 1);
    assert_int_equal(atomic_load(&h.handled), K);
    /* AMQP: nothing is ready, every message left is with the consumer */
    cf_wait_lag(con, "lagged", 0, "the rest delivered to the consumer (prefetch)");

    int rc;
    ew_error err = {0};
    ew_bus *mb = open_with_management(&ns, mgmt, &rc, &err);
    if (rc) fail_msg("open with RABBITMQ_MANAGEMENT_URL=%s: %s", mgmt, err.msg);
    wait_mgmt_lag(mb, "lagged", N - K, "K acknowledged, the rest unacknowledged");
    cf_lag_seen none = {.group = ""};
    err = (ew_error){0};
    assert_int_equal(ew_bus_lag(mb, "nobody", cf_lag_record, &none, &err), EW_ENOTFOUND);
    assert_int_equal(none.calls, 0);

    ew_bus *wrong = open_with_management(&ns, bad, &rc, &err);
    assert_int_equal(rc, 0);
    err = (ew_error){0};
    assert_int_equal(ew_bus_lag(wrong, "lagged", cf_lag_record, &none, &err), EW_EAUTH);
    assert_null(strstr(err.msg, "not-the-password-42"));
    assert_non_null(strstr(err.msg, "***"));
    tb_close(wrong);

    tb_gate_open(&h.gate);
    cf_wait_count(&h.handled, N, CF_TIMEOUT_MS, "the rest handled");
    wait_mgmt_lag(mb, "lagged", 0, "all acknowledged");
    tb_close(mb);
    tb_close(con);
}

/* RABBITMQ_MANAGEMENT_URL is checked at open, and shown without its password. */
static void rabbitmq_management_url_is_checked(void **state)
{
    if (!rabbitmq_url()) skip();
    cf_ns ns = cf_new_ns("mgu");
    static const char *const refused[] = {"ftp://127.0.0.1:15672/", "http://:15672/",
                                          "http://guest:hunter2-secret@127.0.0.1:15672/?x=1"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        int rc;
        ew_error err = {0};
        ew_bus *b = open_with_management(&ns, refused[i], &rc, &err);
        assert_null(b);
        assert_int_equal(rc, EW_ECONFIG);
        assert_non_null(strstr(err.msg, "RABBITMQ_MANAGEMENT_URL"));
        assert_null(strstr(err.msg, "hunter2"));
    }
    ew_config *cfg;
    ew_error err = {0};
    char shown[200];
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "RABBITMQ_MANAGEMENT_URL",
                                   "https://monitor:hunter2-secret@mq.example:15671/", &err),
                     0);
    assert_string_equal(ew_config_shown(cfg, "RABBITMQ_MANAGEMENT_URL", shown, sizeof shown),
                        "https://monitor:***@mq.example:15671/");
    ew_config_free(cfg);
}

static const struct CMUnitTest tests[] = {
    CF_TESTS, CF_WIRE_TESTS, cmocka_unit_test(rabbitmq_lag_counts_unacked_with_management),
    cmocka_unit_test(rabbitmq_management_url_is_checked)};

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
