/* ewctl console — a web console of the running system, served by the HTTP module on loopback:
 * the live events of the bus (server-sent events), one correlation's or trace's events as a
 * timeline, dead letters with retry and discard, sagas, subscriber groups, and charts from the
 * services' /metrics (docs/console.md). The page, its script and style are built into the
 * binary; every /api/ call needs the operator token. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include "bus/backend.h"
#include "security/keyring.h"
#include "store/handle.h"
#include "store/store_bus.h"
#include "console.h"
#include "ewctl.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/http.h"
#include "eventwire/id.h"

static const char console_usage[] =
    "usage: ewctl console [--addr ADDR] [--port PORT] [--services URL[,URL...]]\n"
    "                     [--scrape-interval SECONDS] [--decrypt]\n"
    "\n"
    "Serves a web console of the system on http://ADDR:PORT/ (default 127.0.0.1:8080; port 0\n"
    "picks a free one): the live events of the bus the environment configures (EVENT_BUS_TYPE,\n"
    "...) with filters, an event's envelope and data, every event of one correlation id or trace\n"
    "id as a timeline, dead letters with retry and discard, sagas with their transitions,\n"
    "subscriber groups and their consumer lag, and charts of publish and handle\n"
    "rates, handler p50/p99 and errors, from the services' GET /metrics scraped every few\n"
    "seconds. The services are those of --services, else those `ewctl up` started here\n"
    "(var/log). Every API call needs the operator token: CONSOLE_TOKEN, or a random one printed\n"
    "at start. The page, its script and style are in the binary: no network is needed. Stops on\n"
    "Ctrl-C. Personal fields show as encrypted; --decrypt shows the live events and timelines\n"
    "in clear, opened with the key-encryption key (EVENT_ENCRYPTION_KEY_FILE), which it needs,\n"
    "and is recorded first in the operator's audit chain.\n";

/* How far back the timeline looks in the log, in events. */
#define TIMELINE_WINDOW 200000
#define TIMELINE_MAX 1000

typedef struct console {
    char token[129];
    bool decrypt; /* --decrypt: personal fields in clear */
    ew_store *st;
    ew_audit *oplog; /* the operator's chain: retries and discards go there */
    ew_store *log;   /* the SQLite bus's log, read by the live feed's thread */
    ew_bus *bus;
    ewctl_bus ebus; /* bus is ebus.bus */
    live *feed;
    scrape *scr;
    const char *bus_type;
    int rate_step_s; /* the charts' step: the scrape interval */
} console;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Compares in time that depends on the expected token's length only. */
static bool token_ok(const char *got, const char *want)
{
    size_t n = strlen(want), m = got ? strlen(got) : 0;
    unsigned char d = m != n;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)want[i] ^ (unsigned char)(i < m ? got[i] : 0);
    return d == 0;
}

/* Every API call: the bearer token, or ?token= (EventSource cannot send headers). */
static bool authorized(const console *c, const ew_http_request *req, ew_http_response *res)
{
    const char *t = ew_http_bearer(req);
    if (!t) t = ew_http_query(req, "token");
    if (token_ok(t, c->token)) return true;
    ew_http_header_add(res, "WWW-Authenticate", "Bearer realm=\"ewctl console\"");
    ew_http_reply_error(res, 401, NULL, "the operator token is missing or wrong");
    return false;
}

static void reply_buf(ew_http_response *res, ew_buf *b)
{
    if (b->oom)
        ew_http_reply_error(res, 500, NULL, "out of memory");
    else
        ew_http_reply_raw(res, 200, b->data ? b->data : "{}", b->len);
    ew_buf_release(b);
}

static int status_of(int rc)
{
    return rc == EW_ENOTFOUND ? 404 : rc == EW_ESTATE || rc == EW_EINVAL ? 409 : 500;
}

/* ---- the page ---- */

static void get_asset(const ew_http_request *req, ew_http_response *res, void *ud)
{
    (void)ud;
    const char *path = ew_http_path(req);
    for (size_t i = 0; i < console_assets_count; i++) {
        if (strcmp(path, console_assets[i].path) == 0) {
            ew_http_header_add(res, "Cache-Control", "no-cache");
            ew_http_header_add(res, "Content-Security-Policy",
                               "default-src 'self'; img-src 'self' data:");
            ew_http_reply_body(res, 200, console_assets[i].content_type, console_assets[i].body,
                               console_assets[i].len);
            return;
        }
    }
    ew_http_reply_error(res, 404, NULL, "no such file: %s", path);
}

