/* Tests of the metrics (eventwire/metrics.h): what the bus, the dispatcher and the HTTP server
 * did comes out as Prometheus text that the official client's parser reads (prom_parse.py, with
 * Debian's python3-prometheus-client), with counters equal to what happened; and a service's
 * GET /metrics, with its outbox and event store figures. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "bus/bus_test_util.h"
#include "eventwire/metrics.h"
#define SVC_UNDER_TEST "user-service"
#include "services/svc_env.h"

/* The text as canonical sample lines (prom_parse.py), malloc'ed; fails the case when the
 * official parser refuses it. */
static char *parsed(const char *text)
{
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src) fail_msg("EW_SOURCE_DIR is not set: run through ctest");
    if (access("/usr/bin/python3", X_OK) != 0) fail_msg("/usr/bin/python3 is missing");
    char in[] = "/tmp/ew-metrics-XXXXXX";
    int fd = mkstemp(in);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/obs/prom_parse.py' < '%s' 2>&1", src, in);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    ew_buf out;
    ew_buf_init(&out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        ew_buf_append(&out, buf, n);
    int status = pclose(p);
    unlink(in);
    if (status != 0) fail_msg("the Prometheus parser refused the text: %s\n%s", out.data, text);
    return out.data ? out.data : strdup("");
}

/* The value of one series ("name{a=\"x\"}", labels sorted by name) in parsed text; -1 when it
 * is not there. */
static double sample(const char *lines, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = lines; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p) p++;
    }
    return -1;
}

static ew_handler_result by_type(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    switch (ew_event_type_id(ev)) {
    case EW_T_USER_LOGGED_IN:
        return EW_HANDLER_FAIL;
    case EW_T_USER_LOGGED_OUT:
        return ew_ctx_attempt(ctx) == 1 ? EW_HANDLER_RETRY : EW_HANDLER_OK;
    default:
        return EW_HANDLER_OK;
    }
}

static void h_ok(const ew_http_request *req, ew_http_response *res, void *ud)
{
    ew_http_obj_begin(res, 200);
    ew_http_obj_end(res);
}

static void get(int port, const char *path, long want)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    http_result r = http_do(url, &(http_req){0});
    assert_int_equal(r.status, want);
    http_result_free(&r);
}

