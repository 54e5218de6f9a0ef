/* The Kafka bus with other clients on the same cluster: a Python service (confluent-kafka,
 * tests/interop/kafka_interop.py, run by Debian's /usr/bin/python3) reads what eventwire
 * publishes and publishes what eventwire handles, in both CloudEvents modes; kcat, the Kafka
 * command-line client, does the same from the shell.
 * ew-fixture: kafka */
#include <sys/wait.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "interop/interop.h"
#include "eventwire/clock.h"

#define WAIT_MS 60000
#define PYTHON "/usr/bin/python3"

static const char *bootstrap(void)
{
    const char *url = ew_test_server_url("kafka");
    if (!url) skip();
    return url;
}

static void need(const char *program)
{
    if (access(program, X_OK) != 0) {
        fprintf(stderr, "%s is not installed (scripts/setup installs it)\n", program);
        skip();
    }
}

static const char *script(void)
{
    static char path[4096];
    const char *src = getenv("EW_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/interop/kafka_interop.py", src ? src : ".");
    return path;
}

/* Runs cmd, keeps its standard output in out; returns its exit status (-1 if it did not exit). */
static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = 0;
    out[0] = '\0';
    while (n + 1 < cap) {
        size_t got = fread(out + n, 1, cap - 1 - n, p);
        if (got == 0) break;
        n += got;
    }
    out[n] = '\0';
    int st = pclose(p);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

typedef struct ns {
    char name[40];
} ns;

static ns new_ns(const char *tag)
{
    ns n;
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(n.name, sizeof n.name, "io%s%.8s", tag, id + 24);
    return n;
}

static ew_bus *open_bus(const ns *n, const char *service, ew_evauth *auth)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    if (ew_config_set(cfg, "EVENT_BUS_TYPE", "kafka", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", service, &err) ||
        ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err) || /* foreign consumers: no keys */
        ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", bootstrap(), &err) ||
        ew_config_set(cfg, "KAFKA_TOPIC_PREFIX", n->name, &err) ||
        ew_config_set(cfg, "KAFKA_CONSUMER_GROUP", n->name, &err))
        fail_msg("%s", err.msg);
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .auth = auth}, &err))
        fail_msg("ew_bus_open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

/* Keeps the events a handler gets. */
typedef struct keep {
    pthread_mutex_t mu;
    ew_event *evs[16];
    atomic_int n;
} keep;

static ew_handler_result keep_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    keep *k = ud;
    pthread_mutex_lock(&k->mu);
    int i = atomic_load(&k->n);
    if (i < 16) k->evs[i] = ew_event_ref(ev);
    atomic_fetch_add(&k->n, 1);
    pthread_mutex_unlock(&k->mu);
    return EW_HANDLER_OK;
}

static void keep_wait(keep *k, int n)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(&k->n) < n) {
        if (ew_mono_ns() > end) fail_msg("%d of %d events handled", atomic_load(&k->n), n);
        usleep(5000);
    }
}

static const ew_event *keep_find(keep *k, const char *id)
{
    for (int i = 0; i < atomic_load(&k->n) && i < 16; i++)
        if (strcmp(ew_event_id(k->evs[i]), id) == 0) return k->evs[i];
    return NULL;
}

static void keep_release(keep *k)
{
    for (int i = 0; i < atomic_load(&k->n) && i < 16; i++)
        ew_event_unref(k->evs[i]);
}

/* ---- Python ------------------------------------------------------------------------------- */

/* Python reads what eventwire published: valid CloudEvents in structured mode, in the topic of
 * their type, keyed by subject, with the attributes and data that were published. */
static void test_python_reads_published_events(void **state)
{
    need(PYTHON);
    ns n = new_ns("pr");
    ew_bus *bus = open_bus(&n, "auth-service", NULL);
    char path[] = "/tmp/ew-kafka-interop-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    enum { N = 6 };
    for (int i = 0; i < N; i++) {
        ew_event *ev =
            i < 4 ? tb_user_registered() : tb_event_full(EW_T_USER_DATA_COLLECTED, NULL, i, NULL);
        char *json;
        ew_error err = {0};
        assert_int_equal(ew_event_encode(ev, &json, NULL, &err), 0);
        fprintf(f, "%s\n", json);
        free(json);
        tb_publish_owned(bus, ev);
    }
    fclose(f);
    tb_close(bus);
    char cmd[8192], out[4096];
    snprintf(cmd, sizeof cmd, "%s '%s' consume '%s' '%s' '%s'", PYTHON, script(), bootstrap(),
             n.name, path);
    int rc = run(cmd, out, sizeof out);
    unlink(path);
    if (rc != 0) fail_msg("kafka_interop.py consume exited %d: %s", rc, out);
    assert_non_null(strstr(out, "checked 6 events"));
}

