/* rediss:// (src/bus/redis_conn.c): TLS on the Redis backend's own connection, against the two
 * TLS-only servers of the redis_tls fixture (one takes any client, one wants a client
 * certificate) and the plain server of the redis fixture. A wrong CA, a wrong host name, a
 * missing client certificate fail at open with an error naming the setting; the password of the
 * URL shows nowhere.
 * ew-fixture: redis_tls
 * ew-fixture: redis */
#ifdef EW_HAVE_REDIS
#include "bus/tls_test_util.h"

#define CA(slot) tls_file(slot, "redis-tls", "ca.pem")

static void expect_refused(const char *const *kv, int code, const char *needle1,
                           const char *needle2)
{
    tb_log log = TB_LOG_INIT;
    ew_bus *bus = NULL;
    ew_error err = {0};
    int rc = tls_open(&bus, &log, "redis", kv, &err);
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

static void test_rediss_publish_subscribe_pubsub(void **state)
{
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL",
                        tls_url(url, sizeof url, "redis-tls", NULL, NULL),
                        "REDIS_TLS_CA_FILE",
                        CA(0),
                        "REDIS_MODE",
                        "pubsub",
                        NULL};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus;
    ew_error err = {0};
    if (tls_open(&bus, &log, "redis", kv, &err)) fail_msg("%s", err.msg);
    tls_roundtrip(bus);
    tb_close(bus);
}

/* An ACL user over TLS, as over plain Redis: the user is made with redis-cli --tls. */
static void test_rediss_acl_user(void **state)
{
    char url[256], id[EW_UUID_LEN + 1], user[32], cmd[2048];
    tls_url(url, sizeof url, "redis-tls", NULL, NULL);
    ew_uuid7(id);
    snprintf(user, sizeof user, "tls%.8s", id + 28);
    const char *port = strrchr(url, ':') + 1;
    snprintf(cmd, sizeof cmd,
             "redis-cli --tls --cacert '%s' -h 127.0.0.1 -p %s ACL SETUSER %s on '>%s' '~*' '&*' "
             "+@all >/dev/null",
             CA(0), port, user, TLS_SECRET);
    if (system(cmd) != 0) fail_msg("redis-cli could not make the ACL user: %s", cmd);
    char userinfo[96];
    snprintf(userinfo, sizeof userinfo, "%s:%s", user, TLS_SECRET);
    const char *kv[] = {"REDIS_EVENT_URL", tls_url(url, sizeof url, "redis-tls", userinfo, NULL),
                        "REDIS_TLS_CA_FILE", CA(0), NULL};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus;
    ew_error err = {0};
    if (tls_open(&bus, &log, "redis", kv, &err)) fail_msg("%s", err.msg);
    tls_roundtrip(bus);
    tb_close(bus);
    tls_no_secret("the log", log.text);
    /* and a wrong password for that user is refused, naming the URL's setting */
    snprintf(userinfo, sizeof userinfo, "%s:not-%s", user, TLS_SECRET);
    const char *wrong[] = {"REDIS_EVENT_URL", tls_url(url, sizeof url, "redis-tls", userinfo, NULL),
                           "REDIS_TLS_CA_FILE", CA(0), NULL};
    expect_refused(wrong, EW_ECONFIG, "refused the credentials", "REDIS_EVENT_URL");
}

static void test_rediss_client_certificate(void **state)
{
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL",
                        tls_url(url, sizeof url, "redis-mtls", NULL, NULL),
                        "REDIS_TLS_CA_FILE",
                        CA(0),
                        "REDIS_TLS_CERT_FILE",
                        tls_file(1, "redis-tls", "client.pem"),
                        "REDIS_TLS_KEY_FILE",
                        tls_file(2, "redis-tls", "client.key"),
                        NULL};
    tb_log log = TB_LOG_INIT;
    ew_bus *bus;
    ew_error err = {0};
    if (tls_open(&bus, &log, "redis", kv, &err)) fail_msg("%s", err.msg);
    tls_roundtrip(bus);
    tb_close(bus);
}

static void test_rediss_without_client_certificate_refused(void **state)
{
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL", tls_url(url, sizeof url, "redis-mtls", NULL, NULL),
                        "REDIS_TLS_CA_FILE", CA(0), NULL};
    expect_refused(kv, EW_ECONFIG, "refused the TLS connection", "REDIS_TLS_CERT_FILE");
}

static void test_rediss_wrong_ca_refused(void **state)
{
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL",
                        tls_url(url, sizeof url, "redis-tls", "default:" TLS_SECRET, NULL),
                        "REDIS_TLS_CA_FILE", tls_file(0, "redis-tls", "other-ca.pem"), NULL};
    expect_refused(kv, EW_ECONFIG, "does not verify", "REDIS_TLS_CA_FILE");
}

