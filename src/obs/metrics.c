/* eventwire — metrics (eventwire/metrics.h): gathered at each scrape from what the bus, the
 * dispatcher, the HTTP server and the stores keep, written by prom.c. */
#include "eventwire/metrics.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include "core/buf.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "obs/prom.h"

struct ew_metrics {
    ew_bus *bus;
    ew_http_server *http;
    ew_store *outbox, *events;
    atomic_uint_fast64_t scrape_errors;
    atomic_size_t last_len; /* the last scrape's size: the next one starts with that much room */
};

int ew_metrics_new(ew_metrics **out, ew_error *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : ew_error_set(err, EW_ENOMEM, "out of memory");
}

void ew_metrics_free(ew_metrics *m)
{
    free(m);
}

void ew_metrics_set_bus(ew_metrics *m, ew_bus *bus)
{
    m->bus = bus;
}
void ew_metrics_set_http(ew_metrics *m, ew_http_server *http)
{
    m->http = http;
}
void ew_metrics_set_outbox(ew_metrics *m, ew_store *outbox)
{
    m->outbox = outbox;
}
void ew_metrics_set_event_store(ew_metrics *m, ew_store *events)
{
    m->events = events;
}

/* ---- the bus ------------------------------------------------------------------------------ */

/* Handler durations: the dispatcher's log2 buckets (upper bound 2^b ns) from 2^14 ns (16 µs) to
 * 2^34 ns (17 s), every other one, as Prometheus buckets in seconds. */
#define HB_FIRST 14
#define HB_STEP 2
#define HB_N 11

/* Every subscription's stats, taken once per scrape: *n of them, malloc'ed (NULL when none, or
 * out of memory: then b->oom is set). */
static ew_handler_stats *all_stats(ew_bus *bus, size_t *n, ew_buf *b)
{
    ew_bus_stats bs;
    ew_bus_stats_get(bus, &bs);
    *n = 0;
    if (!bs.subscriptions) return NULL;
    ew_handler_stats *hs = malloc(bs.subscriptions * sizeof *hs);
    if (!hs) {
        b->oom = 1;
        return NULL;
    }
    while (*n < bs.subscriptions && ew_bus_handler_stats(bus, *n, &hs[*n]) == 0)
        (*n)++;
    return hs;
}

static void bus_metrics(ew_buf *b, ew_bus *bus, const ew_handler_stats *hs, size_t nh)
{
    const char *backend = ew_bus_backend(bus);
    ew__prom_family(b, "eventwire_events_published_total", "counter",
                    "Events this process published, by type and backend.");
    for (int t = 1; t < EW_T__COUNT; t++) {
        uint64_t n = ew_bus_published_count(bus, (ew_type_id)t);
        if (!n) continue;
        ew__label l[] = {{"type", ew_catalog_get((ew_type_id)t)->type}, {"backend", backend}, {0}};
        ew__prom_sample_u64(b, "eventwire_events_published_total", l, n);
    }
    ew_bus_stats bs;
    ew_bus_stats_get(bus, &bs);
    ew__prom_family(b, "eventwire_publish_errors_total", "counter",
                    "Publish calls that failed, by backend.");
    ew__prom_sample_u64(b, "eventwire_publish_errors_total",
                        (ew__label[]){{"backend", backend}, {0}}, bs.publish_errors);
    ew__prom_family(b, "eventwire_events_pending", "gauge",
                    "Published or follow-up events this process has not finished with.");
    ew__prom_sample_u64(b, "eventwire_events_pending", NULL, bs.pending);

    ew__prom_family(b, "eventwire_events_handled_total", "counter",
                    "Deliveries to handlers by group, handler, type and result: ok (handled), "
                    "retry (delivered again), fail (dead-lettered).");
    for (size_t i = 0; i < nh; i++) {
        if (!hs[i].handled && !hs[i].retried && !hs[i].dead_lettered) continue;
        for (int t = 1; t < EW_T__COUNT; t++) {
            ew_handler_type_stats ts;
            if (ew_bus_handler_type_stats(bus, i, (ew_type_id)t, &ts)) continue;
            if (!ts.handled && !ts.retried && !ts.dead_lettered) continue;
            const char *ty = ew_catalog_get((ew_type_id)t)->type;
            struct {
                const char *result;
                uint64_t n;
            } r[] = {{"ok", ts.handled}, {"retry", ts.retried}, {"fail", ts.dead_lettered}};
            for (int k = 0; k < 3; k++) {
                ew__label l[] = {{"group", hs[i].group},
                                 {"handler", hs[i].name},
                                 {"type", ty},
                                 {"result", r[k].result},
                                 {0}};
                ew__prom_sample_u64(b, "eventwire_events_handled_total", l, r[k].n);
            }
        }
    }
    ew__prom_family(b, "eventwire_events_duplicate_total", "counter",
                    "Deliveries the inbox skipped because the handler had done them, by group and "
                    "handler.");
    for (size_t i = 0; i < nh; i++) {
        ew__label l[] = {{"group", hs[i].group}, {"handler", hs[i].name}, {0}};
        ew__prom_sample_u64(b, "eventwire_events_duplicate_total", l, hs[i].duplicates);
    }
    ew__prom_family(b, "eventwire_handler_queue_depth", "gauge",
                    "Events waiting in this process for a handler, by group and handler.");
    for (size_t i = 0; i < nh; i++) {
        ew__label l[] = {{"group", hs[i].group}, {"handler", hs[i].name}, {0}};
        ew__prom_sample_u64(b, "eventwire_handler_queue_depth", l, hs[i].queue_depth);
    }
    double bounds[HB_N];
    for (int k = 0; k < HB_N; k++)
        bounds[k] = (double)((uint64_t)1 << (HB_FIRST + HB_STEP * k)) / 1e9;
    ew__prom_buckets bk;
    ew__prom_buckets_init(&bk, bounds, HB_N);
    ew__prom_family(
        b, "eventwire_handler_duration_seconds", "histogram",
        "Time a worker spent on each handler call (the inbox, the handler, its follow-up "
        "events), by group and handler.");
    for (size_t i = 0; i < nh; i++) {
        uint64_t counts[HB_N + 1] = {0};
        for (int bkt = 0; bkt < EW_HANDLER_HIST_BUCKETS; bkt++) {
            int k = 0; /* the first bound at or above 2^bkt ns */
            while (k < HB_N && HB_FIRST + HB_STEP * k < bkt)
                k++;
            counts[k] += hs[i].time_hist[bkt];
        }
        ew__label l[] = {{"group", hs[i].group}, {"handler", hs[i].name}, {0}};
        ew__prom_histogram(b, "eventwire_handler_duration_seconds", l, &bk, counts,
                           (double)hs[i].time_total_ns / 1e9);
    }
}

