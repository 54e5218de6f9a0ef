/* eventwire — the OTLP/HTTP JSON span exporter (eventwire/otlp.h). */
#include "eventwire/otlp.h"
#include "core/mono.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/buf.h"
#include "core/json.h"
#include "core/log.h"
#include "eventwire/clock.h"

/* A span as queued: its strings copied into fixed fields (cut when longer). */
typedef struct qspan {
    ew_trace_ctx ctx;
    uint8_t parent[8];
    int kind;
    bool error;
    int64_t start_us, end_us;
    int http_status;
    char name[160], event_id[64], event_type[96], group[96], handler[160], method[16], route[160];
} qspan;

struct ew_otlp {
    ew_otlp_options o;
    char *endpoint, *service;
    ew__log_sink log;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    qspan *q;          /* ring: [head, head + n) */
    size_t head, n;
    bool stop;
    pthread_t thread;
    atomic_uint_fast64_t exported, dropped, failed;
    int64_t last_warn_ns;
};

static void copy(char *dst, size_t cap, const char *src)
{
    if (!src) {
        dst[0] = '\0';
        return;
    }
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void ew_otlp_span(void *ud, const ew_span *sp)
{
    ew_otlp *x = ud;
    pthread_mutex_lock(&x->mu);
    if (x->n == x->o.max_queue || x->stop) {
        pthread_mutex_unlock(&x->mu);
        atomic_fetch_add_explicit(&x->dropped, 1, memory_order_relaxed);
        return;
    }
    qspan *q = &x->q[(x->head + x->n) % x->o.max_queue];
    q->ctx = sp->ctx;
    memcpy(q->parent, sp->parent_span_id, sizeof q->parent);
    q->kind = sp->kind;
    q->error = sp->error;
    q->start_us = sp->start_us;
    q->end_us = sp->end_us;
    q->http_status = sp->http_status;
    copy(q->name, sizeof q->name, sp->name);
    copy(q->event_id, sizeof q->event_id, sp->event_id);
    copy(q->event_type, sizeof q->event_type, sp->event_type);
    copy(q->group, sizeof q->group, sp->group);
    copy(q->handler, sizeof q->handler, sp->handler);
    copy(q->method, sizeof q->method, sp->http_method);
    copy(q->route, sizeof q->route, sp->http_route);
    x->n++;
    bool wake = x->n >= x->o.batch_max;
    pthread_mutex_unlock(&x->mu);
    if (wake) pthread_cond_signal(&x->cv);
}

/* ---- the request ---------------------------------------------------------------------------- */

static void str_attr(ew_buf *b, bool *first, const char *key, const char *v)
{
    if (!v || !*v) return;
    ew_buf_puts(b, *first ? "" : ",");
    *first = false;
    ew_buf_puts(b, "{\"key\":");
    ew_json_write_string(b, key, strlen(key));
    ew_buf_puts(b, ",\"value\":{\"stringValue\":");
    ew_json_write_string(b, v, strlen(v));
    ew_buf_puts(b, "}}");
}

static bool zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* OTLP/HTTP JSON: ids in hex, times as decimal strings of nanoseconds, enums as numbers. */
static void span_json(ew_buf *b, const qspan *q)
{
    char t[33], s[17], p[17];
    ew_trace_id_hex(&q->ctx, t);
    ew_trace_span_hex(&q->ctx, s);
    ew_buf_printf(b, "{\"traceId\":\"%s\",\"spanId\":\"%s\"", t, s);
    if (!zero(q->parent, 8)) {
        ew_trace_ctx pc;
        memcpy(pc.span_id, q->parent, 8);
        ew_buf_printf(b, ",\"parentSpanId\":\"%s\"", ew_trace_span_hex(&pc, p));
    }
    ew_buf_puts(b, ",\"name\":");
    ew_json_write_string(b, q->name, strlen(q->name));
    ew_buf_printf(b,
                  ",\"kind\":%d,\"startTimeUnixNano\":\"%lld000\",\"endTimeUnixNano\":\"%lld000\","
                  "\"attributes\":[",
                  q->kind, (long long)q->start_us, (long long)q->end_us);
    bool first = true;
    if (q->kind == EW_SPAN_CONSUMER) str_attr(b, &first, "messaging.system", "eventwire");
    str_attr(b, &first, "cloudevents.event_id", q->event_id);
    str_attr(b, &first, "cloudevents.event_type", q->event_type);
    str_attr(b, &first, "messaging.consumer.group.name", q->group);
    str_attr(b, &first, "eventwire.handler", q->handler);
    str_attr(b, &first, "http.request.method", q->method);
    str_attr(b, &first, "http.route", q->route);
    if (q->http_status) {
        ew_buf_printf(b,
                      "%s{\"key\":\"http.response.status_code\",\"value\":{\"intValue\":\"%d\"}}",
                      first ? "" : ",", q->http_status);
    }
    ew_buf_printf(b, "],\"status\":{\"code\":%d}}", q->error ? 2 : 0);
}

static void body_json(ew_otlp *x, ew_buf *b, const qspan *spans, size_t n)
{
    ew_buf_puts(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    bool first = true;
    str_attr(b, &first, "service.name", x->service);
    ew_buf_puts(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"eventwire\"},\"spans\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) ew_buf_putc(b, ',');
        span_json(b, &spans[i]);
    }
    ew_buf_puts(b, "]}]}]}");
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* Posts one batch; true when the collector took it (2xx). */
static bool post(ew_otlp *x, CURL *c, const char *body, size_t len, char *why, size_t wn)
{
    curl_easy_reset(c);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, x->endpoint);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)x->o.timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    if (rc != CURLE_OK)
        snprintf(why, wn, "%s", curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        snprintf(why, wn, "the collector answered %ld", status);
    return rc == CURLE_OK && status >= 200 && status <= 299;
}

static void *run(void *arg)
{
    ew_otlp *x = arg;
    CURL *c = curl_easy_init();
    qspan *batch = malloc(x->o.batch_max * sizeof *batch);
    ew_buf b;
    ew_buf_init(&b);
    for (;;) {
        pthread_mutex_lock(&x->mu);
        struct timespec dl = ew__mono_deadline(x->o.interval_ms);
        while (!x->stop && x->n < x->o.batch_max)
            if (pthread_cond_timedwait(&x->cv, &x->mu, &dl) == ETIMEDOUT) break;
        size_t n = x->n < x->o.batch_max ? x->n : x->o.batch_max;
        for (size_t i = 0; batch && i < n; i++)
            batch[i] = x->q[(x->head + i) % x->o.max_queue];
        if (batch) {
            x->head = (x->head + n) % x->o.max_queue;
            x->n -= n;
        }
        bool stop = x->stop, more = x->n > 0;
        pthread_mutex_unlock(&x->mu);
        uint64_t failed0 = atomic_load_explicit(&x->failed, memory_order_relaxed);
        if (n && batch) {
            ew_buf_reset(&b);
            body_json(x, &b, batch, n);
            char why[256] = "out of memory";
            if (c && !b.oom && post(x, c, b.data, b.len, why, sizeof why)) {
                atomic_fetch_add_explicit(&x->exported, n, memory_order_relaxed);
            } else {
                atomic_fetch_add_explicit(&x->dropped, n, memory_order_relaxed);
                atomic_fetch_add_explicit(&x->failed, 1, memory_order_relaxed);
                int64_t now = ew_mono_ns();
                if (!x->last_warn_ns || now - x->last_warn_ns > 60 * 1000000000LL) {
                    x->last_warn_ns = now;
                    ew__log(&x->log, EW_LOG_WARN, "otlp", NULL,
                            "%zu spans dropped: sending them to %s failed: %s", n, x->endpoint,
                            why);
                }
            }
        }
        if (stop && more && atomic_load_explicit(&x->failed, memory_order_relaxed) > failed0) {
            /* stopping, and the collector is not taking them: the rest is dropped, not waited on */
            pthread_mutex_lock(&x->mu);
            atomic_fetch_add_explicit(&x->dropped, x->n, memory_order_relaxed);
            x->n = 0;
            pthread_mutex_unlock(&x->mu);
            more = false;
        }
        if (stop && !more) break;
    }
    ew_buf_release(&b);
    free(batch);
    if (c) curl_easy_cleanup(c);
    return NULL;
}

/* Frees what ew_otlp_new made, its thread stopped or never started. */
static void release(ew_otlp *x)
{
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x->endpoint);
    free(x->service);
    free(x->q);
    free(x);
}

int ew_otlp_new(ew_otlp **out, const ew_otlp_options *opts, ew_error *err)
{
    *out = NULL;
    if (!opts || !opts->endpoint || !*opts->endpoint)
        return ew_error_set(err, EW_EINVAL, "the OTLP exporter needs an endpoint");
    ew_otlp *x = calloc(1, sizeof *x);
    if (!x) return ew_error_set(err, EW_ENOMEM, "out of memory");
    x->o = *opts;
    if (!x->o.max_queue) x->o.max_queue = 4096;
    if (!x->o.batch_max) x->o.batch_max = 512;
    if (x->o.batch_max > x->o.max_queue) x->o.batch_max = x->o.max_queue;
    if (x->o.interval_ms <= 0) x->o.interval_ms = 1000;
    if (x->o.timeout_ms <= 0) x->o.timeout_ms = 2000;
    x->log = (ew__log_sink){opts->log, opts->log_ud};
    size_t el = strlen(opts->endpoint);
    while (el && opts->endpoint[el - 1] == '/')
        el--;
    x->endpoint = malloc(el + sizeof "/v1/traces");
    x->service = strdup(opts->service_name ? opts->service_name : "eventwire");
    x->q = calloc(x->o.max_queue, sizeof *x->q);
    if (!x->endpoint || !x->service || !x->q) {
        free(x->endpoint);
        free(x->service);
        free(x->q);
        free(x);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    memcpy(x->endpoint, opts->endpoint, el);
    memcpy(x->endpoint + el, "/v1/traces", sizeof "/v1/traces");
    x->o.endpoint = x->endpoint;
    x->o.service_name = x->service;
    pthread_mutex_init(&x->mu, NULL);
    ew__cond_init_mono(&x->cv);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (pthread_create(&x->thread, NULL, run, x)) {
        release(x);
        return ew_error_set(err, EW_ENOMEM, "cannot start the OTLP exporter's thread");
    }
    *out = x;
    return 0;
}

void ew_otlp_free(ew_otlp *x)
{
    if (!x) return;
    pthread_mutex_lock(&x->mu);
    x->stop = true;
    pthread_mutex_unlock(&x->mu);
    pthread_cond_signal(&x->cv);
    pthread_join(x->thread, NULL);
    release(x);
}

void ew_otlp_stats_get(ew_otlp *x, ew_otlp_stats *out)
{
    out->exported = atomic_load_explicit(&x->exported, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&x->dropped, memory_order_relaxed);
    out->requests_failed = atomic_load_explicit(&x->failed, memory_order_relaxed);
    pthread_mutex_lock(&x->mu);
    out->queued = x->n;
    pthread_mutex_unlock(&x->mu);
}