/* ---- /api/info ---- */

static void get_info(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    uint64_t seen, skipped;
    live_counts(c->feed, &seen, &skipped);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "bus", c->bus_type);
    ew_http_obj_str(res, "store", ew_store_backend(c->st));
    ew_http_obj_int(res, "events_seen", (int64_t)seen);
    ew_http_obj_int(res, "events_skipped", (int64_t)skipped);
    ew_http_obj_end(res);
}

/* ---- /api/stream: server-sent events ---- */

/* Each answer carries what arrived within a short wait (batched) and ends; the browser's
 * EventSource comes back at once (retry: 100) with Last-Event-ID, and goes on from there. */
static void get_stream(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    const char *last = ew_http_header(req, "Last-Event-ID");
    if (!last) last = ew_http_query(req, "after");
    uint64_t after = UINT64_MAX;
    if (last && *last) {
        char *end;
        unsigned long long v = strtoull(last, &end, 10);
        if (!*end) after = v;
    }
    live_filter f = {.type = ew_http_query(req, "type"),
                     .subject = ew_http_query(req, "subject"),
                     .correlation = ew_http_query(req, "correlation_id"),
                     .trace = ew_http_query(req, "trace_id")};
    int wait_ms = 10000; /* ?wait_ms= for API clients */
    const char *w = ew_http_query(req, "wait_ms");
    if (w && *w) {
        char *end;
        long v = strtol(w, &end, 10);
        if (*end || v < 0 || v > 10000)
            return ew_http_reply_error(res, 400, "wait_ms", "wait_ms is 0..10000");
        wait_ms = (int)v;
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "retry: 100\n\n");
    /* a new client gets its answer at once, so that it knows where it is */
    live_read(c->feed, after, &f, after == UINT64_MAX ? 0 : wait_ms, 200, &b);
    ew_http_header_add(res, "Cache-Control", "no-cache");
    if (b.oom)
        ew_http_reply_error(res, 500, NULL, "out of memory");
    else
        ew_http_reply_body(res, 200, "text/event-stream", b.data, b.len);
    ew_buf_release(&b);
}

/* ---- /api/timeline ---- */

typedef struct timeline {
    const char *corr, *trace;
    ew_buf *b;
    size_t n;
    ew_store *st; /* decrypt with its keys; NULL: as stored */
} timeline;

static int timeline_row(void *ud, const ew__store_entry *e)
{
    timeline *t = ud;
    if (!e->event) return 0;
    const char *corr = ew_event_correlation_id(e->event), *tp = ew_event_traceparent(e->event);
    bool want = t->corr ? corr && strcmp(corr, t->corr) == 0
                        : tp && strlen(tp) >= 35 && strncmp(tp + 3, t->trace, 32) == 0;
    if (!want) return 0;
    char at[EW_TIME_LEN + 1] = "";
    ew_time_format(e->recorded_us, at);
    ew_buf_printf(t->b, "%s{\"position\":%lld,\"recorded_at\":\"%s\"", t->n ? "," : "",
                  (long long)e->position, at);
    ewctl_put_str(t->b, "stream_id", e->stream_id);
    ew_buf_puts(t->b, ",\"event\":");
    ew_event *ev = t->st ? ew_event_ref(e->event) : NULL;
    char *json = NULL;
    size_t n = 0;
    if (ev && ew__store_unseal(t->st, &ev, NULL) == 0 && ew_event_encode(ev, &json, &n, NULL) == 0)
        ew_buf_append(t->b, json, n);
    else
        ew_buf_append(t->b, e->json, e->json_len);
    free(json);
    ew_event_unref(ev);
    ew_buf_putc(t->b, '}');
    return ++t->n >= TIMELINE_MAX;
}

static bool hex32(const char *s)
{
    if (!s || strlen(s) != 32) return false;
    for (int i = 0; i < 32; i++)
        if (!strchr("0123456789abcdef", s[i])) return false;
    return true;
}