/* ---- consumer lag ------------------------------------------------------------------------- */

/* The groups this bus consumes for, each once, and their lag as ew_bus_lag() found it. */
typedef struct lagset {
    const char **groups; /* borrowed from the bus's handler stats */
    uint64_t *lag;
    bool *known;
    size_t n;
} lagset;

static int lag_take(void *ud, const char *group, uint64_t lag)
{
    lagset *ls = ud;
    for (size_t i = 0; i < ls->n; i++)
        if (strcmp(ls->groups[i], group) == 0) {
            ls->lag[i] = lag;
            ls->known[i] = true;
        }
    return 0;
}

/* eventwire_consumer_lag for the groups of this process's subscriptions, as the backend records
 * it: one ew_bus_lag() call for all of them where the backend lists its groups, one per group
 * where it does not. A group the backend could not answer for is left out and counted as a
 * scrape error; a backend that keeps no lag (Redis Pub/Sub) reports none. */
static void lag_metrics(ew_metrics *m, ew_buf *b, ew_bus *bus, const ew_handler_stats *hs,
                        size_t nh)
{
    if (!nh) return;
    lagset ls = {0};
    ls.groups = calloc(nh, sizeof *ls.groups);
    ls.lag = calloc(nh, sizeof *ls.lag);
    ls.known = calloc(nh, sizeof *ls.known);
    if (!ls.groups || !ls.lag || !ls.known) {
        b->oom = 1;
        goto out;
    }
    for (size_t i = 0; i < nh; i++) {
        size_t k = ls.n;
        /* subscriptions of a group mostly come together: look from the last one back */
        while (k > 0 && strcmp(ls.groups[k - 1], hs[i].group) != 0)
            k--;
        if (k == 0) ls.groups[ls.n++] = hs[i].group;
    }
    ew_error e = {0};
    int rc = ls.n > 1 ? ew_bus_lag(bus, NULL, lag_take, &ls, &e) : EW_ENOTSUP;
    if (rc == EW_ENOTSUP) {
        for (size_t i = 0; i < ls.n; i++) {
            int r = ew_bus_lag(bus, ls.groups[i], lag_take, &ls, &e);
            if (r && r != EW_ENOTSUP)
                atomic_fetch_add_explicit(&m->scrape_errors, 1, memory_order_relaxed);
        }
    } else if (rc) {
        atomic_fetch_add_explicit(&m->scrape_errors, 1, memory_order_relaxed);
    }
    ew__prom_family(b, "eventwire_consumer_lag", "gauge",
                    "Events published to a subscriber group and not yet acknowledged by it, as "
                    "the backend records it, by group and backend.");
    for (size_t i = 0; i < ls.n; i++) {
        if (!ls.known[i]) continue;
        ew__label l[] = {{"group", ls.groups[i]}, {"backend", ew_bus_backend(bus)}, {0}};
        ew__prom_sample_u64(b, "eventwire_consumer_lag", l, ls.lag[i]);
    }
out:
    free(ls.groups);
    free(ls.lag);
    free(ls.known);
}

