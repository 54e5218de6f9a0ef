/* ewctl publish and ewctl tail on every durable backend, as a user runs them: the built binary,
 * configured through the environment (EVENT_BUS_TYPE and the backend's settings, a namespace of
 * the test's own: a database file, a stream prefix, a topic prefix, an exchange).
 *
 * For each backend: `publish` prints the new event's id; `tail --from-beginning --count 1`
 * prints that event as one CloudEvents JSON line; a `tail` without --from-beginning, running in
 * the background, never prints the event published before it started, and prints one published
 * after. On RabbitMQ an event published while no queue is bound is dropped by the broker, so
 * there the history is a group's queue made beforehand (`tail --group G`).
 *
 * ew-fixture: redis
 * ew-fixture: kafka
 * ew-fixture: rabbitmq */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include <stdatomic.h>
#include "eventwire/bus.h"
#include "eventwire/catalog.h"
#include "eventwire/store.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define CMD_TIMEOUT_S 15 /* the longest one ewctl command may take */

/* ---- running ewctl ------------------------------------------------------------------------- */

static const char *ewctl_path(void)
{
    static char path[4200];
    if (path[0]) return path;
    const char *dir = getenv("EW_BUILD_DIR");
    char self[4096];
    if (!dir) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        assert_true(n > 0);
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        dir = self;
    }
    snprintf(path, sizeof path, "%s/ewctl", dir);
    return path;
}

/* Runs `ewctl ARGS` through the shell (under timeout(1)); standard output into out (cap bytes,
 * NUL-terminated), standard error into err_out when given. Returns the exit status. */
static int ewctl(const char *args, char *out, size_t cap, char *err_out, size_t err_cap)
{
    char err_path[] = "/tmp/ewctl-be-err-XXXXXX";
    int efd = mkstemp(err_path);
    assert_true(efd >= 0);
    close(efd);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "timeout -k 2 %d '%s' %s 2>'%s' </dev/null", CMD_TIMEOUT_S,
             ewctl_path(), args, err_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t len = 0, n;
    while (len + 1 < cap && (n = fread(out + len, 1, cap - len - 1, p)) > 0)
        len += n;
    out[len] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {
    }
    int st = pclose(p);
    if (err_out) {
        FILE *e = fopen(err_path, "r");
        size_t el = e ? fread(err_out, 1, err_cap - 1, e) : 0;
        err_out[el] = '\0';
        if (e) fclose(e);
    }
    unlink(err_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ewctl publish user.registered with a new subject; the printed id goes to id. */
static void publish(char id[EW_UUID_LEN + 1])
{
    char subject[EW_UUID_LEN + 1], args[1024], out[256], err[2048];
    ew_uuid7(subject);
    snprintf(args, sizeof args,
             "publish user.registered --subject %s --data '{\"user_id\":\"%s\",\"email\":"
             "\"ada@example.com\",\"username\":\"ada\",\"roles\":[\"user\"]}'",
             subject, subject);
    int rc = ewctl(args, out, sizeof out, err, sizeof err);
    if (rc != 0) fail_msg("ewctl publish exited %d: %s", rc, err);
    out[strcspn(out, "\n")] = '\0';
    if (strlen(out) != EW_UUID_LEN) fail_msg("ewctl publish printed '%s', not an id", out);
    memcpy(id, out, EW_UUID_LEN + 1);
}

/* A line of tail's output is the CloudEvent of user.registered with that id. */
static bool line_is_event(const char *line, const char *id)
{
    char want[64];
    snprintf(want, sizeof want, "\"id\":\"%s\"", id);
    return line[0] == '{' && strstr(line, want) && strstr(line, "\"type\":\"user.registered\"") &&
           strstr(line, "\"specversion\":\"1.0\"");
}

/* ---- a tail in the background ------------------------------------------------------------- */

typedef struct bg_tail {
    pid_t pid;
    char out_path[64];
} bg_tail;

static void bg_start(bg_tail *t, const char *group)
{
    snprintf(t->out_path, sizeof t->out_path, "/tmp/ewctl-be-tail-XXXXXX");
    int fd = mkstemp(t->out_path);
    assert_true(fd >= 0);
    t->pid = fork();
    assert_true(t->pid >= 0);
    if (t->pid == 0) {
        dup2(fd, 1);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 2);
        }
        if (group)
            execl(ewctl_path(), "ewctl", "tail", "user.registered", "--group", group, (char *)NULL);
        else
            execl(ewctl_path(), "ewctl", "tail", "user.registered", (char *)NULL);
        _exit(127);
    }
    close(fd);
}