static void get_timeline(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    const char *corr = ew_http_query(req, "correlation_id"),
               *trace = ew_http_query(req, "trace_id");
    if (corr && !*corr) corr = NULL;
    if (trace && !*trace) trace = NULL;
    if (!corr == !trace)
        return ew_http_reply_error(res, 400, NULL, "give correlation_id or trace_id");
    if (trace && !hex32(trace))
        return ew_http_reply_error(res, 400, "trace_id", "a trace id is 32 lowercase hex digits");
    ew_error err = {0};
    int64_t head = 0;
    ew_buf b;
    ew_buf_init(&b);
    timeline t = {.corr = corr, .trace = trace, .b = &b, .st = c->decrypt ? c->st : NULL};
    int rc = ew_store_head(c->st, &head, &err);
    int64_t from = head > TIMELINE_WINDOW ? head - TIMELINE_WINDOW : 0;
    ew_buf_printf(&b, "{\"from_position\":%lld,\"head\":%lld,\"events\":[", (long long)from,
                  (long long)head);
    if (!rc) rc = ew__store_scan(c->st, from, NULL, 0, 0, 1 << 20, timeline_row, &t, NULL, &err);
    if (rc) {
        ew_buf_release(&b);
        return ew_http_reply_error(res, 500, NULL, "%s", err.msg);
    }
    ew_buf_printf(&b, "],\"truncated\":%s}", t.n >= TIMELINE_MAX ? "true" : "false");
    reply_buf(res, &b);
}

/* ---- /api/dlq ---- */

typedef struct rows {
    ew_buf *b;
    size_t n;
} rows;

static int dlq_row(void *ud, const ew_dlq_row *r)
{
    rows *w = ud;
    if (w->n++) ew_buf_putc(w->b, ',');
    ewctl_dlq_put_row(w->b, r, 0);
    return 0;
}

static void get_dlq(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    ew_dlq_filter f = {.status = -1, .limit = 500};
    const char *status = ew_http_query(req, "status");
    if (status && *status) {
        f.status = -2;
        for (int s = EW_DLQ_PENDING; s <= EW_DLQ_DISCARDED; s++)
            if (strcmp(status, ew_dlq_status_name((ew_dlq_status)s)) == 0) f.status = s;
        if (f.status == -2)
            return ew_http_reply_error(res, 400, "status",
                                       "status is pending, retried, resolved or discarded");
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"dead_letters\":[");
    rows w = {.b = &b};
    ew_error err = {0};
    if (ew_store_dlq_list(c->st, &f, dlq_row, &w, &err)) {
        ew_buf_release(&b);
        return ew_http_reply_error(res, 500, NULL, "%s", err.msg);
    }
    ew_buf_puts(&b, "]}");
    reply_buf(res, &b);
}

static int dlq_id(const ew_http_request *req, ew_http_response *res, int64_t *id)
{
    char *end;
    long long v = strtoll(ew_http_param(req, "id"), &end, 10);
    if (*end || v < 1) {
        ew_http_reply_error(res, 400, "id", "a dead letter id is a number from 1");
        return -1;
    }
    *id = v;
    return 0;
}

static void get_dlq_one(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    int64_t id;
    if (!authorized(c, req, res) || dlq_id(req, res, &id)) return;
    ew_dlq_row row;
    ew_error err = {0};
    int rc = ew_store_dlq_get(c->st, id, &row, &err);
    if (rc) return ew_http_reply_error(res, status_of(rc), NULL, "%s", err.msg);
    ew_buf b;
    ew_buf_init(&b);
    ewctl_dlq_put_row(&b, &row, 1);
    ew_dlq_row_release(&row);
    reply_buf(res, &b);
}

static void post_dlq(const ew_http_request *req, ew_http_response *res, void *ud, bool retry)
{
    console *c = ud;
    int64_t id;
    if (!authorized(c, req, res) || dlq_id(req, res, &id)) return;
    ew_dlq_row row;
    ew_error err = {0};
    int rc = ew_store_dlq_get(c->st, id, &row, &err);
    if (rc) return ew_http_reply_error(res, status_of(rc), NULL, "%s", err.msg);
    if (retry) {
        rc = ewctl_dlq_retry_one(c->st, c->bus, &row, &err);
    } else if (row.status == EW_DLQ_RESOLVED || row.status == EW_DLQ_DISCARDED) {
        rc = ew_error_set(&err, EW_ESTATE, "dead letter %lld is %s already", (long long)id,
                          ew_dlq_status_name(row.status));
    } else {
        rc = ew_store_dlq_set_status(c->st, id, EW_DLQ_DISCARDED, &err);
    }
    if (!rc) ewctl_dlq_audit(c->oplog, retry ? "dlq.retried" : "dlq.discarded", &row);
    ew_dlq_row_release(&row);
    if (rc) return ew_http_reply_error(res, status_of(rc), NULL, "%s", err.msg);
    ew_http_obj_begin(res, 200);
    ew_http_obj_int(res, "id", id);
    ew_http_obj_str(res, "status", retry ? "retried" : "discarded");
    ew_http_obj_end(res);
}

