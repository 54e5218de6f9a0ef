/* Interop of the Redis bus with other clients: Python's redis-py reads with XREADGROUP the
 * CloudEvents an eventwire bus published and an eventwire subscriber handles the one a Python
 * service appended with XADD (tests/interop/redis_interop.py does the Python side); redis-cli
 * reads a stream with XRANGE and appends an event with XADD that the bus handles.
 * ew-fixture: redis */
#ifdef EW_HAVE_REDIS
#include <sys/wait.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "interop/interop.h"
#include "eventwire/clock.h"

#define WAIT_MS 60000

static const char *server_url(void)
{
    return ew_test_server_url("redis");
}

static ew_bus *open_bus(const char *url, const char *prefix, ew_evauth *auth)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "redis", &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err), 0);
    /* foreign consumers here have no keys: personal fields in clear (docs/encryption.md) */
    assert_int_equal(ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err), 0);
    assert_int_equal(ew_config_set(cfg, "REDIS_EVENT_URL", url, &err), 0);
    assert_int_equal(ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", prefix, &err), 0);
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .auth = auth}, &err))
        fail_msg("open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

static void new_prefix(char *out, size_t n, const char *what)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(out, n, "interop-%s-%.8s", what, id + 28);
}

/* Removes the test's streams (best effort). */
static void drop_prefix(const char *url, const char *prefix)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "redis-cli -u '%s' --scan --pattern '%s:*' | xargs -r redis-cli -u '%s' DEL "
             ">/dev/null 2>&1",
             url, prefix, url);
    if (system(cmd) != 0) { /* left for the server's stop */
    }
}

/* redis-py consumes what eventwire published: valid CloudEvents of the stream's type, with the
 * subject and data published. */
static void python_consumes_eventwire_events(void **state)
{
    const char *url = server_url();
    if (!url) skip();
    char prefix[64], args[512], cmd[1024];
    new_prefix(prefix, sizeof prefix, "py");
    ew_bus *bus = open_bus(url, prefix, NULL);
    enum { N = 5 };
    ew_event *evs[N];
    ew_error err = {0};
    for (int i = 0; i < N; i++) {
        evs[i] = tb_user_registered();
        assert_int_equal(ew_bus_publish(bus, evs[i], &err), 0);
    }
    snprintf(args, sizeof args, "consume '%s' '%s:user.registered' python-service %d", url, prefix,
             N);
    interop_script_cmd(cmd, sizeof cmd, "redis_interop.py", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096];
    int seen = 0;
    bool ok_line = false;
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "ok ", 3) == 0) {
            ok_line = atoi(line + 3) == N;
            continue;
        }
        bool matched = false;
        for (int i = 0; i < N && !matched; i++) {
            char want[512];
            snprintf(want, sizeof want,
                     "{\"id\": \"%s\", \"type\": \"user.registered\", \"subject\": \"%s\", "
                     "\"source\": \"test\", \"data\": {\"user_id\": \"%s\", \"email\": "
                     "\"a@example.com\", \"username\": \"ann\", \"roles\": [\"user\"]}}",
                     ew_event_id(evs[i]), ew_event_subject(evs[i]),
                     ew_user_registered_data(evs[i])->user_id);
            matched = strncmp(line, want, strlen(want)) == 0;
        }
        if (!matched) fail_msg("python saw an event we did not publish, or altered: %s", line);
        seen++;
    }
    int rc = interop_status(pclose(p));
    assert_int_equal(rc, 0);
    assert_int_equal(seen, N);
    assert_true(ok_line);
    for (int i = 0; i < N; i++)
        ew_event_unref(evs[i]);
    tb_close(bus);
    drop_prefix(url, prefix);
}

/* An eventwire subscriber handles the CloudEvent a Python service appended with XADD. */
typedef struct got_one {
    pthread_mutex_t mu;
    char want[EW_UUID_LEN + 1];
    ew_event *ev;
} got_one;

static ew_handler_result keep(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    got_one *g = ud;
    pthread_mutex_lock(&g->mu);
    if (!g->ev && (!g->want[0] || strcmp(g->want, ew_event_id(ev)) == 0)) g->ev = ew_event_ref(ev);
    pthread_mutex_unlock(&g->mu);
    return EW_HANDLER_OK;
}

static void want_id(got_one *g, const char *id)
{
    pthread_mutex_lock(&g->mu);
    snprintf(g->want, sizeof g->want, "%.36s", id);
    pthread_mutex_unlock(&g->mu);
}

static ew_event *wait_got(got_one *g)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        ew_event *ev = g->ev;
        pthread_mutex_unlock(&g->mu);
        if (ev) return ev;
        if (ew_mono_ns() > end) fail_msg("the event from outside never reached the handler");
        usleep(5000);
    }
}