/* What the tail printed so far (malloc'ed). */
static char *bg_output(const bg_tail *t)
{
    FILE *f = fopen(t->out_path, "r");
    assert_non_null(f);
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

static bool bg_printed(const bg_tail *t, const char *id)
{
    char *out = bg_output(t);
    bool found = false;
    for (char *line = strtok(out, "\n"); line && !found; line = strtok(NULL, "\n"))
        found = line_is_event(line, id);
    free(out);
    return found;
}

/* Stops the tail as Ctrl-C would (SIGTERM: it closes its bus and exits 0). */
static void bg_stop(bg_tail *t)
{
    kill(t->pid, SIGTERM);
    int64_t end = ew_mono_ns() + 10000000000LL;
    int st = 0;
    pid_t got;
    while ((got = waitpid(t->pid, &st, WNOHANG)) == 0 && ew_mono_ns() < end)
        usleep(10000);
    if (got == 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, &st, 0);
        fail_msg("ewctl tail did not stop within 10 s of SIGTERM");
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("ewctl tail ended with status %d", st);
}

/* Publishes events until the tail prints one (it is subscribed then); fails after 15 s. */
static void bg_wait_live(const bg_tail *t, char id[EW_UUID_LEN + 1])
{
    int64_t end = ew_mono_ns() + 15000000000LL;
    while (ew_mono_ns() < end) {
        publish(id);
        int64_t wait_end = ew_mono_ns() + 3000000000LL;
        while (ew_mono_ns() < wait_end) {
            if (bg_printed(t, id)) return;
            usleep(20000);
        }
    }
    fail_msg("the background ewctl tail printed none of the events published after it started");
}

/* ---- the backends ----------------------------------------------------------------------- */

/* Sets the environment for backend be in a namespace of its own; skips when its server is not
 * running. */
static void backend_env(const char *be, char ns[32])
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(ns, 32, "ewctl%.3s%.8s", be, id + 24);
    setenv("EVENT_BUS_TYPE", be, 1);
    setenv("EVENT_BUS_DRAIN_TIMEOUT_MS", "5000", 1);
    unsetenv("SERVICE_NAME");
    if (strcmp(be, "sqlite") == 0) {
        static char dir[64], url[128];
        snprintf(dir, sizeof dir, "/tmp/ewctl-be-XXXXXX");
        assert_non_null(mkdtemp(dir));
        snprintf(url, sizeof url, "sqlite:%s/%s.db", dir, ns);
        setenv("EVENT_STORE_URL", url, 1);
        return;
    }
    const char *url = ew_test_server_url(be);
    if (!url) skip();
    if (strcmp(be, "redis") == 0) {
        setenv("REDIS_EVENT_URL", url, 1);
        setenv("REDIS_CHANNEL_PREFIX", ns, 1);
    } else if (strcmp(be, "kafka") == 0) {
        setenv("KAFKA_BOOTSTRAP_SERVERS", url, 1);
        setenv("KAFKA_TOPIC_PREFIX", ns, 1);
        setenv("KAFKA_CONSUMER_GROUP", ns, 1);
    } else if (strcmp(be, "rabbitmq") == 0) {
        setenv("RABBITMQ_URL", url, 1);
        setenv("RABBITMQ_EXCHANGE", ns, 1);
    }
}

