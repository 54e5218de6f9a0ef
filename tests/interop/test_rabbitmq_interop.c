/* Interop of the RabbitMQ bus with another client: Python's pika reads the CloudEvents an
 * eventwire bus publishes, an eventwire subscriber handles the one a Python service publishes,
 * and rabbitmqctl shows the group's queue as the backend declared it
 * (tests/interop/rabbitmq_interop.py does the Python side).
 * ew-fixture: rabbitmq */
#ifdef EW_HAVE_RABBITMQ
#include <sys/wait.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "interop/interop.h"
#include "eventwire/clock.h"

#define WAIT_MS 60000

static const char *server_url(void)
{
    return ew_test_server_url("rabbitmq");
}

static ew_bus *open_bus(const char *url, const char *exchange, ew_evauth *auth)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "rabbitmq", &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err), 0);
    /* foreign consumers here have no keys: personal fields in clear (docs/encryption.md) */
    assert_int_equal(ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err), 0);
    assert_int_equal(ew_config_set(cfg, "RABBITMQ_URL", url, &err), 0);
    assert_int_equal(ew_config_set(cfg, "RABBITMQ_EXCHANGE", exchange, &err), 0);
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .auth = auth}, &err))
        fail_msg("open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

static void new_exchange(char *out, size_t n, const char *what)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(out, n, "interop%s%.8s", what, id + 24);
}

/* Pika consumes what eventwire published: valid CloudEvents of the right type, subject and
 * data, with the AMQP properties a RabbitMQ user expects. */
static void python_consumes_eventwire_events(void **state)
{
    const char *url = server_url();
    if (!url) skip();
    char ex[48], args[512], cmd[1024];
    new_exchange(ex, sizeof ex, "c");
    ew_bus *bus = open_bus(url, ex, NULL); /* declares the exchange */
    enum { N = 5 };
    snprintf(args, sizeof args, "consume '%s' '%s' %d", url, ex, N);
    interop_script_cmd(cmd, sizeof cmd, "rabbitmq_interop.py", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096];
    assert_non_null(fgets(line, sizeof line, p));
    assert_string_equal(line, "ready\n");

    ew_event *evs[N];
    ew_error err = {0};
    for (int i = 0; i < N; i++) {
        evs[i] = i % 2 ? tb_event(EW_T_USER_LOGGED_IN, NULL) : tb_user_registered();
        assert_int_equal(ew_bus_publish(bus, evs[i], &err), 0);
    }
    int seen = 0;
    bool ok_line = false;
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "ok ", 3) == 0) {
            ok_line = atoi(line + 3) == N;
            continue;
        }
        bool matched = false;
        for (int i = 0; i < N; i++) {
            char want[512];
            snprintf(want, sizeof want, "{\"id\": \"%s\", \"type\": \"%s\", \"subject\": \"%s\"",
                     ew_event_id(evs[i]), ew_event_type(evs[i]), ew_event_subject(evs[i]));
            if (strncmp(line, want, strlen(want)) == 0) {
                matched = true;
                if (ew_event_type_id(evs[i]) == EW_T_USER_REGISTERED) {
                    char data[256];
                    snprintf(data, sizeof data,
                             "\"data\": {\"user_id\": \"%s\", \"email\": \"a@example.com\", "
                             "\"username\": \"ann\", \"roles\": [\"user\"]}",
                             ew_user_registered_data(evs[i])->user_id);
                    if (!strstr(line, data)) fail_msg("data differs: %s", line);
                }
            }
        }
        if (!matched) fail_msg("python saw an event we did not publish: %s", line);
        seen++;
    }
    int rc = interop_status(pclose(p));
    assert_int_equal(rc, 0);
    assert_int_equal(seen, N);
    assert_true(ok_line);
    for (int i = 0; i < N; i++)
        ew_event_unref(evs[i]);
    tb_close(bus);
}

/* An eventwire subscriber handles the CloudEvent a Python service published with pika. */
typedef struct got_one {
    pthread_mutex_t mu;
    ew_event *ev;
} got_one;