static void post_dlq_retry(const ew_http_request *req, ew_http_response *res, void *ud)
{
    post_dlq(req, res, ud, true);
}

static void post_dlq_discard(const ew_http_request *req, ew_http_response *res, void *ud)
{
    post_dlq(req, res, ud, false);
}

/* ---- /api/sagas ---- */

static int saga_row(void *ud, const ew_saga_info *in)
{
    rows *w = ud;
    if (w->n++) ew_buf_putc(w->b, ',');
    ewctl_saga_put_info(w->b, in);
    ew_buf_putc(w->b, '}');
    return 0;
}

static void get_sagas(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    ew_saga_filter f = {.status = -1, .limit = 500, .type = ew_http_query(req, "type")};
    if (f.type && !*f.type) f.type = NULL;
    const char *status = ew_http_query(req, "status");
    if (status && *status && (f.status = ew_saga_status_parse(status)) < 0)
        return ew_http_reply_error(res, 400, "status", "no saga status '%s'", status);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"sagas\":[");
    rows w = {.b = &b};
    ew_error err = {0};
    if (ew_saga_list(c->st, &f, saga_row, &w, &err)) {
        ew_buf_release(&b);
        return ew_http_reply_error(res, 500, NULL, "%s", err.msg);
    }
    ew_buf_puts(&b, "]}");
    reply_buf(res, &b);
}

static void get_saga(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    ew_buf b;
    ew_buf_init(&b);
    ew_error err = {0};
    int rc = ewctl_saga_show_json(c->st, ew_http_param(req, "id"), NULL, NULL, &b, &err);
    if (rc) {
        ew_buf_release(&b);
        return ew_http_reply_error(res, status_of(rc), NULL, "%s", err.msg);
    }
    reply_buf(res, &b);
}

/* ---- /api/groups ---- */

static int group_row(void *ud, const ew_row *r)
{
    rows *w = ud;
    if (r->ncols < 4) return 0;
    ew_buf_printf(w->b, "%s{\"group\":", w->n++ ? "," : "");
    ew_json_write_string(w->b, r->values[0] ? r->values[0] : "",
                         strlen(r->values[0] ? r->values[0] : ""));
    ew_buf_printf(w->b, ",\"position\":%lld", r->values[1] ? atoll(r->values[1]) : 0LL);
    ewctl_put_str(w->b, "owner", r->values[2]);
    ewctl_put_str(w->b, "updated_at", r->values[3]);
    ew_buf_putc(w->b, '}');
    return 0;
}

/* Every group's consumer lag as the bus records it (ewctl metrics' "groups"); on the SQLite
 * bus also where each group is in the log and which consumer holds it. */
static void get_groups(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"bus\":");
    ew_json_write_string(&b, c->bus_type, strlen(c->bus_type));
    ew_buf_puts(&b, ",\"known\":true,");
    ew_error err = {0};
    int rc = ewctl_put_group_lags(c->bus, c->st, NULL, 0, &b, &err);
    if (!rc && strcmp(c->bus_type, "sqlite") == 0 &&
        strcmp(ew_store_backend(c->st), "sqlite") == 0) {
        int64_t head = 0;
        ew_txn *t = NULL;
        rows w = {.b = &b};
        ew_buf_puts(&b, ",\"positions\":[");
        rc = ew_store_head(c->st, &head, &err);
        if (!rc) rc = ew_store_begin(c->st, &t, &err);
        if (!rc) {
            rc = ew_txn_query(t,
                              "SELECT group_name, position, owner, updated_at FROM "
                              "event_store.bus_groups ORDER BY group_name",
                              NULL, 0, group_row, &w, &err);
            ew_txn_rollback(t);
        }
        ew_buf_printf(&b, "],\"head\":%lld", (long long)head);
    }
    if (rc) {
        ew_buf_release(&b);
        return ew_http_reply_error(res, rc == EW_ECONNECT ? 503 : 500, NULL, "%s", err.msg);
    }
    ew_buf_putc(&b, '}');
    reply_buf(res, &b);
}

/* ---- /api/metrics ---- */

