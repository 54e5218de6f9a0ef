/* Benchmark of a scrape of GET /metrics, as Prometheus makes it (libcurl, one connection kept),
 * with 40 event types × 10 handlers registered on a memory bus: ten subscriber groups of 40
 * handlers each, handler k taking catalog type k mod 35 (the catalog has 35 types, old versions
 * included), and one event of every type handled, so that every series of every family is there
 * (handled by group, handler, type and result; duration histograms per handler; consumer lag per
 * group; the process). The baseline, in the same run: the same client fetching a static body of
 * the same size from the same HTTP server, what serving alone costs.
 *
 *   metrics.scrape.p50 / .p99   ms per scrape, 300 scrapes
 *   metrics.render              renders per second (ew_metrics_render, no HTTP), and the CPU
 *                               time of one (the thread's own clock: what a loaded machine's
 *                               wall clock hides) */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/buf.h"
#include "eventwire/bus.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/http.h"
#include "eventwire/id.h"
#include "eventwire/metrics.h"
#include "support/sample_data.h"

#define GROUPS 10
#define HANDLERS 40 /* per group */
#define SCRAPES 300

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_metrics: %s: %s\n", what, msg);
    exit(1);
}

static ew_handler_result ok(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    return EW_HANDLER_OK;
}

/* An event of `type` with every field filled. */
static ew_event *any_event(ew_type_id type)
{
    const ew_type_info *t = ew_catalog_get(type);
    _Alignas(16) char data[1024];
    char uuid[EW_UUID_LEN + 1];
    if (t->struct_size > sizeof data) die("event", "data struct too large");
    ew_uuid7(uuid);
    ew_sample_fill(t, data, &(ew_sample_values){.uuid = uuid, .integer = 1});
    ew_event *ev;
    ew_error err = {0};
    if (ew_event_new(&ev, type, data, &(ew_event_attrs){.source = "bench", .subject = uuid}, &err))
        die(t->type, err.msg);
    return ev;
}

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    *(size_t *)ud += size * n;
    return size * n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* SCRAPES GETs of url on one connection: per-scrape times (ms) sorted into ms[], bytes of the
 * last body. */
static size_t scrape(CURL *c, const char *url, double *ms)
{
    size_t bytes = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bytes);
    for (int i = 0; i < SCRAPES; i++) {
        bytes = 0;
        int64_t t0 = ew_mono_ns();
        CURLcode rc = curl_easy_perform(c);
        ms[i] = (double)(ew_mono_ns() - t0) / 1e6;
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status != 200) die("scrape", curl_easy_strerror(rc));
    }
    qsort(ms, SCRAPES, sizeof *ms, cmp_double);
    return bytes;
}

static char *static_body;
static size_t static_len;

static void h_static(const ew_http_request *req, ew_http_response *res, void *ud)
{
    ew_http_reply_body(res, 200, "text/plain; version=0.0.4; charset=utf-8", static_body,
                       static_len);
}

