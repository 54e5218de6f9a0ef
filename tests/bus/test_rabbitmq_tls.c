/* amqps:// (src/bus/rabbitmq_conn.c): the RabbitMQ backend over TLS with rabbitmq-c's SSL socket,
 * against the TLS listener of the rabbitmq fixture's node (which checks a client certificate
 * when one is presented). A wrong CA or host name fails at open with an error naming the
 * setting; the password of the URL shows nowhere.
 * ew-fixture: rabbitmq */
#ifdef EW_HAVE_RABBITMQ
#include "bus/tls_test_util.h"

#define CA(slot) tls_file(slot, "rabbitmq-tls", "ca.pem")

static void expect_refused(const char *const *kv, int code, const char *needle1,
                           const char *needle2)
{
    tb_log log = TB_LOG_INIT;
    ew_bus *bus = NULL;
    ew_error err = {0};
    int rc = tls_open(&bus, &log, "rabbitmq", kv, &err);
    if (rc == 0) {
        ew_bus_close(bus);
        fail_msg("the bus opened; expected %s", ew_err_name(code));
    }
    if (rc != code) fail_msg("%s (%s), expected %s", ew_err_name(rc), err.msg, ew_err_name(code));
    if (!strstr(err.msg, needle1)) fail_msg("'%s' does not say '%s'", err.msg, needle1);
    if (needle2 && !strstr(err.msg, needle2)) fail_msg("'%s' does not say '%s'", err.msg, needle2);
    tls_no_secret("the error", err.msg);
    tls_no_secret("the log", log.text);
    print_message("refused as expected: %s: %s\n", ew_err_name(rc), err.msg);
}

static void test_amqps_client_certificate(void **state)
{
    char url[256];
    const char *kv[] = {"RABBITMQ_URL",
                        tls_url(url, sizeof url, "rabbitmq-tls", NULL, NULL),
                        "RABBITMQ_TLS_CA_FILE",
                        CA(0),
                        "RABBITMQ_TLS_CERT_FILE",
                        tls_file(1, "rabbitmq-tls", "client.pem"),
                        "RABBITMQ_TLS_KEY_FILE",
                        tls_file(2, "rabbitmq-tls", "client.key"),
                        "RABBITMQ_EXCHANGE",
                        "tls-client-cert",
                        NULL};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus;
    ew_error err = {0};
    if (tls_open(&bus, &log, "rabbitmq", kv, &err)) fail_msg("%s", err.msg);
    tls_roundtrip(bus);
    tb_close(bus);
}

/* A client certificate from another CA: the node checks what it is shown, and refuses. */
static void test_amqps_untrusted_client_certificate_refused(void **state)
{
    char url[256];
    const char *kv[] = {"RABBITMQ_URL",
                        tls_url(url, sizeof url, "rabbitmq-tls", NULL, NULL),
                        "RABBITMQ_TLS_CA_FILE",
                        CA(0),
                        "RABBITMQ_TLS_CERT_FILE",
                        tls_file(1, "rabbitmq-tls", "other-ca.pem"),
                        "RABBITMQ_TLS_KEY_FILE",
                        tls_file(2, "rabbitmq-tls", "other-ca.key"),
                        NULL};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus = NULL;
    ew_error err = {0};
    int rc = tls_open(&bus, &log, "rabbitmq", kv, &err);
    if (rc == 0) {
        ew_bus_close(bus);
        fail_msg("the node took a client certificate of an unknown CA");
    }
    assert_true(rc == EW_ECONNECT || rc == EW_ECONFIG);
    print_message("refused as expected: %s: %s\n", ew_err_name(rc), err.msg);
}

static void test_amqps_wrong_ca_refused(void **state)
{
    char url[256];
    const char *kv[] = {"RABBITMQ_URL",
                        tls_url(url, sizeof url, "rabbitmq-tls", "guest:" TLS_SECRET, NULL),
                        "RABBITMQ_TLS_CA_FILE", tls_file(0, "rabbitmq-tls", "other-ca.pem"), NULL};
    expect_refused(kv, EW_ECONFIG, "does not verify", "RABBITMQ_TLS_CA_FILE");
}