static void get_metrics(const ew_http_request *req, ew_http_response *res, void *ud)
{
    console *c = ud;
    if (!authorized(c, req, res)) return;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"scraped\":");
    scrape_json(c->scr, &b);
    ew_buf_puts(&b, ",\"bus\":");
    live_rates_json(c->feed, c->rate_step_s, &b);
    ew_buf_putc(&b, '}');
    reply_buf(res, &b);
}

/* ---- the command ---- */

/* The services' URLs: --services, else the last "NAME listening on URL" of each log in var/log. */
static size_t find_services(const char *list, char **urls, size_t max)
{
    size_t n = 0;
    if (list) {
        char *copy = strdup(list), *save = NULL;
        for (char *u = strtok_r(copy, ",", &save); u && n < max; u = strtok_r(NULL, ",", &save)) {
            size_t len = strlen(u);
            while (len && u[len - 1] == '/')
                u[--len] = '\0';
            if (len) urls[n++] = strdup(u);
        }
        free(copy);
        return n;
    }
    DIR *d = opendir("var/log");
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < max) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".log") != 0) continue;
        char path[512], line[1024], found[512] = "";
        snprintf(path, sizeof path, "var/log/%s", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        while (fgets(line, sizeof line, f)) {
            const char *at = strstr(line, " listening on http");
            if (at) snprintf(found, sizeof found, "%.*s", (int)strcspn(at + 14, " \r\n"), at + 14);
        }
        fclose(f);
        if (found[0]) urls[n++] = strdup(found);
    }
    closedir(d);
    return n;
}

static void random_token(char *out)
{
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        char id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        memcpy(r, id + 20, sizeof r); /* never reached on Linux; still not empty */
    }
    for (size_t i = 0; i < sizeof r; i++)
        sprintf(out + 2 * i, "%02x", r[i]);
}

typedef struct route {
    const char *route;
    ew_http_handler fn;
} route;

static const route routes[] = {
    {"GET /", get_asset},
    {"GET /console.js", get_asset},
    {"GET /console.css", get_asset},
    {"GET /api/info", get_info},
    {"GET /api/stream", get_stream},
    {"GET /api/timeline", get_timeline},
    {"GET /api/dlq", get_dlq},
    {"GET /api/dlq/{id}", get_dlq_one},
    {"POST /api/dlq/{id}/retry", post_dlq_retry},
    {"POST /api/dlq/{id}/discard", post_dlq_discard},
    {"GET /api/sagas", get_sagas},
    {"GET /api/sagas/{id}", get_saga},
    {"GET /api/groups", get_groups},
    {"GET /api/metrics", get_metrics},
};