int main(void)
{
    ew_error err = {0};
    ew_config *cfg;
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "bench", &err))
        die("config", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) die("open", err.msg);
    ew_config_free(cfg);
    int ntypes = EW_T__COUNT - 1;
    for (int g = 0; g < GROUPS; g++) {
        for (int h = 0; h < HANDLERS; h++) {
            char group[16], name[16];
            snprintf(group, sizeof group, "group-%d", g);
            snprintf(name, sizeof name, "handler-%d", h);
            const char *type = ew_catalog_get((ew_type_id)(1 + h % ntypes))->type;
            if (ew_bus_subscribe(bus, type, ok, NULL,
                                 &(ew_subscribe_opts){.group = group, .name = name}, &err))
                die("subscribe", err.msg);
        }
    }
    if (ew_bus_start(bus, &err)) die("start", err.msg);
    for (int t = 1; t < EW_T__COUNT; t++) {
        ew_event *ev = any_event((ew_type_id)t);
        if (ew_bus_publish(bus, ev, &err)) die("publish", err.msg);
        ew_event_unref(ev);
    }
    if (ew_bus_wait_for_events(bus, 60000, &err)) die("wait", err.msg);

    ew_metrics *m;
    ew_http_server *http;
    if (ew_metrics_new(&m, &err) || ew_http_new(&http, NULL, &err)) die("metrics", err.msg);
    ew_metrics_set_bus(m, bus);
    ew_metrics_set_http(m, http);
    if (ew_http_route(http, "GET /metrics", 0, ew_metrics_http_handler, m, &err) ||
        ew_http_route(http, "GET /static", 0, h_static, NULL, &err) || ew_http_start(http, &err))
        die("http", err.msg);
    if (ew_metrics_render(m, &static_body, &static_len, &err)) die("render", err.msg);

    /* renders alone */
    int64_t t0 = ew_mono_ns();
    int renders = 0;
    struct timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    while (ew_mono_ns() - t0 < 2000000000LL) {
        char *text;
        size_t len;
        if (ew_metrics_render(m, &text, &len, &err)) die("render", err.msg);
        free(text);
        renders++;
    }
    double render_rate = renders / ((double)(ew_mono_ns() - t0) / 1e9);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    double render_cpu_ms =
        ((double)(c1.tv_sec - c0.tv_sec) * 1e3 + (double)(c1.tv_nsec - c0.tv_nsec) / 1e6) / renders;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *c = curl_easy_init();
    char url[128], surl[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", ew_http_port(http));
    snprintf(surl, sizeof surl, "http://127.0.0.1:%d/static", ew_http_port(http));
    static double ms[SCRAPES], sms[SCRAPES];
    size_t bytes = scrape(c, url, ms);
    scrape(c, surl, sms);
    /* and once more each, taking turns, for the load of the moment */
    static double ms2[SCRAPES], sms2[SCRAPES];
    scrape(c, surl, sms2);
    scrape(c, url, ms2);
    double p50 = ms[SCRAPES / 2] < ms2[SCRAPES / 2] ? ms[SCRAPES / 2] : ms2[SCRAPES / 2];
    double p99 = ms[SCRAPES * 99 / 100] < ms2[SCRAPES * 99 / 100] ? ms[SCRAPES * 99 / 100]
                                                                  : ms2[SCRAPES * 99 / 100];
    double s50 = sms[SCRAPES / 2] < sms2[SCRAPES / 2] ? sms[SCRAPES / 2] : sms2[SCRAPES / 2];
    double s99 = sms[SCRAPES * 99 / 100] < sms2[SCRAPES * 99 / 100] ? sms[SCRAPES * 99 / 100]
                                                                    : sms2[SCRAPES * 99 / 100];
    size_t series = 0;
    for (const char *p = static_body; (p = strchr(p, '\n')); p++)
        if (p[1] && p[1] != '#') series++;
    curl_easy_cleanup(c);
    curl_global_cleanup();

    printf("bench: metrics.static_body.p50 %.3f ms\n", s50);
    printf("bench: metrics.static_body.p99 %.3f ms\n", s99);
    printf("bench: metrics.scrape.p50 %.3f ms ratio=%.2f baseline=metrics.static_body.p50\n", p50,
           p50 / s50);
    printf("bench: metrics.scrape.p99 %.3f ms ratio=%.2f baseline=metrics.static_body.p99\n", p99,
           p99 / s99);
    printf("bench: metrics.render %.0f renders/s\n", render_rate);
    printf("bench: metrics.render.cpu %.3f ms\n", render_cpu_ms);
    printf("# metrics: %d groups x %d handlers over %d types, %zu series, %zu bytes per scrape; "
           "best of two runs of %d scrapes each\n",
           GROUPS, HANDLERS, ntypes, series, bytes, SCRAPES);
    free(static_body);
    ew_http_free(http);
    ew_metrics_free(m);
    ew_bus_close(bus);
    return 0;
}