static void eventwire_handles_python_event(void **state)
{
    const char *url = server_url();
    if (!url) skip();
    char prefix[64], args[512], cmd[1024];
    new_prefix(prefix, sizeof prefix, "pyw");
    interop_auth ia;
    ew_bus *bus = open_bus(url, prefix, interop_auth_open(&ia, "user-service"));
    got_one g = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.*", keep, &g, &(ew_subscribe_opts){.group = "user-service"});
    tb_start(bus);
    snprintf(args, sizeof args, "publish '%s' '%s:user.registered'", url, prefix);
    interop_script_cmd(cmd, sizeof cmd, "redis_interop.py", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096] = "";
    char *got = fgets(line, sizeof line, p);
    assert_int_equal(interop_status(pclose(p)), 0);
    assert_non_null(got);
    const char *id = strstr(line, "\"id\": \"");
    assert_non_null(id);
    want_id(&g, id + 7);
    ew_event *ev = wait_got(&g);
    assert_int_equal(strncmp(ew_event_id(ev), id + 7, EW_UUID_LEN), 0);
    assert_string_equal(ew_event_type(ev), "user.registered");
    assert_string_equal(ew_event_source(ev), "python-service");
    const ew_user_registered *d = ew_user_registered_data(ev);
    assert_non_null(d);
    assert_string_equal(d->username, "grace");
    assert_string_equal(d->email, "grace@example.com");
    assert_int_equal(d->roles.count, 2);
    assert_string_equal(d->roles.items[1], "admin");
    assert_string_equal(ew_event_subject(ev), d->user_id);
    ew_event_unref(ev);
    tb_close(bus);
    interop_auth_close(&ia);
    drop_prefix(url, prefix);
}

/* redis-cli, as an operator would use it: XRANGE shows the event under the field `event`, and an
 * event appended with XADD is handled by the bus. */
static void redis_cli_reads_and_writes(void **state)
{
    const char *url = server_url();
    if (!url || access("/usr/bin/redis-cli", X_OK) != 0) skip();
    char prefix[64], cmd[1024];
    new_prefix(prefix, sizeof prefix, "cli");
    interop_auth ia;
    ew_bus *bus = open_bus(url, prefix, interop_auth_open(&ia, "user-service"));
    got_one g = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.logged_in", keep, &g, &(ew_subscribe_opts){.group = "audit"});
    tb_start(bus);

    /* what the bus writes, published by a bus of its own (not authenticated: the JSON as is) */
    ew_bus *pub = open_bus(url, prefix, NULL);
    ew_event *mine = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(pub, mine, &err), 0);
    tb_close(pub);
    snprintf(cmd, sizeof cmd, "redis-cli -u '%s' XRANGE '%s:user.registered' - +", url, prefix);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096];
    int lines = 0;
    bool field = false, json = false;
    char *encoded;
    assert_int_equal(ew_event_encode(mine, &encoded, NULL, &err), 0);
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = '\0';
        lines++;
        field = field || strcmp(line, "event") == 0;
        json = json || strcmp(line, encoded) == 0;
    }
    assert_int_equal(interop_status(pclose(p)), 0);
    free(encoded);
    assert_int_equal(lines, 3); /* entry id, field, value */
    assert_true(field);
    assert_true(json);

    /* an event written by hand, as a shell script would */
    char id[EW_UUID_LEN + 1], user[EW_UUID_LEN + 1], path[] = "/tmp/ew-redis-cli-XXXXXX";
    ew_uuid7(id);
    ew_uuid7(user);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f,
            "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"ops-script\","
            "\"type\":\"user.logged_in\",\"subject\":\"%s\",\"time\":\"2026-11-27T10:00:00Z\","
            "\"datacontenttype\":\"application/json\",\"eventversion\":1,"
            "\"data\":{\"user_id\":\"%s\",\"session_id\":\"s-1\"}}",
            id, user, user);
    fclose(f);
    want_id(&g, id);
    snprintf(cmd, sizeof cmd, "redis-cli -u '%s' -x XADD '%s:user.logged_in' '*' event < '%s'", url,
             prefix, path);
    p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof line, p)) {
    }
    assert_int_equal(interop_status(pclose(p)), 0);
    unlink(path);
    ew_event *ev = wait_got(&g);
    assert_string_equal(ew_event_source(ev), "ops-script");
    assert_string_equal(ew_user_logged_in_data(ev)->session_id, "s-1");
    ew_event_unref(ev);
    ew_event_unref(mine);
    tb_close(bus);
    interop_auth_close(&ia);
    drop_prefix(url, prefix);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(python_consumes_eventwire_events),
    cmocka_unit_test(eventwire_handles_python_event),
    cmocka_unit_test(redis_cli_reads_and_writes),
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