/* ---- HTTP --------------------------------------------------------------------------------- */

static void http_metrics(ew_buf *b, ew_http_server *http)
{
    ew_http_stats *st = malloc(sizeof *st);
    if (!st) {
        b->oom = 1;
        return;
    }
    size_t n = ew_http_route_count(http);
    ew__prom_family(b, "eventwire_http_requests_total", "counter",
                    "HTTP requests answered, by method, route and status.");
    for (size_t i = 0; i < n; i++) {
        if (ew_http_route_stats(http, i, st)) continue;
        for (int k = 0; k < 500; k++) {
            if (!st->by_status[k]) continue;
            char status[8];
            snprintf(status, sizeof status, "%d", k + 100);
            ew__label l[] = {{"method", st->method}, {"route", st->route}, {"status", status}, {0}};
            ew__prom_sample_u64(b, "eventwire_http_requests_total", l, st->by_status[k]);
        }
    }
    ew__prom_buckets bk;
    ew__prom_buckets_init(&bk, ew_http_duration_bounds, EW_HTTP_DURATION_BUCKETS);
    ew__prom_family(b, "eventwire_http_request_duration_seconds", "histogram",
                    "Time from a request's arrival to its answer, by method and route.");
    for (size_t i = 0; i < n; i++) {
        if (ew_http_route_stats(http, i, st) || !st->count) continue;
        ew__label l[] = {{"method", st->method}, {"route", st->route}, {0}};
        ew__prom_histogram(b, "eventwire_http_request_duration_seconds", l, &bk, st->duration,
                           st->duration_sum_s);
    }
    free(st);
}

/* ---- the stores --------------------------------------------------------------------------- */

typedef struct rows {
    ew_buf *b;
    const char *name;
    const char *label1, *label2; /* names of the first one or two columns; the last is the value */
} rows;

static int row_sample(void *ud, const ew_row *row)
{
    rows *r = ud;
    size_t nl = r->label2 ? 2 : r->label1 ? 1 : 0;
    if (row->ncols < nl + 1 || !row->values[nl]) return 0;
    ew__label l[3] = {{0}};
    if (nl >= 1) l[0] = (ew__label){r->label1, row->values[0] ? row->values[0] : ""};
    if (nl >= 2) l[1] = (ew__label){r->label2, row->values[1] ? row->values[1] : ""};
    ew__prom_sample(r->b, r->name, nl ? l : NULL, strtod(row->values[nl], NULL));
    return 0;
}

/* Runs one read-only query and writes each row as a sample of name. */
static int query(ew_metrics *m, ew_store *st, ew_buf *b, const char *sql, const char *name,
                 const char *label1, const char *label2)
{
    ew_txn *t;
    ew_error e = {0};
    int rc = ew_store_begin(st, &t, &e);
    if (rc) goto out;
    rows r = {b, name, label1, label2};
    rc = ew_txn_query(t, sql, NULL, 0, row_sample, &r, &e);
    ew_txn_rollback(t);
out:
    if (rc) atomic_fetch_add_explicit(&m->scrape_errors, 1, memory_order_relaxed);
    return rc;
}

static int is_postgres(ew_store *st)
{
    return strcmp(ew_store_backend(st), "sqlite") != 0;
}

static void outbox_metrics(ew_metrics *m, ew_buf *b)
{
    ew__prom_family(b, "eventwire_outbox_pending", "gauge",
                    "Events written to the outbox and not yet published.");
    query(m, m->outbox, b, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL",
          "eventwire_outbox_pending", NULL, NULL);
    ew__prom_family(b, "eventwire_outbox_oldest_age_seconds", "gauge",
                    "Age of the oldest event in the outbox not yet published; 0 when none.");
    query(m, m->outbox, b,
          is_postgres(m->outbox)
              ? "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) "
                "FROM event_store.outbox WHERE sent_at IS NULL"
              : "SELECT COALESCE((julianday('now') - julianday(min(created_at))) * 86400.0, 0) "
                "FROM event_store.outbox WHERE sent_at IS NULL",
          "eventwire_outbox_oldest_age_seconds", NULL, NULL);
}

