/* ewctl console: its JSON API (the operator token, dead letters retried and discarded, saga
 * detail, the live stream) against a console process on the SQLite bus, and the whole console in
 * a real browser — headless Chromium driven by Playwright (tests/console/browser.mjs) — over the
 * five services: a wrong token is refused, a registration's events arrive live, its saga and
 * timeline open, a dead letter is retried from the page and resolved. Screenshots of each page go
 * to BUILD/console-artifacts. On another bus (Redis) the console reads as an ephemeral group.
 *
 * ew-fixture: redis */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "http/http_client.h"
#include "support/ew_test.h"
/* GCC sees svc_proc_dump's path as possibly longer than it is when it inlines it here */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "services/svc_proc.h"
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/config.h"
#include "eventwire/store.h"

#define TOKEN "console-test-token-0123456789"
#define WAIT_MS 30000

/* ---- the console process ---- */

typedef struct console_proc {
    pid_t pid;
    int out_fd;
    char base[128];
    char token[130];
} console_proc;

static const char *build_dir(char *buf, size_t n)
{
    const char *bin = getenv("EW_BUILD_DIR");
    if (bin) return bin;
    ssize_t len = readlink("/proc/self/exe", buf, n - 1);
    buf[len > 0 ? len : 0] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash) *slash = '\0';
    return buf;
}

/* Reads one line of the console's stdout within the deadline; false at its end. */
static bool read_line(int fd, char *line, size_t n, int64_t deadline)
{
    size_t len = 0;
    while (len < n - 1) {
        int left = (int)((deadline - ew_mono_ns()) / 1000000);
        struct pollfd pf = {fd, POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, left) <= 0) return false;
        if (read(fd, line + len, 1) != 1) return false;
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = '\0';
    return true;
}

/* Starts `ewctl console --port 0 ARGS...` with this process's environment and reads its address
 * and token. */
static void console_start(console_proc *c, const char *const *args)
{
    char self[512], exe[1024];
    snprintf(exe, sizeof exe, "%s/ewctl", build_dir(self, sizeof self));
    const char *argv[16] = {exe, "console", "--port", "0"};
    size_t k = 4;
    while (args && *args && k < 15)
        argv[k++] = *args++;
    argv[k] = NULL;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC)) fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    memset(c, 0, sizeof *c);
    c->pid = pid;
    c->out_fd = fds[0];
    char line[512];
    int64_t deadline = ew_mono_ns() + 20000000000LL;
    while (read_line(c->out_fd, line, sizeof line, deadline)) {
        const char *at = strstr(line, "listening on http://");
        if (at) {
            at += 13; /* http://HOST:PORT/ */
            snprintf(c->base, sizeof c->base, "%.*s", (int)(7 + strcspn(at + 7, "/")), at);
        }
        if (strncmp(line, "operator token: ", 16) == 0) {
            snprintf(c->token, sizeof c->token, "%.128s", line + 16);
            break;
        }
    }
    if (!c->base[0] || !c->token[0]) fail_msg("ewctl console did not start (%s)", line);
}

static void console_stop(console_proc *c)
{
    if (!c->pid) return;
    kill(c->pid, SIGTERM);
    int status = 0;
    int64_t end = ew_mono_ns() + 10000000000LL;
    while (waitpid(c->pid, &status, WNOHANG) == 0) {
        if (ew_mono_ns() > end) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &status, 0);
            fail_msg("ewctl console did not stop within 10 s");
        }
        usleep(10000);
    }
    close(c->out_fd);
    c->pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* One API call with the token (NULL: none); caller frees the result. */
static http_result api(const console_proc *c, const char *method, const char *path,
                       const char *token)
{
    char url[512], auth[256];
    snprintf(url, sizeof url, "%s%s", c->base, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
    const char *const hdrs[] = {auth, NULL};
    http_req rq = {.method = method, .headers = token ? hdrs : NULL, .body = NULL};
    if (method && strcmp(method, "POST") == 0) {
        rq.body = "";
    }
    return http_do(url, &rq);
}

/* ---- a handler that dead-letters an event the first time it sees it ---- */

typedef struct flaky {
    atomic_int calls, handled;
} flaky;

static ew_handler_result flaky_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ev;
    flaky *f = ud;
    if (atomic_fetch_add(&f->calls, 1) == 0) {
        ew_ctx_set_error(ctx, "the audit log is unavailable");
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&f->handled, 1);
    return EW_HANDLER_OK;
}

