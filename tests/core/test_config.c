/* Tests of the configuration object: defaults, validation of every kind, the environment. */
#include <stdlib.h>
#include "support/ew_test.h"
#include "eventwire/config.h"

static void test_defaults_are_the_documented_ones(void **state)
{
    ew_config *c;
    assert_int_equal(ew_config_new(&c, NULL), 0);
    assert_string_equal(ew_config_get(c, "EVENT_BUS_TYPE"), "sqlite");
    assert_string_equal(ew_config_get(c, "REDIS_CHANNEL_PREFIX"), "events");
    assert_string_equal(ew_config_get(c, "KAFKA_CONSUMER_GROUP"), "event-handlers");
    assert_string_equal(ew_config_get(c, "EVENT_STORE_URL"), "sqlite:var/eventwire.db");
    assert_int_equal(ew_config_get_int(c, "EVENT_STORE_TTL_DAYS"), 90);
    assert_int_equal(ew_config_get_int(c, "SAGA_TIMEOUT_SECONDS"), 3600);
    assert_int_equal(ew_config_get_int(c, "ENABLE_SAGAS"), 1);
    assert_int_equal(ew_config_get_int(c, "ENABLE_EVENT_STORE"), 0);
    assert_int_equal(ew_config_get_int(c, "EVENT_MAX_BYTES"), 1048576);
    assert_null(ew_config_get(c, "NO_SUCH_THING"));
    /* an optional URL may be empty (unset); a required one may not */
    assert_int_equal(ew_config_set(c, "OTEL_EXPORTER_OTLP_ENDPOINT", "", NULL), 0);
    assert_int_equal(ew_config_set(c, "REDIS_EVENT_URL", "", NULL), EW_ECONFIG);
    /* every described entry has a default that passes its own check */
    for (int i = 0; ew_config_describe(i); i++) {
        const ew_setting *e = ew_config_describe(i);
        assert_int_equal(ew_config_set(c, e->name, e->def, NULL), 0);
        assert_true(strlen(e->doc) > 0);
    }
    ew_config_free(c);
}

static void test_bad_values_are_refused_with_name_and_reason(void **state)
{
    ew_config *c;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&c, NULL), 0);
    struct {
        const char *name, *value, *needle;
    } bad[] = {
        {"EVENT_BUS_TYPE", "zeromq", "EVENT_BUS_TYPE: 'zeromq' is not one of memory|sqlite"},
        {"EVENT_STORE_TTL_DAYS", "ninety", "EVENT_STORE_TTL_DAYS: 'ninety' is not a whole number"},
        {"EVENT_STORE_TTL_DAYS", "-1", "outside 0..36500"},
        {"EVENT_STORE_TTL_DAYS", "12abc", "not a whole number"},
        {"SAGA_TIMEOUT_SECONDS", "99999999999999999999", "not a whole number"},
        {"ENABLE_SAGAS", "maybe", "ENABLE_SAGAS: 'maybe' is not true or false"},
        {"REDIS_CHANNEL_PREFIX", "My Events", "may hold only"},
        {"REDIS_EVENT_URL", "localhost", "not a URL"},
        {"KAFKA_BOOTSTRAP_SERVERS", "", "must not be empty"},
        {"EVENT_BUS_TYPO", "memory", "EVENT_BUS_TYPO: unknown setting"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ew_config_set(c, bad[i].name, bad[i].value, &err), EW_ECONFIG);
        if (!strstr(err.msg, bad[i].needle))
            fail_msg("%s=%s: '%s' lacks '%s'", bad[i].name, bad[i].value, err.msg, bad[i].needle);
    }
    /* a refused value leaves the old one */
    assert_string_equal(ew_config_get(c, "EVENT_BUS_TYPE"), "sqlite");
    assert_int_equal(ew_config_set(c, "ENABLE_SAGAS", "FALSE", NULL), 0);
    assert_int_equal(ew_config_get_int(c, "ENABLE_SAGAS"), 0);
    ew_config_free(c);
}