static void test_counters_equal_what_happened(void **state)
{
    ew_bus *bus = tb_open(NULL);
    tb_subscribe(bus, "user.*", by_type, NULL,
                 &(ew_subscribe_opts){
                     .group = "g", .name = "h", .backoff_initial_ms = 1, .no_jitter = true});
    ew_error err = {0};
    assert_int_equal(ew_bus_start(bus, &err), 0);
    char id[EW_UUID_LEN + 1];
    static const char *const roles[] = {"user"};
    for (int i = 0; i < 3; i++) {
        ew_uuid7(id);
        ew_user_registered d = {
            .user_id = id, .email = "a@example.com", .username = "a", .roles = {roles, 1}};
        assert_int_equal(ew_bus_publish_new(bus, EW_T_USER_REGISTERED, &d, id, &err), 0);
    }
    ew_user_logged_in in = {.user_id = id, .session_id = id};
    assert_int_equal(ew_bus_publish_new(bus, EW_T_USER_LOGGED_IN, &in, id, &err), 0);
    ew_user_logged_out out = {.user_id = id, .session_id = id};
    assert_int_equal(ew_bus_publish_new(bus, EW_T_USER_LOGGED_OUT, &out, id, &err), 0);
    assert_int_equal(ew_bus_wait_for_events(bus, 10000, &err), 0);

    ew_http_server *http;
    assert_int_equal(ew_http_new(&http, NULL, &err), 0);
    assert_int_equal(ew_http_route(http, "GET /items/{id}", 0, h_ok, NULL, &err), 0);
    ew_metrics *m;
    assert_int_equal(ew_metrics_new(&m, &err), 0);
    ew_metrics_set_bus(m, bus);
    ew_metrics_set_http(m, http);
    assert_int_equal(ew_http_route(http, "GET /metrics", 0, ew_metrics_http_handler, m, &err), 0);
    assert_int_equal(ew_http_start(http, &err), 0);
    int port = ew_http_port(http);
    get(port, "/items/1", 200);
    get(port, "/items/2", 200);
    get(port, "/nothing/here", 404);
    get(port, "/healthz", 200);

    /* through HTTP, as Prometheus scrapes it */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    http_result r = http_do(url, &(http_req){0});
    assert_int_equal(r.status, 200);
    char ct[128];
    assert_non_null(http_header_value(&r, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/plain; version=0.0.4"));
    char *lines = parsed(r.body);
    http_result_free(&r);

    assert_true(sample(lines, "eventwire_events_published_total{backend=\"memory\",type=\"user."
                              "registered\"}") == 3);
    assert_true(sample(lines, "eventwire_events_published_total{backend=\"memory\",type=\"user."
                              "logged_in\"}") == 1);
#define HANDLED(type, result)                                                                      \
    "eventwire_events_handled_total{group=\"g\",handler=\"h\",result=\"" result "\",type=\"" type  \
    "\"}"
    assert_true(sample(lines, HANDLED("user.registered", "ok")) == 3);
    assert_true(sample(lines, HANDLED("user.registered", "fail")) == 0);
    assert_true(sample(lines, HANDLED("user.logged_in", "fail")) == 1);
    assert_true(sample(lines, HANDLED("user.logged_in", "ok")) == 0);
    assert_true(sample(lines, HANDLED("user.logged_out", "retry")) == 1);
    assert_true(sample(lines, HANDLED("user.logged_out", "ok")) == 1);
    /* every call is timed: 3 + 1 + 2 */
    assert_true(sample(lines, "eventwire_handler_duration_seconds_count{group=\"g\",handler="
                              "\"h\"}") == 6);
    assert_true(sample(lines, "eventwire_handler_duration_seconds_bucket{group=\"g\",handler="
                              "\"h\",le=\"+Inf\"}") == 6);
    assert_true(sample(lines, "eventwire_handler_queue_depth{group=\"g\",handler=\"h\"}") == 0);
    assert_true(sample(lines, "eventwire_events_pending{}") == 0);
    assert_true(sample(lines, "eventwire_http_requests_total{method=\"GET\",route=\"/items/{id}\","
                              "status=\"200\"}") == 2);
    assert_true(sample(lines, "eventwire_http_requests_total{method=\"\",route=\"(unmatched)\","
                              "status=\"404\"}") == 1);
    assert_true(sample(lines, "eventwire_http_requests_total{method=\"GET\",route=\"/healthz\","
                              "status=\"200\"}") == 1);
    assert_true(sample(lines, "eventwire_http_request_duration_seconds_count{method=\"GET\","
                              "route=\"/items/{id}\"}") == 2);
    assert_true(sample(lines, "process_resident_memory_bytes{}") > 1e6);
    assert_true(sample(lines, "process_open_fds{}") > 3);
    double start = sample(lines, "process_start_time_seconds{}");
    double now = (double)ew_now_us() / 1e6;
    assert_true(start > now - 3600 && start <= now + 1);
    assert_true(sample(lines, "process_cpu_seconds_total{}") >= 0);
    assert_true(sample(lines, "eventwire_scrape_errors_total{}") == 0);
    /* no ids in labels: nothing that looks like a UUID */
    assert_null(strstr(lines, id));
    free(lines);

    ew_http_free(http);
    ew_metrics_free(m);
    ew_bus_close(bus);
}

static void test_a_service_serves_its_metrics(void **state)
{
    env *e = up_fast(NULL, NULL, NULL, NULL);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    static const char *const roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user_id, .email = "m@example.com", .username = "m", .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user_id, NULL);
    ew_event_unref(wait_event(e, "user.profile_created", user_id, 1));

    /* the event is in the store a moment before the relay's publish returns and is counted */
    const char *published = "eventwire_events_published_total{backend=\"sqlite\",type=\"user."
                            "profile_created\"}";
    char *lines = NULL;
    for (int i = 0; i < 100; i++) {
        free(lines);
        http_result r = api(e, "GET", "/metrics", NULL, NULL);
        assert_int_equal(r.status, 200);
        lines = parsed(r.body);
        http_result_free(&r);
        if (sample(lines, published) == 1) break;
        usleep(50000);
    }
    assert_true(sample(lines, published) == 1);
    /* the profile handler took the registration once */
    assert_non_null(strstr(lines, "eventwire_events_handled_total{group=\"user-service\""));
    assert_non_null(strstr(lines, "result=\"ok\",type=\"user.registered\"} 1.0"));
    double pending = sample(lines, "eventwire_outbox_pending{}");
    assert_true(pending >= 0 && pending <= 1); /* 0, or the preferences event in flight */
    assert_true(sample(lines, "eventwire_outbox_oldest_age_seconds{}") >= 0);
    assert_true(sample(lines, "eventwire_scrape_errors_total{}") == 0);
    assert_true(sample(lines, "process_resident_memory_bytes{}") > 1e6);
    /* the service's group as the SQLite log records it: a number, small once it is idle */
    double lag = sample(lines, "eventwire_consumer_lag{backend=\"sqlite\",group=\"user-service\"}");
    if (!(lag >= 0 && lag < 100)) fail_msg("lag %g in\n%s", lag, lines);
    free(lines);
    down(e);
}

static ew_handler_result held(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tb_gate_pass(ud);
    return EW_HANDLER_OK;
}

static char *render(ew_metrics *m)
{
    char *text;
    size_t len;
    ew_error err = {0};
    assert_int_equal(ew_metrics_render(m, &text, &len, &err), 0);
    char *lines = parsed(text);
    free(text);
    return lines;
}

/* eventwire_consumer_lag per group: one group's handler is held while five events wait for it,
 * the other group has handled them all; once released, both are at 0. */
static void test_consumer_lag_per_group(void **state)
{
    tb_gate gate = TB_GATE_INIT;
    atomic_int n = 0;
    ew_bus *bus = tb_open(NULL);
    tb_subscribe(bus, "user.logged_in", held, &gate,
                 &(ew_subscribe_opts){.group = "slow", .name = "h"});
    tb_subscribe(bus, "user.logged_in", tb_count, &n,
                 &(ew_subscribe_opts){.group = "quick", .name = "h"});
    tb_start(bus);
    char subject[EW_UUID_LEN + 1];
    ew_uuid7(subject);
    for (int i = 0; i < 5; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_IN, subject));
    tb_gate_wait_arrivals(&gate, 1);
    for (int i = 0; i < 500 && atomic_load(&n) < 5; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&n), 5);
    ew_metrics *m;
    ew_error err = {0};
    assert_int_equal(ew_metrics_new(&m, &err), 0);
    ew_metrics_set_bus(m, bus);
    char *lines = render(m);
    assert_true(sample(lines, "eventwire_consumer_lag{backend=\"memory\",group=\"slow\"}") == 5);
    assert_true(sample(lines, "eventwire_consumer_lag{backend=\"memory\",group=\"quick\"}") == 0);
    assert_true(sample(lines, "eventwire_scrape_errors_total{}") == 0);
    free(lines);
    tb_gate_open(&gate);
    assert_int_equal(ew_bus_wait_for_events(bus, 10000, &err), 0);
    lines = render(m);
    assert_true(sample(lines, "eventwire_consumer_lag{backend=\"memory\",group=\"slow\"}") == 0);
    free(lines);
    ew_metrics_free(m);
    tb_close(bus);
}