typedef struct env {
    char dir[256];
    ew_store *st;
    ew_bus *bus;
    flaky f;
} env;

/* The store and bus of dir (EVENT_STORE_URL, EVENT_BUS_TYPE=sqlite set for children too), with
 * the flaky handler subscribed as console-test/retention-audit. */
static void env_open(env *e)
{
    svc_tmpdir(e->dir);
    char url[400];
    snprintf(url, sizeof url, "sqlite:%s/events.db", e->dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    ew_error err = {0};
    if (ew_store_open(&e->st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_from_env(cfg, &err), 0);
    if (ew_bus_open(&e->bus, &(ew_bus_options){.config = cfg, .dlq = ew_store_dlq_sink(e->st)},
                    &err))
        fail_msg("%s", err.msg);
    ew_config_free(cfg);
    ew_subscribe_opts so = {.group = "console-test", .name = "retention-audit", .max_attempts = 1};
    assert_int_equal(
        ew_bus_subscribe(e->bus, "compliance.retention_applied", flaky_handle, &e->f, &so, &err),
        0);
    assert_int_equal(ew_bus_start(e->bus, &err), 0);
}

static void env_close(env *e)
{
    ew_bus_close(e->bus);
    ew_store_close(e->st);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", e->dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", e->dir);
}

/* Publishes the event the flaky handler refuses the first time, through `ewctl publish`. */
static void publish_refused(void)
{
    char *out;
    assert_int_equal(ew_test_ewctl("publish compliance.retention_applied --subject audit "
                                   "--data '{\"service\":\"console-test\",\"category\":\"events\","
                                   "\"purged\":3,\"older_than\":\"2026-01-01T00:00:00Z\"}'",
                                   NULL, &out, NULL),
                     0);
    free(out);
}

typedef struct dlq_probe {
    ew_store *st;
    int64_t id;
    int status;
} dlq_probe;

static int newest_id(void *ud, const ew_dlq_row *r)
{
    dlq_probe *p = ud;
    if (r->id > p->id) {
        p->id = r->id;
        p->status = r->status;
    }
    return 0;
}

/* Waits for a dead letter of retention-audit newer than after, in status want (-1: any). */
static int64_t await_dead_letter(ew_store *st, int64_t after, int want)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        dlq_probe p = {.st = st};
        ew_dlq_filter f = {.handler = "retention-audit", .status = -1};
        if (ew_store_dlq_list(st, &f, newest_id, &p, NULL) == 0 && p.id > after &&
            (want < 0 || p.status == want))
            return p.id;
        if (ew_mono_ns() > end)
            fail_msg("no dead letter of retention-audit after %lld", (long long)after);
        usleep(20000);
    }
}

static bool dlq_status_is(ew_store *st, int64_t id, ew_dlq_status want)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        ew_dlq_row r;
        if (ew_store_dlq_get(st, id, &r, NULL) == 0) {
            bool yes = r.status == want;
            ew_dlq_row_release(&r);
            if (yes) return true;
        }
        if (ew_mono_ns() > end) return false;
        usleep(20000);
    }
}

/* ---- the API ---- */

static void test_api_needs_the_token(void **state)
{
    (void)state;
    env e = {0};
    env_open(&e);
    unsetenv("CONSOLE_TOKEN");
    console_proc c;
    console_start(&c, NULL);
    assert_int_equal(strlen(c.token), 32); /* a random one, printed */
    static const char *const paths[] = {"/api/info",  "/api/stream",  "/api/dlq",
                                        "/api/sagas", "/api/groups",  "/api/metrics",
                                        "/api/dlq/1", "/api/sagas/x", "/api/timeline?trace_id=x"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        http_result r = api(&c, "GET", paths[i], NULL);
        if (r.status != 401) fail_msg("%s without a token: %ld", paths[i], r.status);
        http_result_free(&r);
        r = api(&c, "GET", paths[i], "0123456789abcdef0123456789abcdef");
        if (r.status != 401) fail_msg("%s with a wrong token: %ld", paths[i], r.status);
        http_result_free(&r);
        r = api(&c, "GET", paths[i], "");
        assert_int_equal(r.status, 401);
        http_result_free(&r);
    }
    http_result r = api(&c, "POST", "/api/dlq/1/retry", "wrong");
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    /* a prefix of the right token is wrong too */
    char prefix[40];
    snprintf(prefix, sizeof prefix, "%.31s", c.token);
    r = api(&c, "GET", "/api/info", prefix);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    r = api(&c, "GET", "/api/info", c.token);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"bus\":\"sqlite\""));
    http_result_free(&r);
    /* the stream takes it as ?token= (EventSource sends no headers) */
    char path[200];
    snprintf(path, sizeof path, "/api/stream?token=%s", c.token);
    r = api(&c, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "text/event-stream"));
    http_result_free(&r);
    /* the page needs none */
    r = api(&c, "GET", "/", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "eventwire console"));
    http_result_free(&r);
    r = api(&c, "GET", "/console.js", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "text/javascript"));
    http_result_free(&r);
    console_stop(&c);
    env_close(&e);
}