static void backend_cleanup(const char *be)
{
    if (strcmp(be, "sqlite") != 0) return;
    const char *url = getenv("EVENT_STORE_URL");
    if (!url || strncmp(url, "sqlite:/tmp/ewctl-be-", 21) != 0) return;
    char dir[128], cmd[256];
    snprintf(dir, sizeof dir, "%s", url + 7);
    *strrchr(dir, '/') = '\0';
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static ew_handler_result ignore(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    return EW_HANDLER_OK;
}

/* Makes subscriber group `group` exist on the backend, as a first run of a service would (its
 * queue, on RabbitMQ), with the library and the same environment. */
static void make_queue(const char *group)
{
    ew_bus *bus;
    ew_error err = {0};
    if (ew_bus_open_env(&bus, &err)) fail_msg("ew_bus_open_env: %s", err.msg);
    if (ew_bus_subscribe(bus, "user.registered", ignore, NULL,
                         &(ew_subscribe_opts){.group = group, .name = "tail"}, &err))
        fail_msg("subscribe: %s", err.msg);
    assert_int_equal(ew_bus_close(bus), 0);
}

static void check_backend(const char *be)
{
    char ns[32];
    backend_env(be, ns);
    int64_t t0 = ew_mono_ns();
    bool rabbit = strcmp(be, "rabbitmq") == 0;
    char group[64] = "";
    if (rabbit) {
        /* a queue holds only what was routed to it once bound: make the group's queue first */
        snprintf(group, sizeof group, "%s-g", ns);
        make_queue(group);
    }

    /* publish prints the id; tail --from-beginning prints that event */
    char old_id[EW_UUID_LEN + 1];
    publish(old_id);
    char args[512], out[65536], err[4096];
    snprintf(args, sizeof args, "tail user.registered --from-beginning --count 1%s%s",
             rabbit ? " --group " : "", group);
    int rc = ewctl(args, out, sizeof out, err, sizeof err);
    if (rc != 0) fail_msg("ewctl %s exited %d: %s", args, rc, err);
    char *nl = strchr(out, '\n');
    if (!nl || nl[1] != '\0') fail_msg("expected one line, got: %s", out);
    *nl = '\0';
    if (!line_is_event(out, old_id)) fail_msg("expected the event %s, got: %s", old_id, out);

    /* a tail without --from-beginning: not the old event, but one published after it started */
    bg_tail t;
    bg_start(&t, NULL);
    char new_id[EW_UUID_LEN + 1];
    bg_wait_live(&t, new_id);
    usleep(300000); /* a moment for a wrongly replayed event to show up */
    bg_stop(&t);
    char *printed = bg_output(&t);
    unlink(t.out_path);
    if (strstr(printed, old_id))
        fail_msg("a tail without --from-beginning printed the event published before it: %s",
                 printed);
    for (char *line = strtok(printed, "\n"); line; line = strtok(NULL, "\n"))
        if (line[0] != '{') fail_msg("not a JSON line: %s", line);
    free(printed);
    backend_cleanup(be);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    if (ms > 20000) fail_msg("%s took %lld ms", be, (long long)ms);
}

static void test_sqlite(void **state)
{
#ifndef EW_HAVE_SQLITE_BUS
    skip();
#endif
    check_backend("sqlite");
}

static void test_redis(void **state)
{
#ifndef EW_HAVE_REDIS
    skip();
#endif
    check_backend("redis");
}

static void test_kafka(void **state)
{
#ifndef EW_HAVE_KAFKA
    skip();
#endif
    check_backend("kafka");
}

static void test_rabbitmq(void **state)
{
#ifndef EW_HAVE_RABBITMQ
    skip();
#endif
    check_backend("rabbitmq");
}

/* ---- ewctl metrics ------------------------------------------------------------------------ */

static const char *const roles[] = {"user"};

static ew_handler_result fail_it(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_FAIL;
}

/* ewctl metrics on backend be: group G took one event (dead-lettered into the store, so
 * acknowledged) and then three were published by `ewctl publish` with nobody consuming: its lag
 * is 3 as `ewctl metrics --group G` prints it, and in the list of every group where the backend
 * lists them. One dead letter pending; user-service's outbox holds one unsent event. */
static void check_metrics(const char *be)
{
    char ns[32];
    backend_env(be, ns);
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ewctl-mt-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char url[128], svc_url[128];
    if (strcmp(be, "sqlite") != 0) {
        snprintf(url, sizeof url, "sqlite:%s/events.db", dir);
        setenv("EVENT_STORE_URL", url, 1);
    }
    snprintf(svc_url, sizeof svc_url, "sqlite:%s/{SERVICE_NAME}.db", dir);
    setenv("SERVICE_DB_URL", svc_url, 1);
    char group[64];
    snprintf(group, sizeof group, "%s-m", ns);

    ew_error err = {0};
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    if (ew_config_from_env(cfg, &err)) fail_msg("%s", err.msg);
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.config = cfg}, &err)) fail_msg("%s", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .dlq = ew_store_dlq_sink(st)}, &err))
        fail_msg("ew_bus_open: %s", err.msg);
    atomic_int calls = 0;
    if (ew_bus_subscribe(bus, "user.registered", fail_it, &calls,
                         &(ew_subscribe_opts){.group = group, .name = "h"}, &err) ||
        ew_bus_start(bus, &err))
        fail_msg("subscribe: %s", err.msg);
    char id[EW_UUID_LEN + 1];
    int64_t end = ew_mono_ns() + 15000000000LL;
    /* Kafka: a new group starts at the end once it has its partitions; publish until one lands */
    while (atomic_load(&calls) == 0 && ew_mono_ns() < end) {
        ew_uuid7(id);
        ew_user_registered d = {
            .user_id = id, .email = "m@example.com", .username = "m", .roles = {roles, 1}};
        if (ew_bus_publish_new(bus, EW_T_USER_REGISTERED, &d, "one-subject", &err))
            fail_msg("publish: %s", err.msg);
        for (int i = 0; i < 100 && atomic_load(&calls) == 0; i++)
            usleep(20000);
    }
    assert_true(atomic_load(&calls) > 0);
    assert_int_equal(ew_bus_wait_for_events(bus, 10000, &err), 0);
    int handled = atomic_load(&calls);
    assert_int_equal(ew_bus_close(bus), 0);

    /* an unsent event in user-service's outbox */
    char own[160];
    snprintf(own, sizeof own, "sqlite:%s/user-service.db", dir);
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", own, &err), 0);
    ew_store *db;
    if (ew_store_open(&db, &(ew_store_options){.config = cfg}, &err)) fail_msg("%s", err.msg);
    ew_txn *t;
    ew_event *ev;
    ew_user_registered d = {
        .user_id = id, .email = "o@example.com", .username = "o", .roles = {roles, 1}};
    assert_int_equal(ew_event_new(&ev, EW_T_USER_REGISTERED, &d,
                                  &(ew_event_attrs){.source = "user-service", .subject = id}, &err),
                     0);
    assert_int_equal(ew_store_begin(db, &t, &err), 0);
    assert_int_equal(ew_outbox_add(t, ev, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    ew_event_unref(ev);
    ew_store_close(db);
    ew_config_free(cfg);

    for (int i = 0; i < 3; i++)
        publish(id);

    char args[256], out[65536], errs[4096], want[256];
    snprintf(args, sizeof args, "metrics --group %s --group nobody-%s", group, ns);
    snprintf(want, sizeof want, "{\"group\":\"%s\",\"lag\":3,\"known\":true}", group);
    /* acknowledgements and commits reach the broker a moment after the handler */
    end = ew_mono_ns() + 15000000000LL;
    int rc;
    do {
        rc = ewctl(args, out, sizeof out, errs, sizeof errs);
        if (rc != 0) fail_msg("ewctl %s exited %d: %s", args, rc, errs);
    } while (!strstr(out, want) && ew_mono_ns() < end && usleep(100000) == 0);
    if (!strstr(out, want)) fail_msg("expected %s in: %s", want, out);
    snprintf(want, sizeof want, "{\"group\":\"nobody-%s\",\"lag\":null,\"known\":false}", ns);
    if (!strstr(out, want)) fail_msg("expected %s in: %s", want, out);
    if (!strstr(out, "\"groups_from\":\"arguments\""))
        fail_msg("expected groups_from arguments in: %s", out);
    snprintf(want, sizeof want, "\"dead_letters\":{\"pending\":%d,", handled);
    if (!strstr(out, want)) fail_msg("expected %s in: %s", want, out);
    if (!strstr(out, "\"outbox\":[{\"service\":\"user-service\",\"pending\":1,"))
        fail_msg("expected user-service's outbox with one event in: %s", out);
    snprintf(want, sizeof want, "{\"bus\":\"%s\",\"store\":\"sqlite\"", be);
    if (strncmp(out, want, strlen(want)) != 0)
        fail_msg("expected %s at the start of: %s", want, out);

    /* every group: listed by the backend, or the system's groups where it cannot list them */
    rc = ewctl("metrics", out, sizeof out, errs, sizeof errs);
    if (rc != 0) fail_msg("ewctl metrics exited %d: %s", rc, errs);
    bool lists = strcmp(be, "sqlite") == 0 || strcmp(be, "redis") == 0;
    if (!strstr(out, lists ? "\"groups_from\":\"backend\"" : "\"groups_from\":\"services\""))
        fail_msg("groups_from is not what %s does: %s", be, out);
    snprintf(want, sizeof want, "{\"group\":\"%s\",\"lag\":3,\"known\":true}", group);
    if (lists && !strstr(out, want)) fail_msg("expected %s in: %s", want, out);

    /* bad input: a clear error, exit status 2 */
    rc = ewctl("metrics --bogus", out, sizeof out, errs, sizeof errs);
    assert_int_equal(rc, 2);
    if (!strstr(errs, "unexpected argument '--bogus'")) fail_msg("stderr: %s", errs);

    ew_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    backend_cleanup(be);
    unsetenv("SERVICE_DB_URL");
    unsetenv("EVENT_STORE_URL");
}

static void test_metrics_sqlite(void **state)
{
#ifndef EW_HAVE_SQLITE_BUS
    skip();
#endif
    check_metrics("sqlite");
}

static void test_metrics_redis(void **state)
{
#ifndef EW_HAVE_REDIS
    skip();
#endif
    check_metrics("redis");
}

static void test_metrics_kafka(void **state)
{
#ifndef EW_HAVE_KAFKA
    skip();
#endif
    check_metrics("kafka");
}

static void test_metrics_rabbitmq(void **state)
{
#ifndef EW_HAVE_RABBITMQ
    skip();
#endif
    check_metrics("rabbitmq");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_sqlite),         cmocka_unit_test(test_redis),
    cmocka_unit_test(test_kafka),          cmocka_unit_test(test_rabbitmq),
    cmocka_unit_test(test_metrics_sqlite), cmocka_unit_test(test_metrics_redis),
    cmocka_unit_test(test_metrics_kafka),  cmocka_unit_test(test_metrics_rabbitmq),
};

EW_TEST_MAIN(tests)
