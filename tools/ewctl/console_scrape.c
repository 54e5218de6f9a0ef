/* ewctl console: the charts' figures. A thread scrapes each service's GET /metrics (Prometheus
 * text) every few seconds, sums what the charts draw (events published, handled by result, the
 * handler duration histogram) and keeps the last SCRAPE_HISTORY samples; the page asks for rates
 * and quantiles between consecutive samples, worked out here as Prometheus's rate() and
 * histogram_quantile() would. */
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "console.h"
#include "core/mono.h"
#include "core/json.h"
#include "eventwire/clock.h"

#define SCRAPE_HISTORY 120 /* 10 minutes at the default 5 s */
#define SCRAPE_MAX_BYTES (8 << 20)

typedef struct sample {
    int64_t t_us;
    scrape_figures fig;
    unsigned up; /* services that answered */
} sample;

struct scrape {
    char **urls;
    size_t nurls;
    int interval_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, started;
    sample hist[SCRAPE_HISTORY];
    size_t n, next;
    bool *up;
};

/* ---- the text format ---- */

static bool name_is(const char *line, const char *name, const char **rest)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0 || (line[n] != '{' && line[n] != ' ')) return false;
    *rest = line + n;
    return true;
}

/* The value of label `label` in the {...} at p into out; false when it has none. */
static bool label(const char *p, const char *label, char *out, size_t n)
{
    if (*p != '{') return false;
    const char *end = strchr(p, '}');
    char key[64];
    int kl = snprintf(key, sizeof key, "%s=\"", label);
    for (const char *q = p + 1; q && q < end; q = strchr(q, ',') ? strchr(q, ',') + 1 : NULL) {
        if (strncmp(q, key, (size_t)kl) == 0) {
            const char *v = q + kl, *ve = strchr(v, '"');
            if (!ve) return false;
            snprintf(out, n, "%.*s", (int)(ve - v), v);
            return true;
        }
    }
    return false;
}

static double value_of(const char *rest)
{
    const char *sp = rest;
    if (*sp == '{') {
        /* label values may hold spaces and braces in quotes: find the closing brace outside */
        bool q = false;
        for (sp++; *sp && (q || *sp != '}'); sp++) {
            if (*sp == '\\' && sp[1])
                sp++;
            else if (*sp == '"')
                q = !q;
        }
        if (*sp) sp++;
    }
    double v = strtod(sp, NULL);
    return isfinite(v) ? v : 0;
}

void scrape_parse(const char *text, scrape_figures *f)
{
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n'), *rest;
        if (*line != '#') {
            char buf[64];
            if (name_is(line, "eventwire_events_published_total", &rest)) {
                f->published += value_of(rest);
            } else if (name_is(line, "eventwire_events_handled_total", &rest) &&
                       label(rest, "result", buf, sizeof buf)) {
                double v = value_of(rest);
                if (strcmp(buf, "ok") == 0) f->handled_ok += v;
                if (strcmp(buf, "retry") == 0) f->handled_retry += v;
                if (strcmp(buf, "fail") == 0) f->handled_fail += v;
            } else if (name_is(line, "eventwire_handler_duration_seconds_bucket", &rest) &&
                       label(rest, "le", buf, sizeof buf)) {
                double le = strcmp(buf, "+Inf") == 0 ? INFINITY : strtod(buf, NULL);
                size_t i = 0;
                while (i < f->nbuckets && f->le[i] != le)
                    i++;
                if (i == f->nbuckets && i < 32) {
                    /* keep the bounds sorted */
                    while (i > 0 && f->le[i - 1] > le) {
                        f->le[i] = f->le[i - 1];
                        f->count[i] = f->count[i - 1];
                        i--;
                    }
                    f->le[i] = le;
                    f->count[i] = 0;
                    f->nbuckets++;
                }
                if (i < 32 && f->le[i] == le) f->count[i] += value_of(rest);
            }
        }
        line = nl ? nl + 1 : NULL;
    }
}

/* ---- the thread ---- */

typedef struct body {
    char *data;
    size_t len;
} body;

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    size_t len = size * n;
    if (b->len + len > SCRAPE_MAX_BYTES) return 0;
    char *nd = realloc(b->data, b->len + len + 1);
    if (!nd) return 0;
    memcpy(nd + b->len, p, len);
    b->len += len;
    nd[b->len] = '\0';
    b->data = nd;
    return len;
}

static bool scrape_one(CURL *c, const char *base, scrape_figures *f)
{
    char url[1024];
    snprintf(url, sizeof url, "%s/metrics", base);
    body b = {0};
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    long status = 0;
    bool ok = curl_easy_perform(c) == CURLE_OK &&
              curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200 &&
              b.data;
    if (ok) scrape_parse(b.data, f);
    free(b.data);
    return ok;
}