/* A port nobody listens on now (bound, read, closed). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t n = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A real Prometheus server (Debian's, started here on loopback) scrapes a service and answers a
 * PromQL query over its HTTP API with what the service did. */
static void test_prometheus_scrapes_a_service(void **state)
{
    if (access("/usr/bin/prometheus", X_OK) != 0)
        fail_msg("/usr/bin/prometheus is missing: scripts/setup installs it");
    env *e = up_fast(NULL, NULL, NULL, NULL);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    static const char *const roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user_id, .email = "p@example.com", .username = "p", .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user_id, NULL);
    ew_event_unref(wait_event(e, "user.profile_created", user_id, 1));

    char cfg[512], data[512];
    snprintf(cfg, sizeof cfg, "%s/prometheus.yml", e->dir);
    snprintf(data, sizeof data, "%s/prometheus-data", e->dir);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fprintf(f,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: user-service\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n",
            e->p.port);
    fclose(f);
    int port = free_port();
    char listen[64], log[600];
    snprintf(listen, sizeof listen, "--web.listen-address=127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/prometheus.log", e->dir);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char cfgarg[600], dataarg[600];
        snprintf(cfgarg, sizeof cfgarg, "--config.file=%s", cfg);
        snprintf(dataarg, sizeof dataarg, "--storage.tsdb.path=%s", data);
        execl("/usr/bin/prometheus", "prometheus", cfgarg, dataarg, listen, (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    /* poll the query API until the scrape has landed (Prometheus starts in a second or two) */
    char url[256];
    snprintf(url, sizeof url,
             "http://127.0.0.1:%d/api/v1/query?query=sum(eventwire_events_handled_total"
             "%%7Btype%%3D%%22user.registered%%22%%2Cresult%%3D%%22ok%%22%%7D)",
             port);
    char last[512] = "";
    bool found = false;
    for (int i = 0; i < 300 && !found; i++) {
        http_result r = http_do(url, &(http_req){.timeout_ms = 2000});
        if (r.status == 200 && r.body) {
            snprintf(last, sizeof last, "%s", r.body);
            /* {"status":"success","data":{"resultType":"vector","result":[{"metric":{},
             * "value":[1733520000.123,"1"]}]}} */
            found = strstr(r.body, "\"status\":\"success\"") && strstr(r.body, ",\"1\"]");
        }
        http_result_free(&r);
        if (!found) usleep(100000);
    }
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    if (!found) fail_msg("Prometheus never answered 1; its last answer: %s (log: %s)", last, log);
    down(e);
}

/* ENABLE_METRICS=false: handler calls are not timed and nothing is counted by type, while the
 * handling itself and the counts the bus works with go on. */
static void test_metrics_off(void **state)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err), 0);
    assert_int_equal(ew_config_set(cfg, "ENABLE_METRICS", "false", &err), 0);
    ew_bus *bus;
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), 0);
    ew_config_free(cfg);
    atomic_int n = 0;
    tb_subscribe(bus, "user.logged_in", tb_count, &n,
                 &(ew_subscribe_opts){.group = "g", .name = "h"});
    tb_start(bus);
    for (int i = 0; i < 7; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_IN, NULL));
    assert_int_equal(ew_bus_wait_for_events(bus, 10000, &err), 0);
    assert_int_equal(atomic_load(&n), 7);
    ew_handler_stats hs = tb_stats(bus, 0);
    assert_int_equal(hs.handled, 7);
    assert_int_equal(hs.time_total_ns, 0);
    uint64_t timed = 0;
    for (int b = 0; b < EW_HANDLER_HIST_BUCKETS; b++)
        timed += hs.time_hist[b];
    assert_int_equal(timed, 0);
    ew_handler_type_stats ts;
    assert_int_equal(ew_bus_handler_type_stats(bus, 0, EW_T_USER_LOGGED_IN, &ts), 0);
    assert_int_equal(ts.handled, 0);
    assert_int_equal(ew_bus_published_count(bus, EW_T_USER_LOGGED_IN), 0);
    ew_bus_stats bs;
    ew_bus_stats_get(bus, &bs);
    assert_int_equal(bs.published, 7);
    tb_close(bus);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_counters_equal_what_happened),
    cmocka_unit_test(test_consumer_lag_per_group),
    cmocka_unit_test(test_metrics_off),
    cmocka_unit_test_teardown(test_a_service_serves_its_metrics, reap),
    cmocka_unit_test_teardown(test_prometheus_scrapes_a_service, reap),
};

EW_TEST_MAIN(tests)