static void test_api_stream_batches_and_filters(void **state)
{
    (void)state;
    env e = {0};
    env_open(&e);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    console_proc c;
    console_start(&c, NULL);
    assert_string_equal(c.token, "the value of CONSOLE_TOKEN");
    /* a first call says where the stream is, at once */
    http_result r = api(&c, "GET", "/api/stream?type=compliance.*", TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "event: pos"));
    http_result_free(&r);
    publish_refused();
    /* the next call from position 0 gets it; a filter on another type does not */
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        r = api(&c, "GET", "/api/stream?after=0&type=compliance.*&subject=audit", TOKEN);
        assert_int_equal(r.status, 200);
        bool got = strstr(r.body, "\"type\":\"compliance.retention_applied\"") != NULL;
        http_result_free(&r);
        if (got) break;
        if (ew_mono_ns() > end) fail_msg("the event never reached the stream");
    }
    r = api(&c, "GET", "/api/stream?after=0&wait_ms=300&type=user.*", TOKEN);
    assert_null(strstr(r.body, "compliance.retention_applied"));
    http_result_free(&r);
    r = api(&c, "GET", "/api/stream?after=0&wait_ms=300&subject=someone-else", TOKEN);
    assert_null(strstr(r.body, "compliance.retention_applied"));
    http_result_free(&r);
    /* the timeline of its correlation id holds it */
    /* a client far behind gets a summary and the newest 500, never more */
    const char *data = "{\"service\":\"load\",\"category\":\"events\",\"purged\":1,"
                       "\"older_than\":\"2026-01-01T00:00:00Z\"}";
    ew_event *evs[100];
    ew_error err = {0};
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < 100; i++)
            assert_int_equal(
                ew_event_from_json(&evs[i], "compliance.retention_applied", data, strlen(data),
                                   &(ew_event_attrs){.source = "load", .subject = "bulk"}, &err),
                0);
        assert_int_equal(ew_bus_publish_batch(e.bus, (const ew_event *const *)evs, 100, &err), 0);
        for (int i = 0; i < 100; i++)
            ew_event_unref(evs[i]);
    }
    for (;;) {
        r = api(&c, "GET", "/api/info", TOKEN);
        bool all = strstr(r.body, "\"events_seen\":1201") != NULL;
        http_result_free(&r);
        if (all) break;
        if (ew_mono_ns() > end + (int64_t)WAIT_MS * 1000000) fail_msg("the 1,200 never came");
        usleep(20000);
    }
    r = api(&c, "GET", "/api/stream?after=1&wait_ms=0&subject=bulk", TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "event: skipped\ndata: {\"skipped\":700}"));
    size_t n = 0;
    for (const char *p = r.body; (p = strstr(p, "\ndata: {\"seq\"")); p++)
        n++;
    assert_int_equal(n, 500);
    assert_non_null(strstr(r.body, "id: 1201\nevent: pos"));
    http_result_free(&r);
    /* a filter that lets none of them through is told of nothing skipped */
    r = api(&c, "GET", "/api/stream?after=1&wait_ms=0&subject=nobody", TOKEN);
    assert_null(strstr(r.body, "event: skipped"));
    assert_non_null(strstr(r.body, "id: 1201\nevent: pos"));
    http_result_free(&r);

    r = api(&c, "GET", "/api/stream?after=0&wait_ms=99999", TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    r = api(&c, "GET", "/api/timeline", TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    r = api(&c, "GET", "/api/timeline?trace_id=nothex", TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    console_stop(&c);
    env_close(&e);
}

static void test_api_dead_letter_retry_and_discard(void **state)
{
    (void)state;
    env e = {0};
    env_open(&e);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    console_proc c;
    console_start(&c, NULL);
    publish_refused();
    int64_t id = await_dead_letter(e.st, 0, EW_DLQ_PENDING);
    http_result r = api(&c, "GET", "/api/dlq?status=pending", TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "the audit log is unavailable"));
    assert_non_null(strstr(r.body, "\"handler\":\"retention-audit\""));
    http_result_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/api/dlq/%lld", (long long)id);
    r = api(&c, "GET", path, TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"event\":"));
    http_result_free(&r);
    r = api(&c, "GET", "/api/dlq?status=nonsense", TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);

    /* retried: the handler takes it this time, and the dead letter is resolved */
    snprintf(path, sizeof path, "/api/dlq/%lld/retry", (long long)id);
    r = api(&c, "POST", path, TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"status\":\"retried\""));
    http_result_free(&r);
    assert_true(dlq_status_is(e.st, id, EW_DLQ_RESOLVED));
    assert_int_equal(atomic_load(&e.f.handled), 1);
    r = api(&c, "POST", path, TOKEN); /* nothing left to retry */
    assert_int_equal(r.status, 409);
    http_result_free(&r);

    /* another one, discarded */
    atomic_store(&e.f.calls, 0);
    publish_refused();
    int64_t id2 = await_dead_letter(e.st, id, EW_DLQ_PENDING);
    snprintf(path, sizeof path, "/api/dlq/%lld/discard", (long long)id2);
    r = api(&c, "POST", path, TOKEN);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    assert_true(dlq_status_is(e.st, id2, EW_DLQ_DISCARDED));
    r = api(&c, "POST", path, TOKEN);
    assert_int_equal(r.status, 409);
    http_result_free(&r);
    snprintf(path, sizeof path, "/api/dlq/%lld/retry", (long long)id2);
    r = api(&c, "POST", path, TOKEN);
    assert_int_equal(r.status, 409);
    http_result_free(&r);
    r = api(&c, "POST", "/api/dlq/999999/retry", TOKEN);
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    r = api(&c, "POST", "/api/dlq/abc/discard", TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    console_stop(&c);
    /* the retry and the discard are in the operator's chain, once each, and it holds */
    char *out, *chain, want[96];
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &chain, NULL), 0);
    snprintf(want, sizeof want, "\"action\":\"dlq.retried\",\"subject\":\"%lld\"", (long long)id);
    assert_non_null(strstr(chain, want));
    snprintf(want, sizeof want, "\"action\":\"dlq.discarded\",\"subject\":\"%lld\"",
             (long long)id2);
    assert_non_null(strstr(chain, want));
    assert_null(strstr(chain, "\"seq\":3,"));
    free(chain);
    assert_int_equal(ew_test_ewctl("audit verify --service ewctl", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"ok\":true,\"entries\":2"));
    free(out);
    env_close(&e);
}