static void event_store_metrics(ew_metrics *m, ew_buf *b)
{
    ew__prom_family(b, "eventwire_dead_letters", "gauge",
                    "Dead letters in the event store, by status (pending, retried, resolved, "
                    "discarded).");
    query(m, m->events, b,
          "SELECT status, count(*) FROM event_store.dead_letter_queue GROUP BY status",
          "eventwire_dead_letters", "status", NULL);
    ew__prom_family(b, "eventwire_sagas", "gauge", "Saga instances by type and state.");
    query(m, m->events, b,
          "SELECT saga_type, status, count(*) FROM event_store.sagas GROUP BY saga_type, status",
          "eventwire_sagas", "type", "state");
    ew__prom_family(b, "eventwire_saga_deadlines_missed_total", "counter",
                    "Saga steps and instances whose deadline passed, by saga type.");
    query(m, m->events, b,
          "SELECT s.saga_type, count(*) FROM event_store.saga_transitions t "
          "JOIN event_store.sagas s ON s.id = t.saga_id WHERE t.event_id IS NULL "
          "GROUP BY s.saga_type",
          "eventwire_saga_deadlines_missed_total", "type", NULL);
}

/* ---- the process -------------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t k = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[k] = '\0';
    return 0;
}

static void process_metrics(ew_buf *b)
{
    long page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    unsigned long long vsize_pages = 0, rss_pages = 0;
    if (read_file("/proc/self/statm", buf, sizeof buf) == 0 &&
        sscanf(buf, "%llu %llu", &vsize_pages, &rss_pages) == 2) {
        ew__prom_family(b, "process_resident_memory_bytes", "gauge", "Resident memory size.");
        ew__prom_sample(b, "process_resident_memory_bytes", NULL, (double)rss_pages * page);
        ew__prom_family(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size.");
        ew__prom_sample(b, "process_virtual_memory_bytes", NULL, (double)vsize_pages * page);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        ew__prom_family(b, "process_cpu_seconds_total", "counter",
                        "User and system CPU time spent.");
        ew__prom_sample(b, "process_cpu_seconds_total", NULL, cpu);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long fds = -1; /* the directory's own descriptor is among them */
        while (readdir(d))
            fds++;
        closedir(d);
        fds -= 2; /* "." and ".." */
        ew__prom_family(b, "process_open_fds", "gauge", "Open file descriptors.");
        ew__prom_sample(b, "process_open_fds", NULL, (double)(fds > 0 ? fds : 0));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        ew__prom_family(b, "process_max_fds", "gauge", "Limit of open file descriptors.");
        ew__prom_sample(b, "process_max_fds", NULL, (double)rl.rlim_cur);
    }
    /* start time: field 22 of /proc/self/stat (clock ticks after boot) + btime of /proc/stat */
    unsigned long long start_ticks = 0, btime = 0;
    if (read_file("/proc/self/stat", buf, sizeof buf) == 0) {
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
        int field = 2;
        for (; p && *p && field < 22; p++)
            if (*p == ' ') field++;
        if (p && field == 22) start_ticks = strtoull(p, NULL, 10);
    }
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %llu", &btime) == 1) break;
        fclose(f);
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (btime && start_ticks && hz > 0) {
        ew__prom_family(b, "process_start_time_seconds", "gauge",
                        "Start time of the process since the epoch, in seconds.");
        ew__prom_sample(b, "process_start_time_seconds", NULL,
                        (double)btime + (double)start_ticks / (double)hz);
    }
}

/* ---- rendering ---------------------------------------------------------------------------- */

int ew_metrics_render(ew_metrics *m, char **out, size_t *len, ew_error *err)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_reserve(&b, atomic_load_explicit(&m->last_len, memory_order_relaxed) + 4096);
    if (m->bus) {
        size_t nh;
        ew_handler_stats *hs = all_stats(m->bus, &nh, &b);
        bus_metrics(&b, m->bus, hs, nh);
        lag_metrics(m, &b, m->bus, hs, nh);
        free(hs);
    }
    if (m->http) http_metrics(&b, m->http);
    if (m->outbox) outbox_metrics(m, &b);
    if (m->events) event_store_metrics(m, &b);
    process_metrics(&b);
    ew__prom_family(&b, "eventwire_scrape_errors_total", "counter",
                    "Queries of a scrape that failed (their metrics were left out).");
    ew__prom_sample_u64(&b, "eventwire_scrape_errors_total", NULL,
                        atomic_load_explicit(&m->scrape_errors, memory_order_relaxed));
    atomic_store_explicit(&m->last_len, b.len, memory_order_relaxed);
    *out = ew_buf_steal(&b, len);
    if (!*out) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    return 0;
}

void ew_metrics_http_handler(const ew_http_request *req, ew_http_response *res, void *ud)
{
    char *text;
    size_t len;
    ew_error err = {0};
    if (ew_metrics_render(ud, &text, &len, &err)) {
        ew_http_reply_error(res, 500, NULL, "metrics: %s", err.msg);
        return;
    }
    ew_http_reply_body(res, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}
