/* Tests of `ewctl saga list/show` as a user runs them: the built binary on a store where the saga
 * engine ran two UserRegistration sagas, one completed and one compensated. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/saga.h"
#include "eventwire/sagas.h"
#include "eventwire/store.h"

static void publish(ew_bus *bus, ew_type_id type, const void *data, const char *subject)
{
    ew_error err = {0};
    if (ew_bus_publish_new(bus, type, data, subject, &err)) fail_msg("publish: %s", err.msg);
}

static void wait_status(ew_store *st, const char *user, ew_saga_status want)
{
    int64_t end = ew_mono_ns() + 10 * 1000000000LL;
    for (;;) {
        ew_saga_info in;
        int rc = ew_saga_find(st, EW_SAGA_USER_REGISTRATION, user, &in, NULL);
        ew_saga_status got = rc ? EW_SAGA_RUNNING : in.status;
        if (!rc) ew_saga_info_release(&in);
        if (!rc && got == want) return;
        if (ew_mono_ns() > end)
            fail_msg("saga of %s did not become %s", user, ew_saga_status_name(want));
        usleep(5000);
    }
}

/* Two registrations through the engine: `ok` completes, `bad` fails on its profile. */
static void run_sagas(const char *url, char ok[EW_UUID_LEN + 1], char bad[EW_UUID_LEN + 1])
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err), 0);
    ew_store *st = NULL;
    ew_bus *bus = NULL;
    ew_saga_engine *eng = NULL;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err) ||
        ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err) ||
        ew_saga_engine_open(&eng, &(ew_saga_engine_options){.bus = bus, .store = st}, &err) ||
        ew_saga_add_user_registration(eng, NULL, &err) || ew_saga_engine_start(eng, &err) ||
        ew_bus_start(bus, &err))
        fail_msg("%s", err.msg);
    static const char *roles[] = {"user"};
    ew_uuid7(ok);
    ew_uuid7(bad);
    ew_user_registered r = {
        .user_id = ok, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    publish(bus, EW_T_USER_REGISTERED, &r, ok);
    ew_user_profile_created p = {.user_id = ok};
    publish(bus, EW_T_USER_PROFILE_CREATED, &p, ok);
    ew_user_preferences_updated pr = {.user_id = ok, .preferences = "{}"};
    publish(bus, EW_T_USER_PREFERENCES_UPDATED, &pr, ok);
    ew_notification_welcome_email_sent w = {
        .user_id = ok, .email = "ada@example.com", .message_id = "m-1"};
    publish(bus, EW_T_NOTIFICATION_WELCOME_EMAIL_SENT, &w, ok);
    ew_analytics_user_tracked a = {.user_id = ok, .event = "user.registered"};
    publish(bus, EW_T_ANALYTICS_USER_TRACKED, &a, ok);
    r.user_id = bad;
    publish(bus, EW_T_USER_REGISTERED, &r, bad);
    ew_user_profile_creation_failed f = {.user_id = bad, .reason = "disk full"};
    publish(bus, EW_T_USER_PROFILE_CREATION_FAILED, &f, bad);
    wait_status(st, ok, EW_SAGA_COMPLETED);
    wait_status(st, bad, EW_SAGA_COMPENSATED);
    ew_saga_engine_stop(eng);
    ew_bus_close(bus);
    ew_saga_engine_close(eng);
    ew_store_close(st);
    ew_config_free(cfg);
}

static size_t lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_saga_list_and_show(void **state)
{
    char dir[] = "/tmp/ewctl-saga-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/s.db", dir);
    char ok[EW_UUID_LEN + 1], bad[EW_UUID_LEN + 1];
    run_sagas(url, ok, bad);
    setenv("EVENT_STORE_URL", url, 1);

    char *out, *err, args[256];
    assert_int_equal(ew_test_ewctl("saga list", NULL, &out, NULL), 0);
    assert_int_equal(lines(out), 2);
    assert_non_null(strstr(out, "\"type\":\"UserRegistration\""));
    assert_non_null(strstr(out, "\"status\":\"completed\""));
    assert_non_null(strstr(out, "\"status\":\"compensated\""));
    free(out);

    assert_int_equal(
        ew_test_ewctl("saga list --status completed --type UserRegistration", NULL, &out, NULL), 0);
    assert_int_equal(lines(out), 1);
    char key[80];
    snprintf(key, sizeof key, "\"correlation_key\":\"%s\"", ok);
    assert_non_null(strstr(out, key));
    assert_non_null(strstr(out, "\"steps_done\":[\"registration\",\"profile\",\"preferences\","
                                "\"welcome_email\",\"analytics\"]"));
    assert_non_null(strstr(out, "\"step\":null"));
    /* the id, to show it */
    char id[EW_UUID_LEN + 1];
    const char *p = strstr(out, "{\"id\":\"");
    assert_non_null(p);
    snprintf(id, sizeof id, "%s", p + 7);
    free(out);
    assert_int_equal(ew_test_ewctl("saga list --type PasswordReset", NULL, &out, NULL), 0);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(ew_test_ewctl("saga list --status failed --limit 5", NULL, &out, NULL), 0);
    assert_string_equal(out, "");
    free(out);

    snprintf(args, sizeof args, "saga show %s", id);
    assert_int_equal(ew_test_ewctl(args, NULL, &out, NULL), 0);
    assert_int_equal(lines(out), 1);
    snprintf(key, sizeof key, "\"data\":{\"user_id\":\"%s\"}", ok);
    assert_non_null(strstr(out, key));
    assert_non_null(strstr(out, "\"transitions\":[{\"seq\":1,"));
    assert_non_null(strstr(out, "\"from_status\":null,\"to_status\":\"running\""));
    assert_non_null(strstr(out, "\"event_type\":\"user.registered\""));
    assert_non_null(strstr(out, "\"to_status\":\"completed\""));
    assert_non_null(strstr(out, "Issued saga.completed."));
    free(out);

    snprintf(args, sizeof args, "saga show --type UserRegistration --key %s", bad);
    assert_int_equal(ew_test_ewctl(args, NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"status\":\"compensated\""));
    assert_non_null(strstr(out, "\"reason\":\"Step profile failed (user.profile_creation_failed): "
                                "disk full\""));
    const char *comp = strstr(out, "\"to_status\":\"compensating\"");
    const char *deact = strstr(out, "Compensating step registration. Issued user.deactivated.");
    const char *end = strstr(out, "\"to_status\":\"compensated\"");
    assert_true(comp && deact && end && comp < deact && deact < end);
    free(out);

    /* mistakes */
    assert_int_equal(
        ew_test_ewctl("saga show 0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "no saga with id 0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("saga list --status lost", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "--status takes running"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("saga show", NULL, &out, &err), 2);
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("saga frob", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "unknown saga command 'frob'"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("saga --help", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "usage: ewctl saga list"));
    free(out);
    setenv("EVENT_STORE_URL", "oracle://x", 1);
    assert_int_equal(ew_test_ewctl("saga list", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "cannot open the event store"));
    free(out);
    free(err);
    unsetenv("EVENT_STORE_URL");
    snprintf(args, sizeof args, "rm -rf %s", dir);
    assert_int_equal(system(args), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_saga_list_and_show),
};

EW_TEST_MAIN(tests)
