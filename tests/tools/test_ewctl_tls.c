/* ewctl over TLS, as a user runs it: REDIS_EVENT_URL=rediss://... and RABBITMQ_URL=amqps://...
 * with the CA of the test servers in REDIS_TLS_CA_FILE and RABBITMQ_TLS_CA_FILE (the
 * environment, as the services read it too); a wrong CA stops the command with the setting's
 * name; `ewctl config` shows no URL's password.
 * ew-fixture: redis_tls
 * ew-fixture: rabbitmq */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/id.h"

#define SECRET "Sup3rS3cretPw"

static const char *servers_file(int slot, const char *name)
{
    static char paths[2][1024];
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!dir) skip();
    snprintf(paths[slot], sizeof paths[slot], "%s/%s", dir, name);
    if (access(paths[slot], R_OK) != 0)
        fail_msg("%s is missing: the fixture did not start", paths[slot]);
    return paths[slot];
}

static void use_redis_tls(const char *ca)
{
    const char *url = ew_test_server_url("redis-tls");
    if (!url) skip();
    char ns[32], id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(ns, sizeof ns, "ewctltls%.8s", id + 28);
    setenv("EVENT_BUS_TYPE", "redis", 1);
    setenv("REDIS_EVENT_URL", url, 1);
    setenv("REDIS_TLS_CA_FILE", ca, 1);
    setenv("REDIS_CHANNEL_PREFIX", ns, 1);
}

/* ewctl publish user.registered; its id into id. Returns the exit status; stderr into *err. */
static int publish(char id[EW_UUID_LEN + 1], char **err)
{
    char subject[EW_UUID_LEN + 1], args[1024];
    ew_uuid7(subject);
    snprintf(args, sizeof args,
             "publish user.registered --subject %s --data '{\"user_id\":\"%s\",\"email\":"
             "\"ada@example.com\",\"username\":\"ada\",\"roles\":[\"user\"]}'",
             subject, subject);
    char *out;
    int rc = ew_test_ewctl(args, NULL, &out, err);
    out[strcspn(out, "\n")] = '\0';
    snprintf(id, EW_UUID_LEN + 1, "%s", out);
    if (rc == 0 && strlen(out) != EW_UUID_LEN) fail_msg("ewctl publish printed '%s'", out);
    free(out);
    return rc;
}

static void test_ewctl_publish_and_tail_over_rediss(void **state)
{
    use_redis_tls(servers_file(0, "redis-tls/ca.pem"));
    char id[EW_UUID_LEN + 1], *err;
    int rc = publish(id, &err);
    if (rc != 0) fail_msg("ewctl publish exited %d: %s", rc, err);
    free(err);
    char *out;
    rc = ew_test_ewctl("tail user.registered --from-beginning --count 1", NULL, &out, &err);
    if (rc != 0) fail_msg("ewctl tail exited %d: %s", rc, err);
    char want[64];
    snprintf(want, sizeof want, "\"id\":\"%s\"", id);
    if (!strstr(out, want)) fail_msg("ewctl tail printed '%s', not event %s", out, id);
    free(out);
    free(err);
}

static void test_ewctl_publish_over_amqps(void **state)
{
    const char *url = ew_test_server_url("rabbitmq-tls");
    if (!url) skip();
    setenv("EVENT_BUS_TYPE", "rabbitmq", 1);
    setenv("RABBITMQ_URL", url, 1);
    setenv("RABBITMQ_TLS_CA_FILE", servers_file(0, "rabbitmq-tls/ca.pem"), 1);
    setenv("RABBITMQ_EXCHANGE", "ewctl-tls", 1);
    char id[EW_UUID_LEN + 1], *err;
    int rc = publish(id, &err); /* returns once the broker confirmed it */
    if (rc != 0) fail_msg("ewctl publish exited %d: %s", rc, err);
    free(err);
}

static void test_ewctl_wrong_ca_names_the_setting(void **state)
{
    use_redis_tls(servers_file(0, "redis-tls/other-ca.pem"));
    const char *url = ew_test_server_url("redis-tls");
    char with_pw[300];
    snprintf(with_pw, sizeof with_pw, "rediss://someone:" SECRET "@%s", url + strlen("rediss://"));
    setenv("REDIS_EVENT_URL", with_pw, 1);
    char id[EW_UUID_LEN + 1], *err;
    int rc = publish(id, &err);
    if (rc == 0) fail_msg("ewctl publish trusted a server its CA file does not vouch for");
    if (!strstr(err, "REDIS_TLS_CA_FILE") || !strstr(err, "does not verify"))
        fail_msg("ewctl's error does not name REDIS_TLS_CA_FILE: %s", err);
    if (strstr(err, SECRET)) fail_msg("ewctl's error shows the password: %s", err);
    free(err);
}

static void test_ewctl_config_hides_passwords(void **state)
{
    setenv("REDIS_EVENT_URL", "rediss://someone:" SECRET "@redis.example:6380/2", 1);
    setenv("RABBITMQ_URL", "amqps://someone:" SECRET "@mq.example/prod", 1);
    setenv("EVENT_STORE_URL",
           "postgresql://someone:" SECRET "@db.example/events?sslmode=verify-full"
           "&sslrootcert=/etc/ssl/db-ca.pem",
           1);
    setenv("REDIS_TLS_CA_FILE", "/etc/ssl/redis-ca.pem", 1);
    setenv("KAFKA_CLIENT_CONFIG",
           "security.protocol=sasl_ssl,sasl.username=events,sasl.password=" SECRET, 1);
    char *out, *err;
    int rc = ew_test_ewctl("config", NULL, &out, &err);
    if (rc != 0) fail_msg("ewctl config exited %d: %s", rc, err);
    if (strstr(out, SECRET) || strstr(err, SECRET))
        fail_msg("ewctl config shows a password:\n%s", out);
    assert_non_null(strstr(out, "rediss://someone:***@redis.example:6380/2"));
    assert_non_null(strstr(out, "amqps://someone:***@mq.example/prod"));
    assert_non_null(strstr(out, "postgresql://someone:***@db.example/events?sslmode=verify-full"));
    assert_non_null(strstr(out, "/etc/ssl/redis-ca.pem"));
    assert_non_null(strstr(out, "sasl.username=events,sasl.password=***"));
    free(out);
    free(err);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_ewctl_publish_and_tail_over_rediss),
    cmocka_unit_test(test_ewctl_publish_over_amqps),
    cmocka_unit_test(test_ewctl_wrong_ca_names_the_setting),
    cmocka_unit_test(test_ewctl_config_hides_passwords),
};

EW_TEST_MAIN(tests)