static void test_environment_is_read(void **state)
{
    ew_config *c, *d;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&c, NULL), 0);
    setenv("EVENT_BUS_TYPE", "memory", 1);
    setenv("SAGA_TIMEOUT_SECONDS", "60", 1);
    assert_int_equal(ew_config_from_env(c, &err), 0);
    assert_string_equal(ew_config_get(c, "EVENT_BUS_TYPE"), "memory");
    assert_int_equal(ew_config_get_int(c, "SAGA_TIMEOUT_SECONDS"), 60);
    assert_int_equal(ew_config_dup(&d, c, NULL), 0);
    assert_string_equal(ew_config_get(d, "EVENT_BUS_TYPE"), "memory");
    setenv("EVENT_BUS_TYPE", "carrier-pigeon", 1);
    assert_int_equal(ew_config_from_env(c, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "EVENT_BUS_TYPE"));
    unsetenv("EVENT_BUS_TYPE");
    unsetenv("SAGA_TIMEOUT_SECONDS");
    ew_config_free(c);
    ew_config_free(d);
}

static void test_error_names_and_messages(void **state)
{
    assert_string_equal(ew_err_name(EW_EINVAL), "EW_EINVAL");
    assert_string_equal(ew_strerror(EW_ETOOBIG), "input larger than the configured limit");
    assert_string_equal(ew_err_name(12345), "EW_UNKNOWN");
    assert_true(ew_err_retriable(EW_ETIMEDOUT));
    assert_false(ew_err_retriable(EW_EJSON));
    ew_error err;
    assert_int_equal(ew_error_set(&err, EW_ECONFIG, "x=%d", 5), EW_ECONFIG);
    assert_string_equal(err.msg, "x=5");
    assert_int_equal(ew_error_set(NULL, EW_ECONFIG, "ignored"), EW_ECONFIG);
}