/* eventwire handles what Python publishes, structured and binary. */
static void test_python_publishes_handled_events(void **state)
{
    need(PYTHON);
    ns n = new_ns("pp");
    interop_auth ia;
    ew_bus *bus = open_bus(&n, "user-service", interop_auth_open(&ia, "user-service"));
    keep k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.registered", keep_fn, &k, NULL);
    tb_start(bus);
    char topic[128], ids[2][EW_UUID_LEN + 1], subject[EW_UUID_LEN + 1];
    snprintf(topic, sizeof topic, "%s.user.registered", n.name);
    ew_uuid7(subject);
    const char *modes[] = {"structured", "binary"};
    for (int i = 0; i < 2; i++) {
        ew_uuid7(ids[i]);
        char cmd[8192], out[1024];
        snprintf(cmd, sizeof cmd, "%s '%s' produce '%s' '%s' %s %s %s", PYTHON, script(),
                 bootstrap(), topic, modes[i], ids[i], subject);
        int rc = run(cmd, out, sizeof out);
        if (rc != 0) fail_msg("kafka_interop.py produce %s exited %d: %s", modes[i], rc, out);
    }
    keep_wait(&k, 2);
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 0);
    tb_close(bus);
    interop_auth_close(&ia);
    for (int i = 0; i < 2; i++) {
        const ew_event *ev = keep_find(&k, ids[i]);
        if (!ev) fail_msg("the %s event %s was not handled", modes[i], ids[i]);
        assert_string_equal(ew_event_source(ev), "python-service");
        assert_string_equal(ew_event_subject(ev), subject);
        assert_int_equal(ew_event_version(ev), 2);
        const ew_user_registered *d = ew_user_registered_data(ev);
        assert_non_null(d);
        assert_string_equal(d->user_id, subject);
        assert_string_equal(d->email, "py@example.com");
        assert_string_equal(d->username, "python");
        assert_int_equal(d->roles.count, 2);
        assert_string_equal(d->roles.items[1], "admin");
    }
    keep_release(&k);
}

/* ---- kcat --------------------------------------------------------------------------------- */

/* kcat reads an event eventwire published: key, header and value as a Kafka user sees them. */
static void test_kcat_reads_published_event(void **state)
{
    need("/usr/bin/kcat");
    ns n = new_ns("kr");
    ew_bus *bus = open_bus(&n, "auth-service", NULL);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    tb_close(bus);
    char cmd[8192], out[8192];
    snprintf(cmd, sizeof cmd,
             "kcat -b '%s' -C -t '%s.user.registered' -c 1 -e -q -f '%%k\\t%%h\\t%%s\\n' 2>&1",
             bootstrap(), n.name);
    int rc = run(cmd, out, sizeof out);
    if (rc != 0) fail_msg("kcat exited %d: %s", rc, out);
    char *key = out, *headers = strchr(out, '\t');
    assert_non_null(headers);
    *headers++ = '\0';
    char *value = strchr(headers, '\t');
    assert_non_null(value);
    *value++ = '\0';
    value[strcspn(value, "\n")] = '\0';
    assert_string_equal(key, ew_event_subject(ev));
    assert_non_null(strstr(headers, "content-type=application/cloudevents+json"));
    ew_event *got;
    if (ew_event_decode(&got, value, strlen(value), NULL, &err)) fail_msg("%s: %s", err.msg, value);
    assert_true(ew_event_equal(ev, got));
    ew_event_unref(got);
    ew_event_unref(ev);
}

/* An event written with kcat -P, as an operator would from a shell, is handled. */
static void test_kcat_publishes_handled_event(void **state)
{
    need("/usr/bin/kcat");
    ns n = new_ns("kp");
    interop_auth ia;
    ew_bus *bus = open_bus(&n, "user-service", interop_auth_open(&ia, "user-service"));
    keep k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.#", keep_fn, &k, NULL);
    tb_start(bus);
    ew_event *ev = tb_event_full(EW_T_USER_PROFILE_UPDATED, NULL, 3, NULL);
    char *json;
    ew_error err = {0};
    assert_int_equal(ew_event_encode(ev, &json, NULL, &err), 0);
    char path[] = "/tmp/ew-kafka-kcat-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_true(write(fd, json, strlen(json)) == (ssize_t)strlen(json));
    close(fd);
    free(json);
    char cmd[8192], out[1024];
    snprintf(cmd, sizeof cmd,
             "kcat -b '%s' -P -t '%s.user.profile_updated' -k '%s' "
             "-H 'content-type=application/cloudevents+json' '%s' 2>&1",
             bootstrap(), n.name, ew_event_subject(ev), path);
    int rc = run(cmd, out, sizeof out);
    unlink(path);
    if (rc != 0) fail_msg("kcat -P exited %d: %s", rc, out);
    keep_wait(&k, 1);
    tb_close(bus);
    interop_auth_close(&ia);
    assert_true(ew_event_equal(ev, k.evs[0]));
    keep_release(&k);
    ew_event_unref(ev);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_python_reads_published_events),
    cmocka_unit_test(test_python_publishes_handled_events),
    cmocka_unit_test(test_kcat_reads_published_event),
    cmocka_unit_test(test_kcat_publishes_handled_event),
};

EW_TEST_MAIN(tests)