static void test_rediss_system_ca_refuses_private_ca(void **state)
{
    /* no REDIS_TLS_CA_FILE: the system's authorities, which know nothing of the fixture's CA */
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL", tls_url(url, sizeof url, "redis-tls", NULL, NULL), NULL};
    expect_refused(kv, EW_ECONFIG, "does not verify", "REDIS_TLS_CA_FILE");
}

static void test_rediss_wrong_host_refused(void **state)
{
    /* the server's certificate is for 127.0.0.1 only */
    char url[256];
    const char *kv[] = {"REDIS_EVENT_URL", tls_url(url, sizeof url, "redis-tls", NULL, "localhost"),
                        "REDIS_TLS_CA_FILE", CA(0), NULL};
    expect_refused(kv, EW_ECONFIG, "is not for 'localhost'", "REDIS_EVENT_URL");
}

static void test_rediss_on_plain_port_refused(void **state)
{
    char url[256];
    tls_url(url, sizeof url, "redis", NULL, NULL);
    char tls[260];
    snprintf(tls, sizeof tls, "rediss://%s", url + strlen("redis://"));
    const char *kv[] = {"REDIS_EVENT_URL", tls, "REDIS_TLS_CA_FILE", CA(0), NULL};
    expect_refused(kv, EW_ECONNECT, "TLS handshake", "TLS port");
}

static void test_rediss_bad_tls_files_refused(void **state)
{
    char url[256];
    tls_url(url, sizeof url, "redis-tls", NULL, NULL);
    const char *missing_ca[] = {"REDIS_EVENT_URL", url, "REDIS_TLS_CA_FILE", "/nonexistent/ca.pem",
                                NULL};
    expect_refused(missing_ca, EW_ECONFIG, "REDIS_TLS_CA_FILE", "/nonexistent/ca.pem");
    const char *lone_cert[] = {"REDIS_EVENT_URL",
                               url,
                               "REDIS_TLS_CA_FILE",
                               CA(0),
                               "REDIS_TLS_CERT_FILE",
                               tls_file(1, "redis-tls", "client.pem"),
                               NULL};
    expect_refused(lone_cert, EW_ECONFIG, "REDIS_TLS_KEY_FILE", "needs both");
    const char *wrong_key[] = {"REDIS_EVENT_URL",
                               url,
                               "REDIS_TLS_CA_FILE",
                               CA(0),
                               "REDIS_TLS_CERT_FILE",
                               tls_file(1, "redis-tls", "client.pem"),
                               "REDIS_TLS_KEY_FILE",
                               tls_file(2, "redis-tls", "server.key"),
                               NULL};
    expect_refused(wrong_key, EW_ECONFIG, "REDIS_TLS_KEY_FILE", NULL);
}

/* The URL's password, wrong or in a URL that does not parse, shows in no error and no log. */
static void test_redis_password_never_shown(void **state)
{
    char url[256];
    const char *refused[] = {"REDIS_EVENT_URL",
                             tls_url(url, sizeof url, "redis", "someone:" TLS_SECRET, NULL), NULL};
    expect_refused(refused, EW_ECONFIG, "refused the credentials", NULL);
    const char *tls_refused[] = {"REDIS_EVENT_URL",
                                 tls_url(url, sizeof url, "redis-tls", ":" TLS_SECRET, NULL),
                                 "REDIS_TLS_CA_FILE", CA(0), NULL};
    expect_refused(tls_refused, EW_ECONFIG, "refused the credentials", NULL);
    const char *scheme[] = {"REDIS_EVENT_URL", "http://someone:" TLS_SECRET "@127.0.0.1:1", NULL};
    expect_refused(scheme, EW_ECONFIG, "REDIS_EVENT_URL", "'http:'");
    const char *port[] = {"REDIS_EVENT_URL", "rediss://someone:" TLS_SECRET "@127.0.0.1:port",
                          NULL};
    expect_refused(port, EW_ECONFIG, "REDIS_EVENT_URL", "port");
    const char *unreachable[] = {"REDIS_EVENT_URL", "rediss://someone:" TLS_SECRET "@127.0.0.1:1",
                                 NULL};
    expect_refused(unreachable, EW_ECONNECT, "127.0.0.1:1", NULL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_rediss_publish_subscribe_pubsub),
    cmocka_unit_test(test_rediss_acl_user),
    cmocka_unit_test(test_rediss_client_certificate),
    cmocka_unit_test(test_rediss_without_client_certificate_refused),
    cmocka_unit_test(test_rediss_wrong_ca_refused),
    cmocka_unit_test(test_rediss_system_ca_refuses_private_ca),
    cmocka_unit_test(test_rediss_wrong_host_refused),
    cmocka_unit_test(test_rediss_on_plain_port_refused),
    cmocka_unit_test(test_rediss_bad_tls_files_refused),
    cmocka_unit_test(test_redis_password_never_shown),
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