/* What ewctl config prints: passwords and secrets as ***, the rest as it is. */
static void test_shown_values_hide_secrets(void **state)
{
    (void)state;
    ew_config *c;
    ew_error err = {0};
    char buf[512];
    assert_int_equal(ew_config_new(&c, &err), 0);
    static const struct {
        const char *name, *value, *shown;
    } cases[] = {
        {"RABBITMQ_URL", "amqp://app:s3cret@mq:5672/prod", "amqp://app:***@mq:5672/prod"},
        {"RABBITMQ_URL", "amqp://app@mq:5672/", "amqp://app@mq:5672/"},
        {"REDIS_EVENT_URL", "redis://:pa@ss@cache:6379/0", "redis://:***@cache:6379/0"},
        {"EVENT_STORE_URL", "postgresql://u:p@db/x?sslmode=require&password=zz&a=b",
         "postgresql://u:***@db/x?sslmode=require&password=***&a=b"},
        {"EVENT_STORE_URL", "sqlite:var/eventwire.db", "sqlite:var/eventwire.db"},
        {"KAFKA_CLIENT_CONFIG",
         "security.protocol=SASL_SSL,sasl.username=bob,sasl.password=a\\,b,ssl.key.pem=PEM",
         "security.protocol=SASL_SSL,sasl.username=bob,sasl.password=***,ssl.key.pem=***"},
        {"SERVICE_NAME", "auth-service", "auth-service"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (ew_config_set(c, cases[i].name, cases[i].value, &err))
            fail_msg("%s=%s: %s", cases[i].name, cases[i].value, err.msg);
        assert_string_equal(ew_config_shown(c, cases[i].name, buf, sizeof buf), cases[i].shown);
        assert_string_equal(ew_config_get(c, cases[i].name), cases[i].value); /* kept as it is */
    }
    assert_null(ew_config_shown(c, "NO_SUCH_SETTING", buf, sizeof buf));
    assert_string_equal(ew_url_redact("postgresql://svc:pw@db:5432/auth", buf, sizeof buf),
                        "postgresql://svc:***@db:5432/auth");
    /* a short buffer cuts, never overflows */
    char small[8];
    assert_string_equal(ew_config_shown(c, "SERVICE_NAME", small, sizeof small), "auth-se");
    ew_config_free(c);
}

/* Found by fuzzing (tests/fuzz/corpus/url/pg-password-with-hash): libpq and librabbitmq end
 * the user info at the first '/', not at '?' or '#', so "u:#pw99@host" carries the password
 * "#pw99". The redacted form showed it whole. */
static void test_redact_hides_a_password_holding_hash_or_question_mark(void **state)
{
    (void)state;
    char buf[256];
    static const struct {
        const char *url, *shown;
    } cases[] = {
        {"postgresql://u:#pw99@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"},
        {"postgresql://u:pa?ss@db/x", "postgresql://u:***@db/x"},
        {"amqp://app:s#cret@mq:5672/", "amqp://app:***@mq:5672/"},
        {"redis://:x?y#z@cache:6379/0", "redis://:***@cache:6379/0"},
        {"postgresql://db/x?user=u&password=p#q", "postgresql://db/x?user=u&password=***"},
        /* found by fuzzing (tests/fuzz/corpus/url/pg-query-password-after-user-info): libpq's
         * password is the query's "@[::1]:5433/db", which the user info rule's last '@' before
         * the first '/' left outside the part it hid */
        {"postgresql://u:a@b?password=@[::1]:5433/db", "postgresql://u:***"},
        {"postgresql://u:a@h/db?password=b&x=1", "postgresql://u:***@h/db?password=***&x=1"},
        {"postgresql://u:a&password=b@h/db", "postgresql://u:***@h/db"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_string_equal(ew_url_redact(cases[i].url, buf, sizeof buf), cases[i].shown);
}

/* A program's own settings (ew_config_define) are set, checked, read from the environment,
 * shown and copied exactly as the library's are, and never clash with them. */
static const ew_setting program[] = {
    {"TEST_APP_URL", "", "smtp://...", "Where the program sends mail.", EW_SETTING_URL, 0, 0},
    {"TEST_APP_WORKERS", "4", "1..64", "Worker threads.", EW_SETTING_INT, 1, 64},
    {"TEST_APP_MODE", "fast", "fast|safe", "How it runs.", EW_SETTING_ENUM, 0, 0},
    {"TEST_APP_VERBOSE", "false", "true|false", "Say more.", EW_SETTING_BOOL, 0, 0},
};

static void test_a_program_defines_its_own_settings(void **state)
{
    (void)state;
    ew_config *c, *d;
    ew_error err = {0};
    char buf[256];
    assert_int_equal(ew_config_new(&c, &err), 0);
    assert_null(ew_config_get(c, "TEST_APP_WORKERS"));
    assert_int_equal(ew_config_set(c, "TEST_APP_WORKERS", "8", &err), EW_ECONFIG);
    assert_int_equal(ew_config_define(c, program, 4, &err), 0);
    /* defaults, typed reads */
    assert_string_equal(ew_config_get(c, "TEST_APP_MODE"), "fast");
    assert_int_equal(ew_config_get_int(c, "TEST_APP_WORKERS"), 4);
    assert_int_equal(ew_config_get_int(c, "TEST_APP_VERBOSE"), 0);
    /* the same checks as the library's, naming the setting */
    assert_int_equal(ew_config_set(c, "TEST_APP_WORKERS", "65", &err), EW_ECONFIG);
    assert_string_equal(err.msg, "TEST_APP_WORKERS: 65 is outside 1..64");
    assert_int_equal(ew_config_set(c, "TEST_APP_MODE", "slow", &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "TEST_APP_MODE: 'slow' is not one of fast|safe"));
    /* the environment, and a URL's password hidden when shown */
    setenv("TEST_APP_URL", "smtps://mailer:hunter2@smtp.example.com:465", 1);
    setenv("TEST_APP_VERBOSE", "yes", 1);
    assert_int_equal(ew_config_from_env(c, &err), 0);
    unsetenv("TEST_APP_URL");
    unsetenv("TEST_APP_VERBOSE");
    assert_int_equal(ew_config_get_int(c, "TEST_APP_VERBOSE"), 1);
    assert_string_equal(ew_config_shown(c, "TEST_APP_URL", buf, sizeof buf),
                        "smtps://mailer:***@smtp.example.com:465");
    /* listed after the library's, in order */
    int n = 0;
    while (ew_config_describe(n))
        n++;
    assert_ptr_equal(ew_config_setting(c, 0), ew_config_describe(0));
    assert_string_equal(ew_config_setting(c, n)->name, "TEST_APP_URL");
    assert_string_equal(ew_config_setting(c, n + 3)->name, "TEST_APP_VERBOSE");
    assert_null(ew_config_setting(c, n + 4));
    /* a copy keeps the definitions and the values */
    assert_int_equal(ew_config_dup(&d, c, &err), 0);
    assert_int_equal(ew_config_set(c, "TEST_APP_WORKERS", "2", &err), 0);
    assert_int_equal(ew_config_get_int(d, "TEST_APP_WORKERS"), 4);
    assert_int_equal(ew_config_get_int(d, "TEST_APP_VERBOSE"), 1);
    assert_int_equal(ew_config_set(d, "TEST_APP_WORKERS", "0", &err), EW_ECONFIG);
    ew_config_free(d);
    /* no name twice, no clash with the library, no default that fails its own check */
    assert_int_equal(ew_config_define(c, program, 1, &err), EW_ECONFIG);
    assert_string_equal(err.msg, "TEST_APP_URL: already defined");
    static const ew_setting clash[] = {
        {"EVENT_BUS_TYPE", "x", "x", "Mine.", EW_SETTING_STRING, 0, 0}};
    assert_int_equal(ew_config_define(c, clash, 1, &err), EW_ECONFIG);
    assert_string_equal(err.msg, "EVENT_BUS_TYPE: already defined");
    static const ew_setting bad_default[] = {
        {"TEST_APP_OK", "1", "1..2", "Fine.", EW_SETTING_INT, 1, 2},
        {"TEST_APP_LIMIT", "100", "1..10", "Too big a default.", EW_SETTING_INT, 1, 10}};
    assert_int_equal(ew_config_define(c, bad_default, 2, &err), EW_ECONFIG);
    assert_string_equal(err.msg, "the default of TEST_APP_LIMIT: 100 is outside 1..10");
    assert_null(ew_config_get(c, "TEST_APP_OK")); /* nothing of a refused table is kept */
    ew_config_free(c);
}

/* A program with no setting of its own defines an empty table, before or after others (as
 * analytics-service does): nothing changes and nothing dangles (ASan saw a use after free). */
static void test_defining_no_setting_changes_nothing(void **state)
{
    (void)state;
    ew_config *c;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&c, &err), 0);
    assert_int_equal(ew_config_define(c, program, 0, &err), 0);
    assert_int_equal(ew_config_define(c, NULL, 0, &err), 0);
    assert_int_equal(ew_config_set(c, "SERVICE_NAME", "quiet", &err), 0);
    assert_int_equal(ew_config_define(c, program, 2, &err), 0);
    assert_int_equal(ew_config_define(c, program + 2, 0, &err), 0);
    assert_int_equal(ew_config_set(c, "TEST_APP_WORKERS", "8", &err), 0);
    assert_string_equal(ew_config_get(c, "SERVICE_NAME"), "quiet");
    assert_int_equal(ew_config_get_int(c, "TEST_APP_WORKERS"), 8);
    int n = 0;
    while (ew_config_describe(n))
        n++;
    assert_string_equal(ew_config_setting(c, n + 1)->name, "TEST_APP_WORKERS");
    assert_null(ew_config_setting(c, n + 2));
    ew_config_free(c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_defaults_are_the_documented_ones),
    cmocka_unit_test(test_defining_no_setting_changes_nothing),
    cmocka_unit_test(test_bad_values_are_refused_with_name_and_reason),
    cmocka_unit_test(test_environment_is_read),
    cmocka_unit_test(test_error_names_and_messages),
    cmocka_unit_test(test_shown_values_hide_secrets),
    cmocka_unit_test(test_redact_hides_a_password_holding_hash_or_question_mark),
    cmocka_unit_test(test_a_program_defines_its_own_settings),
};

EW_TEST_MAIN(tests)