/* On Redis the console reads through a group of its own, which Redis lists with its lag. */
static void test_api_stream_on_redis(void **state)
{
    (void)state;
    const char *url = ew_test_server_url("redis");
    if (!url) skip();
    env e = {0};
    svc_tmpdir(e.dir);
    char store[400], prefix[64];
    snprintf(store, sizeof store, "sqlite:%s/events.db", e.dir);
    snprintf(prefix, sizeof prefix, "console%lld", (long long)(ew_now_us() % 1000000000));
    setenv("EVENT_STORE_URL", store, 1);
    setenv("EVENT_BUS_TYPE", "redis", 1);
    setenv("REDIS_EVENT_URL", url, 1);
    setenv("REDIS_CHANNEL_PREFIX", prefix, 1);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    console_proc c;
    console_start(&c, NULL);
    http_result r = api(&c, "GET", "/api/stream", TOKEN); /* where the stream is */
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    publish_refused();
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        r = api(&c, "GET", "/api/stream?after=0&wait_ms=1000", TOKEN);
        bool got = strstr(r.body, "\"type\":\"compliance.retention_applied\"") != NULL;
        http_result_free(&r);
        if (got) break;
        if (ew_mono_ns() > end) fail_msg("the event never reached the stream on redis");
    }
    r = api(&c, "GET", "/api/groups", TOKEN);
    assert_int_equal(r.status, 200);
    if (!strstr(r.body, "\"groups_from\":\"backend\"") ||
        !strstr(r.body, "{\"group\":\"ewctl-console-") || strstr(r.body, "\"positions\""))
        fail_msg("expected the console's own group with its lag from Redis: %s", r.body);
    http_result_free(&r);
    console_stop(&c);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", e.dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", e.dir);
}