static void test_amqps_system_ca_refuses_private_ca(void **state)
{
    char url[256];
    const char *kv[] = {"RABBITMQ_URL", tls_url(url, sizeof url, "rabbitmq-tls", NULL, NULL), NULL};
    expect_refused(kv, EW_ECONFIG, "does not verify", "RABBITMQ_TLS_CA_FILE");
}

static void test_amqps_wrong_host_refused(void **state)
{
    /* the node's certificate is for 127.0.0.1 only */
    char url[256];
    const char *kv[] = {"RABBITMQ_URL", tls_url(url, sizeof url, "rabbitmq-tls", NULL, "localhost"),
                        "RABBITMQ_TLS_CA_FILE", CA(0), NULL};
    expect_refused(kv, EW_ECONFIG, "is not for 'localhost'", "RABBITMQ_URL");
}

static void test_amqps_on_plain_port_refused(void **state)
{
    char url[256];
    tls_url(url, sizeof url, "rabbitmq", NULL, NULL);
    char tls[260];
    snprintf(tls, sizeof tls, "amqps://%s", url + strlen("amqp://"));
    const char *kv[] = {"RABBITMQ_URL", tls, "RABBITMQ_TLS_CA_FILE", CA(0), NULL};
    expect_refused(kv, EW_ECONNECT, "TLS handshake", "TLS port");
}

static void test_amqps_bad_tls_files_refused(void **state)
{
    char url[256];
    tls_url(url, sizeof url, "rabbitmq-tls", NULL, NULL);
    const char *missing_ca[] = {"RABBITMQ_URL", url, "RABBITMQ_TLS_CA_FILE", "/nonexistent/ca.pem",
                                NULL};
    expect_refused(missing_ca, EW_ECONFIG, "RABBITMQ_TLS_CA_FILE", "/nonexistent/ca.pem");
    const char *lone_key[] = {"RABBITMQ_URL", url, "RABBITMQ_TLS_KEY_FILE",
                              tls_file(1, "rabbitmq-tls", "client.key"), NULL};
    expect_refused(lone_key, EW_ECONFIG, "RABBITMQ_TLS_CERT_FILE", "needs both");
}

/* The URL's password, wrong or in a URL that does not parse, shows in no error and no log. */
static void test_rabbitmq_password_never_shown(void **state)
{
    char url[256];
    const char *refused[] = {"RABBITMQ_URL",
                             tls_url(url, sizeof url, "rabbitmq-tls", "guest:" TLS_SECRET, NULL),
                             "RABBITMQ_TLS_CA_FILE", CA(0), NULL};
    expect_refused(refused, EW_ECONFIG, "cannot log in", "'guest'");
    const char *plain[] = {"RABBITMQ_URL",
                           tls_url(url, sizeof url, "rabbitmq", "guest:" TLS_SECRET, NULL), NULL};
    expect_refused(plain, EW_ECONFIG, "cannot log in", "'guest'");
    const char *bad[] = {"RABBITMQ_URL", "amqps://guest:" TLS_SECRET "@127.0.0.1:port/", NULL};
    expect_refused(bad, EW_ECONFIG, "RABBITMQ_URL", "***");
    const char *scheme[] = {"RABBITMQ_URL", "http://guest:" TLS_SECRET "@127.0.0.1/", NULL};
    expect_refused(scheme, EW_ECONFIG, "RABBITMQ_URL", "not an AMQP URL");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_amqps_client_certificate),
    cmocka_unit_test(test_amqps_untrusted_client_certificate_refused),
    cmocka_unit_test(test_amqps_wrong_ca_refused),
    cmocka_unit_test(test_amqps_system_ca_refuses_private_ca),
    cmocka_unit_test(test_amqps_wrong_host_refused),
    cmocka_unit_test(test_amqps_on_plain_port_refused),
    cmocka_unit_test(test_amqps_bad_tls_files_refused),
    cmocka_unit_test(test_rabbitmq_password_never_shown),
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