static ew_handler_result keep(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    got_one *g = ud;
    pthread_mutex_lock(&g->mu);
    if (!g->ev) g->ev = ew_event_ref(ev);
    pthread_mutex_unlock(&g->mu);
    return EW_HANDLER_OK;
}

static void eventwire_handles_python_event(void **state)
{
    const char *url = server_url();
    if (!url) skip();
    char ex[48], args[512], cmd[1024];
    new_exchange(ex, sizeof ex, "p");
    interop_auth ia;
    ew_bus *bus = open_bus(url, ex, interop_auth_open(&ia, "user-service"));
    got_one g = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.registered", keep, &g, &(ew_subscribe_opts){.group = "user-service"});
    tb_start(bus);
    snprintf(args, sizeof args, "publish '%s' '%s'", url, ex);
    interop_script_cmd(cmd, sizeof cmd, "rabbitmq_interop.py", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096] = "";
    char *got = fgets(line, sizeof line, p);
    int rc = interop_status(pclose(p));
    assert_int_equal(rc, 0);
    assert_non_null(got);
    /* the id the script printed: {"specversion": "1.0", "id": "...", ... */
    const char *idp = strstr(line, "\"id\": \"");
    assert_non_null(idp);
    char id[EW_UUID_LEN + 1];
    snprintf(id, sizeof id, "%s", idp + 7);

    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        bool have = g.ev != NULL;
        pthread_mutex_unlock(&g.mu);
        if (have) break;
        if (ew_mono_ns() > end) fail_msg("the python event was not handled");
        usleep(2000);
    }
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 0); /* it decoded */
    tb_close(bus);
    interop_auth_close(&ia);
    assert_string_equal(ew_event_id(g.ev), id);
    assert_string_equal(ew_event_type(g.ev), "user.registered");
    assert_string_equal(ew_event_source(g.ev), "python-service");
    const ew_user_registered *d = ew_user_registered_data(g.ev);
    assert_non_null(d);
    assert_string_equal(ew_event_subject(g.ev), d->user_id);
    assert_string_equal(d->email, "grace@example.com");
    assert_string_equal(d->username, "grace");
    assert_int_equal(d->roles.count, 2);
    assert_string_equal(d->roles.items[1], "admin");
    ew_event_unref(g.ev);
}

/* rabbitmqctl, the broker's own tool, lists the group's queue as durable and wired to the
 * dead-letter exchange. */
static void rabbitmqctl_lists_the_group_queue(void **state)
{
    const char *url = server_url();
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!url || !dir) skip();
    char ex[48], args[512], cmd[1024], want[256];
    new_exchange(ex, sizeof ex, "q");
    ew_bus *bus = open_bus(url, ex, NULL);
    atomic_int n = 0;
    tb_subscribe(bus, "user.*", tb_count, &n, &(ew_subscribe_opts){.group = "analytics-service"});
    snprintf(args, sizeof args, "queues '%s' '%s'", dir, ex);
    interop_script_cmd(cmd, sizeof cmd, "rabbitmq_interop.py", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[4096];
    bool group_q = false, dlx_q = false;
    while (fgets(line, sizeof line, p)) {
        snprintf(want, sizeof want,
                 "{\"name\": \"%s.analytics-service\", \"durable\": true, \"arguments\": "
                 "[[\"x-dead-letter-exchange\", \"longstr\", \"%s.dlx\"]]}",
                 ex, ex);
        group_q = group_q || strncmp(line, want, strlen(want)) == 0;
        snprintf(want, sizeof want, "{\"name\": \"%s.dlx\", \"durable\": true", ex);
        dlx_q = dlx_q || strncmp(line, want, strlen(want)) == 0;
    }
    int rc = interop_status(pclose(p));
    tb_close(bus);
    assert_int_equal(rc, 0);
    assert_true(group_q);
    assert_true(dlx_q);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(python_consumes_eventwire_events),
    cmocka_unit_test(eventwire_handles_python_event),
    cmocka_unit_test(rabbitmqctl_lists_the_group_queue),
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