/* CONSOLE_TOKEN: checked at start, never shown. */
/* A user's personal fields reach the console as the log holds them, encrypted; with --decrypt
 * (and the key file) the live stream and the timeline show them in clear. */
static void test_console_decrypts_only_when_asked(void **state)
{
    (void)state;
    env e = {0};
    env_open(&e);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    ew_event *ev[2];
    char user[2][EW_UUID_LEN + 1], email[2][64], path[160];
    ew_error err = {0};
    for (int i = 0; i < 2; i++) {
        ew_uuid7(user[i]);
        snprintf(email[i], sizeof email[i], "grace%d.console@example.com", i);
        const char *roles[] = {"user"};
        ew_user_registered d = {
            .user_id = user[i], .email = email[i], .username = "graceconsole", .roles = {roles, 1}};
        assert_int_equal(
            ew_user_registered_new(
                &ev[i], &d, &(ew_event_attrs){.source = "auth-service", .subject = user[i]}, &err),
            0);
    }
    for (int decrypt = 0; decrypt < 2; decrypt++) {
        const char *args[] = {"--decrypt", NULL};
        console_proc c;
        console_start(&c, decrypt ? args : NULL);
        assert_int_equal(ew_bus_publish(e.bus, ev[decrypt], &err), 0);
        /* the live stream: the event published since the console started */
        int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
        http_result r;
        for (;;) {
            r = api(&c, "GET", "/api/stream?after=0&wait_ms=300&type=user.registered", TOKEN);
            assert_int_equal(r.status, 200);
            if (strstr(r.body, user[decrypt])) break;
            http_result_free(&r);
            if (ew_mono_ns() > end) fail_msg("the registration never reached the stream");
        }
        if (decrypt) {
            assert_non_null(strstr(r.body, email[1]));
        } else {
            assert_null(strstr(r.body, email[0]));
            assert_non_null(strstr(r.body, "\"email\":\"ewenc1."));
        }
        http_result_free(&r);
        /* the timeline reads the log: the first event, whenever the console started */
        snprintf(path, sizeof path, "/api/timeline?correlation_id=%s",
                 ew_event_correlation_id(ev[0]));
        r = api(&c, "GET", path, TOKEN);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, user[0]));
        if (decrypt) {
            assert_non_null(strstr(r.body, email[0]));
            assert_non_null(strstr(r.body, "\"username\":\"graceconsole\""));
        } else {
            assert_null(strstr(r.body, email[0]));
            assert_null(strstr(r.body, "graceconsole"));
        }
        http_result_free(&r);
        console_stop(&c);
    }
    /* the console that decrypted is in the operator's chain, once */
    char *out;
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    static const char decrypted[] = "\"action\":\"events.decrypted\",\"subject\":null,"
                                    "\"details\":{\"console\":true}";
    const char *at = strstr(out, decrypted);
    if (!at) fail_msg("no %s in\n%s", decrypted, out);
    assert_null(strstr(at + sizeof decrypted - 1, "events.decrypted"));
    free(out);
    ew_event_unref(ev[0]);
    ew_event_unref(ev[1]);
    env_close(&e);
}

static void test_console_token_setting(void **state)
{
    (void)state;
    char *out, *errout;
    setenv("CONSOLE_TOKEN", "short", 1);
    assert_int_equal(ew_test_ewctl("console --port 0", NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "CONSOLE_TOKEN: must be at least 16 characters"));
    free(out);
    free(errout);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    assert_int_equal(ew_test_ewctl("config", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "CONSOLE_TOKEN\t***"));
    assert_null(strstr(out, TOKEN));
    free(out);
    unsetenv("CONSOLE_TOKEN");
    assert_int_equal(ew_test_ewctl("console --help", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "operator token"));
    free(out);
    assert_int_equal(ew_test_ewctl("--help", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "console"));
    free(out);
    assert_int_equal(ew_test_ewctl("console --port 99999", NULL, &out, &errout), 2);
    free(out);
    free(errout);
}

/* ---- the browser, over the five services ---- */

static const char *const service_names[] = {"auth-service", "user-service", "notification-service",
                                            "analytics-service", "export-service"};