static void *run(void *ud)
{
    scrape *s = ud;
    CURL *c = curl_easy_init();
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        pthread_mutex_unlock(&s->mu);
        sample smp = {.t_us = ew_now_us()};
        bool up[64] = {0};
        for (size_t i = 0; c && i < s->nurls && i < 64; i++)
            if ((up[i] = scrape_one(c, s->urls[i], &smp.fig))) smp.up++;
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->nurls && i < 64; i++)
            s->up[i] = up[i];
        s->hist[s->next] = smp;
        s->next = (s->next + 1) % SCRAPE_HISTORY;
        if (s->n < SCRAPE_HISTORY) s->n++;
        struct timespec ts = ew__mono_deadline(s->interval_ms);
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0) {
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (c) curl_easy_cleanup(c);
    return NULL;
}

int scrape_start(scrape **out, char **urls, size_t nurls, int interval_ms)
{
    scrape *s = calloc(1, sizeof *s);
    if (!s || !(s->up = calloc(nurls + 1, sizeof *s->up))) {
        free(s);
        return -1;
    }
    s->urls = urls;
    s->nurls = nurls;
    s->interval_ms = interval_ms;
    pthread_mutex_init(&s->mu, NULL);
    ew__cond_init_mono(&s->cv);
    s->started = pthread_create(&s->thread, NULL, run, s) == 0;
    *out = s;
    return 0;
}

void scrape_free(scrape *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started) pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->up);
    free(s);
}

/* histogram_quantile over the bucket increases between two samples; NAN without calls. */
static double quantile(double q, const scrape_figures *a, const scrape_figures *b)
{
    if (a->nbuckets != b->nbuckets || b->nbuckets < 2) return NAN;
    double d[32], total;
    for (size_t i = 0; i < b->nbuckets; i++)
        d[i] = b->count[i] - a->count[i];
    total = d[b->nbuckets - 1];
    if (total <= 0) return NAN;
    double rank = q * total;
    for (size_t i = 0; i < b->nbuckets; i++) {
        if (d[i] >= rank) {
            if (isinf(b->le[i])) return b->le[i - 1];
            double lo = i ? b->le[i - 1] : 0, below = i ? d[i - 1] : 0;
            double in = d[i] - below;
            return in > 0 ? lo + (b->le[i] - lo) * (rank - below) / in : b->le[i];
        }
    }
    return NAN;
}

static void put_num(ew_buf *b, const char *key, double v)
{
    if (isfinite(v))
        ew_buf_printf(b, ",\"%s\":%.6g", key, v);
    else
        ew_buf_printf(b, ",\"%s\":null", key);
}

void scrape_json(scrape *s, ew_buf *b)
{
    pthread_mutex_lock(&s->mu);
    ew_buf_printf(b, "{\"interval_ms\":%d,\"services\":[", s->interval_ms);
    for (size_t i = 0; i < s->nurls; i++) {
        ew_buf_printf(b, "%s{\"url\":", i ? "," : "");
        ew_json_write_string(b, s->urls[i], strlen(s->urls[i]));
        ew_buf_printf(b, ",\"up\":%s}", s->up[i] ? "true" : "false");
    }
    ew_buf_puts(b, "],\"samples\":[");
    size_t first = (s->next + SCRAPE_HISTORY - s->n) % SCRAPE_HISTORY;
    for (size_t k = 1; k < s->n; k++) {
        const sample *a = &s->hist[(first + k - 1) % SCRAPE_HISTORY],
                     *c = &s->hist[(first + k) % SCRAPE_HISTORY];
        double dt = (double)(c->t_us - a->t_us) / 1e6;
        if (dt <= 0) continue;
        /* a counter that went down was reset (a service restarted): no rate for that step */
        double pub = c->fig.published - a->fig.published,
               ok = c->fig.handled_ok - a->fig.handled_ok,
               err = c->fig.handled_fail + c->fig.handled_retry - a->fig.handled_fail -
                     a->fig.handled_retry;
        ew_buf_printf(b, "%s{\"t\":%lld", k > 1 ? "," : "", (long long)(c->t_us / 1000));
        put_num(b, "publish_rate", pub >= 0 ? pub / dt : NAN);
        put_num(b, "handle_rate", ok >= 0 ? ok / dt : NAN);
        put_num(b, "error_rate", err >= 0 ? err / dt : NAN);
        put_num(b, "p50_ms", quantile(0.5, &a->fig, &c->fig) * 1000);
        put_num(b, "p99_ms", quantile(0.99, &a->fig, &c->fig) * 1000);
        ew_buf_printf(b, ",\"up\":%u}", c->up);
    }
    ew_buf_puts(b, "]}");
    pthread_mutex_unlock(&s->mu);
}