int ewctl_console(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(console_usage, stdout);
        return 0;
    }
    const char *addr = "127.0.0.1", *services = NULL;
    long port = 8080, interval_s = 5;
    bool decrypt = false;
    for (int i = 0; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--decrypt") == 0) {
            decrypt = true;
            continue;
        }
        if (i + 1 >= argc) return ewctl_fail(2, "unknown option '%s'", opt);
        const char *v = argv[++i];
        char *end;
        if (strcmp(opt, "--addr") == 0) {
            addr = v;
        } else if (strcmp(opt, "--port") == 0) {
            port = strtol(v, &end, 10);
            if (*end || port < 0 || port > 65535) return ewctl_fail(2, "--port takes 0..65535");
        } else if (strcmp(opt, "--services") == 0) {
            services = v;
        } else if (strcmp(opt, "--scrape-interval") == 0) {
            interval_s = strtol(v, &end, 10);
            if (*end || interval_s < 1 || interval_s > 3600)
                return ewctl_fail(2, "--scrape-interval takes 1..3600 seconds");
        } else {
            return ewctl_fail(2, "unknown option '%s'", opt);
        }
    }
    console c = {.decrypt = decrypt};
    ew_error err = {0};
    ew_config *cfg = NULL;
    int status = 1;
    char *urls[64];
    size_t nurls = 0;
    ew_http_server *http = NULL;
    if (ewctl_config_load(&cfg, &err)) {
        ewctl_fail(1, "%s", err.msg);
        goto fail_config;
    }
    const char *configured = ew_config_get(cfg, "CONSOLE_TOKEN");
    if (configured && *configured)
        snprintf(c.token, sizeof c.token, "%s", configured);
    else
        random_token(c.token);
    if (ewctl_open_store_or_make(&c.st, true)) goto fail_config;
    if (ewctl_oplog_open(c.st, &c.oplog)) goto fail_store;
    if (live_new(&c.feed)) {
        ewctl_fail(1, "out of memory");
        goto fail_store;
    }
    if (ewctl_bus_open(&c.ebus, cfg, NULL, NULL, false)) goto fail_bus;
    c.bus = c.ebus.bus;
    c.bus_type = ew_bus_backend(c.bus);
    /* personal fields as the wire carries them, unless --decrypt, and then only with the key */
    if (!c.decrypt) {
        ew__bus_keep_encrypted(c.bus);
    } else if ((ew__bus_keyring(c.bus) && ew__keyring_load(ew__bus_keyring(c.bus), &err)) ||
               (ew__store_keyring(c.st) && ew__keyring_load(ew__store_keyring(c.st), &err))) {
        ewctl_fail(1, "--decrypt: %s", err.msg);
        goto fail_bus;
    } else if (ew_audit_append(c.oplog, "operator", "events.decrypted", NULL, "{\"console\":true}",
                               NULL, &err)) {
        /* personal data in clear for as long as it runs: recorded first, or not shown */
        ewctl_fail(1, "--decrypt: the audit chain cannot record it: %s", err.msg);
        goto fail_bus;
    }
    int rc;
    if (strcmp(c.bus_type, "sqlite") == 0 && strcmp(ew_store_backend(c.st), "sqlite") == 0) {
        /* The log is the bus: read it, as a subscriber group would, but without a group's
         * writes (its position, its lease), which would wait for the publishers' locks and
         * make them wait for ours. */
        if (ewctl_open_store_or_make(&c.log, true)) goto fail_bus;
        rc = live_follow(c.feed, c.log, c.decrypt);
        if (rc) ew_error_set(&err, EW_ENOMEM, "cannot start a thread");
    } else {
        /* A group of its own that goes when the console ends, one worker, no inbox, never a
         * retry: it copies each event and goes on. */
        char group[64], id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        snprintf(group, sizeof group, "ewctl-console-%.12s", id + 24);
        ew_subscribe_opts so = {.group = group,
                                .name = "console",
                                .ephemeral = true,
                                .no_inbox = true,
                                .max_attempts = 1};
        rc = ew_bus_subscribe(c.bus, "#", live_handle, c.feed, &so, &err);
    }
    if (rc || ew_bus_start(c.bus, &err)) {
        ewctl_fail(1, "cannot read the bus: %s", err.msg);
        goto fail_bus;
    }
    c.rate_step_s = (int)interval_s;
    nurls = find_services(services, urls, 64);
    if (scrape_start(&c.scr, urls, nurls, (int)interval_s * 1000)) {
        ewctl_fail(1, "out of memory");
        goto fail_bus;
    }
    ew_http_options ho = {.addr = addr, .port = (int)port, .stop_timeout_ms = 2000};
    if (ew_http_new(&http, &ho, &err)) {
        ewctl_fail(1, "%s", err.msg);
        goto fail_scrape;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (ew_http_route(http, routes[i].route, 0, routes[i].fn, &c, &err)) {
            ewctl_fail(1, "%s", err.msg);
            goto fail_http;
        }
    }
    if (ew_http_start(http, &err)) {
        ewctl_fail(1, "cannot listen on %s:%ld: %s", addr, port, err.msg);
        goto fail_http;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bool v6 = strchr(addr, ':') != NULL;
    printf("ewctl console listening on http://%s%s%s:%d/\n", v6 ? "[" : "", addr, v6 ? "]" : "",
           ew_http_port(http));
    if (configured && *configured)
        printf("operator token: the value of CONSOLE_TOKEN\n");
    else
        printf("operator token: %s\n", c.token);
    printf("bus %s, store %s, %zu service(s) scraped\n", c.bus_type, ew_store_backend(c.st), nurls);
    fflush(stdout);
    while (!interrupted)
        usleep(100 * 1000);
    status = 0;
    live_stop(c.feed); /* the SSE answers waiting end now */
    ew_http_stop(http);
fail_http:
    ew_http_free(http);
fail_scrape:
    scrape_free(c.scr);
fail_bus:
    ewctl_bus_close(&c.ebus);
    live_free(c.feed); /* stops the log's reader first */
    if (c.log) ew_store_close(c.log);
fail_store:
    ew_audit_close(c.oplog);
    ew_store_close(c.st);
fail_config:
    ew_config_free(cfg);
    for (size_t i = 0; i < nurls; i++)
        free(urls[i]);
    return status;
}