static void test_console_in_a_browser(void **state)
{
    (void)state;
    /* the script and its node_modules are beside this file */
    char self[512], here[512], script[600], modules[600], artifacts[600];
    const char *bin = build_dir(self, sizeof self);
    snprintf(here, sizeof here, "%s", __FILE__);
    *strrchr(here, '/') = '\0';
    snprintf(script, sizeof script, "%s/browser.mjs", here);
    snprintf(modules, sizeof modules, "%s/node_modules/playwright-core", here);
    snprintf(artifacts, sizeof artifacts, "%s/console-artifacts", bin);
    struct stat sb;
    if (stat("/usr/bin/chromium", &sb) || stat(modules, &sb))
        fail_msg("Chromium or playwright-core is missing: run scripts/setup");
    mkdir(artifacts, 0755);

    env e = {0};
    env_open(&e);
    setenv("CONSOLE_TOKEN", TOKEN, 1);
    svc_proc svc[5];
    char services[700] = "";
    for (int i = 0; i < 5; i++) {
        if (svc_proc_start(&svc[i], service_names[i], e.dir, NULL))
            fail_msg("%s did not start", service_names[i]);
        snprintf(services + strlen(services), sizeof services - strlen(services), "%s%s",
                 i ? "," : "", svc[i].base);
    }
    console_proc c;
    const char *const args[] = {"--services", services, "--scrape-interval", "1", NULL};
    console_start(&c, args);

    char cmd[4096], ewctl[600];
    snprintf(ewctl, sizeof ewctl, "%s/ewctl", bin);
    snprintf(cmd, sizeof cmd,
             "CONSOLE_URL='%s' CONSOLE_TOKEN='%s' AUTH_URL='%s' EWCTL='%s' ARTIFACTS='%s' "
             "node '%s' 2>&1",
             c.base, TOKEN, svc[0].base, ewctl, artifacts, script);
    int64_t t0 = ew_mono_ns();
    int rc = system(cmd);
    fprintf(stderr, "browser test: %.1f s\n", (double)(ew_mono_ns() - t0) / 1e9);
    if (rc != 0) fail_msg("the browser test failed (status %d); the services' logs: %s", rc, e.dir);
    /* what the page did, seen from the store: the dead letter it retried is resolved */
    assert_int_equal(atomic_load(&e.f.handled), 1);
    int64_t id = await_dead_letter(e.st, 0, -1);
    assert_true(dlq_status_is(e.st, id, EW_DLQ_RESOLVED));

    /* the saga detail through the API: the registration, completed, with its transitions */
    http_result r = api(&c, "GET", "/api/sagas?type=UserRegistration", TOKEN);
    assert_int_equal(r.status, 200);
    const char *at = strstr(r.body, "\"id\":\"");
    assert_non_null(at);
    char sid[128], path[200];
    snprintf(sid, sizeof sid, "%.*s", (int)strcspn(at + 6, "\""), at + 6);
    http_result_free(&r);
    snprintf(path, sizeof path, "/api/sagas/%s", sid);
    r = api(&c, "GET", path, TOKEN);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"status\":\"completed\""));
    assert_non_null(strstr(r.body, "\"transitions\":[{"));
    http_result_free(&r);
    r = api(&c, "GET", "/api/sagas/no-such-saga", TOKEN);
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    /* the groups the store knows, behind the head by nothing or little */
    r = api(&c, "GET", "/api/groups", TOKEN);
    assert_int_equal(r.status, 200);
    if (!strstr(r.body, "{\"group\":\"user-service\",\"lag\":") ||
        !strstr(r.body, "\"groups_from\":\"backend\"") ||
        !strstr(r.body, "\"positions\":[{\"group\":"))
        fail_msg("expected user-service's lag and position: %s", r.body);
    http_result_free(&r);
    /* the charts' figures: every service answered a scrape */
    r = api(&c, "GET", "/api/metrics", TOKEN);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body, "\"up\":false"));
    assert_non_null(strstr(r.body, "\"bus\":[{\"t\":"));
    http_result_free(&r);

    console_stop(&c);
    for (int i = 0; i < 5; i++)
        svc_proc_stop(&svc[i]);
    env_close(&e);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_api_needs_the_token),
    cmocka_unit_test(test_api_stream_batches_and_filters),
    cmocka_unit_test(test_api_dead_letter_retry_and_discard),
    cmocka_unit_test(test_api_stream_on_redis),
    cmocka_unit_test(test_console_token_setting),
    cmocka_unit_test(test_console_decrypts_only_when_asked),
    cmocka_unit_test(test_console_in_a_browser),
};

EW_TEST_MAIN(tests)
