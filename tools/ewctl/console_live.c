/* ewctl console: the live feed. The console's handler (an ephemeral group on the bus) copies each
 * event into a ring of the newest LIVE_RING; each browser reads it through server-sent events,
 * from the position it last saw. Memory is bounded by the ring, whatever the clients do: a
 * client that falls behind skips to the newest events and is told how many it missed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "console.h"
#include "store/handle.h"
#include "store/store_bus.h"
#include "core/mono.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/store.h"

typedef struct item {
    uint64_t seq;
    char *type, *subject, *corr;
    char trace[33];
    char *line; /* {"seq":N,"event":{...}} */
} item;

struct live {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    item ring[LIVE_RING];
    uint64_t head; /* seq of the newest item; items are head-LIVE_RING+1 .. head */
    uint64_t skipped;
    bool stopped;
    ew_store *log; /* live_follow: the log read, borrowed */
    bool decrypt;  /* live_follow: events opened with the log's keys */
    /* events seen per second of arrival, for the last LIVE_RATE_SECONDS */
    uint32_t per_sec[LIVE_RATE_SECONDS];
    int64_t sec_of[LIVE_RATE_SECONDS];
    int64_t started_s; /* the count starts here */
    pthread_t follower;
    bool following;
};

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

static void item_clear(item *it)
{
    free(it->type);
    free(it->subject);
    free(it->corr);
    free(it->line);
    memset(it, 0, sizeof *it);
}

int live_new(live **out)
{
    live *l = calloc(1, sizeof *l);
    if (!l) return -1;
    pthread_mutex_init(&l->mu, NULL);
    ew__cond_init_mono(&l->cv);
    l->started_s = ew_now_us() / 1000000;
    *out = l;
    return 0;
}

void live_free(live *l)
{
    if (!l) return;
    live_stop(l);
    for (size_t i = 0; i < LIVE_RING; i++)
        item_clear(&l->ring[i]);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}

/* Copies ev into the ring. */
static void add(live *l, const ew_event *ev)
{
    char *json = NULL;
    size_t n = 0;
    if (ew_event_encode(ev, &json, &n, NULL) != 0) return; /* nothing to show */
    item it = {.type = dup_or_empty(ew_event_type(ev)),
               .subject = dup_or_empty(ew_event_subject(ev)),
               .corr = dup_or_empty(ew_event_correlation_id(ev))};
    const char *tp = ew_event_traceparent(ev); /* 00-TRACEID-SPANID-FLAGS */
    if (tp && strlen(tp) >= 35) memcpy(it.trace, tp + 3, 32);
    ew_buf b;
    ew_buf_init(&b);
    if (n <= LIVE_EVENT_MAX) {
        ew_buf_puts(&b, "{\"seq\":0000000000000000000,\"event\":");
        ew_buf_append(&b, json, n);
        ew_buf_putc(&b, '}');
    } else {
        /* too big for the ring: the summary only */
        ew_buf_puts(&b, "{\"seq\":0000000000000000000,\"too_big\":");
        ew_buf_printf(&b, "%zu,\"event\":{\"id\":", n);
        const char *id = ew_event_id(ev), *src = ew_event_source(ev);
        ew_json_write_string(&b, id, strlen(id));
        ew_buf_puts(&b, ",\"type\":");
        ew_json_write_string(&b, it.type, strlen(it.type));
        ew_buf_puts(&b, ",\"source\":");
        ew_json_write_string(&b, src, strlen(src));
        ew_buf_puts(&b, ",\"subject\":");
        ew_json_write_string(&b, it.subject, strlen(it.subject));
        ew_buf_puts(&b, ",\"correlationid\":");
        ew_json_write_string(&b, it.corr, strlen(it.corr));
        ew_buf_puts(&b, "}}");
    }
    free(json);
    if (b.oom || !it.type || !it.subject || !it.corr) {
        ew_buf_release(&b);
        item_clear(&it);
        return;
    }
    it.line = ew_buf_steal(&b, NULL);
    int64_t sec = ew_now_us() / 1000000;
    pthread_mutex_lock(&l->mu);
    size_t slot_s = (size_t)(sec % LIVE_RATE_SECONDS);
    if (l->sec_of[slot_s] != sec) {
        l->sec_of[slot_s] = sec;
        l->per_sec[slot_s] = 0;
    }
    l->per_sec[slot_s]++;
    it.seq = ++l->head;
    /* the sequence number goes in the place kept for it, padded with spaces */
    char num[21];
    int len = snprintf(num, sizeof num, "%llu", (unsigned long long)it.seq);
    memset(it.line + 7, ' ', 19);
    memcpy(it.line + 7, num, (size_t)len);
    item *slot = &l->ring[it.seq % LIVE_RING];
    item old = *slot;
    *slot = it;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    item_clear(&old);
}

ew_handler_result live_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ctx;
    add(ud, ev);
    return EW_HANDLER_OK;
}

/* ---- following the SQLite log ---- */

static int follow_row(void *ud, const ew__store_entry *e)
{
    live *l = ud;
    if (!e->event) return 0;
    if (!l->decrypt) {
        add(l, e->event);
        return 0;
    }
    ew_event *ev = ew_event_ref(e->event);
    if (ew__store_unseal(l->log, &ev, NULL) == 0)
        add(l, ev); /* what cannot be opened is left out */
    ew_event_unref(ev);
    return 0;
}

static bool stopping(live *l)
{
    pthread_mutex_lock(&l->mu);
    bool s = l->stopped;
    pthread_mutex_unlock(&l->mu);
    return s;
}

/* Reads what was appended after the last position read, when the database changed (PRAGMA
 * data_version: shared memory, no disk), else sleeps FOLLOW_POLL_MS. */
#define FOLLOW_POLL_MS 50
#define FOLLOW_BATCH 2000

static void *follow(void *ud)
{
    live *l = ud;
    int64_t pos = 0, seen = -1, v;
    ew_store_head(l->log, &pos, NULL);
    while (!stopping(l)) {
        if (ew__store_data_version(l->log, &v, NULL) == 0 && v == seen) {
            usleep(FOLLOW_POLL_MS * 1000);
            continue;
        }
        int64_t last = pos;
        if (ew__store_scan(l->log, pos, NULL, 0, FOLLOW_BATCH, 0, follow_row, l, &last, NULL) != 0)
            last = pos;
        /* more may have come while reading: read again before trusting data_version */
        seen = last == pos ? v : -1;
        if (last == pos) usleep(FOLLOW_POLL_MS * 1000);
        pos = last;
    }
    return NULL;
}

int live_follow(live *l, ew_store *log, bool decrypt)
{
    l->log = log;
    l->decrypt = decrypt;
    if (pthread_create(&l->follower, NULL, follow, l)) return -1;
    l->following = true;
    return 0;
}

uint64_t live_head(live *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t h = l->head;
    pthread_mutex_unlock(&l->mu);
    return h;
}

void live_stop(live *l)
{
    pthread_mutex_lock(&l->mu);
    l->stopped = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (l->following) pthread_join(l->follower, NULL);
    l->following = false;
}

void live_rates_json(live *l, int step_s, ew_buf *b)
{
    int64_t now = ew_now_us() / 1000000;
    ew_buf_puts(b, "[");
    pthread_mutex_lock(&l->mu);
    /* whole steps only, the current (unfinished) second left out */
    int64_t last = now - 1, first = last - LIVE_RATE_SECONDS + 1;
    if (first < l->started_s) first = l->started_s;
    first += (last - first + 1) % step_s;
    for (int64_t t = first; t + step_s - 1 <= last; t += step_s) {
        uint64_t n = 0;
        for (int64_t s = t; s < t + step_s; s++) {
            size_t i = (size_t)(s % LIVE_RATE_SECONDS);
            if (l->sec_of[i] == s) n += l->per_sec[i];
        }
        ew_buf_printf(b, "%s{\"t\":%lld,\"rate\":%.6g}", t == first ? "" : ",",
                      (long long)(t + step_s) * 1000, (double)n / step_s);
    }
    pthread_mutex_unlock(&l->mu);
    ew_buf_puts(b, "]");
}

void live_counts(live *l, uint64_t *seen, uint64_t *skipped)
{
    pthread_mutex_lock(&l->mu);
    *seen = l->head;
    *skipped = l->skipped;
    pthread_mutex_unlock(&l->mu);
}

static bool type_matches(const char *want, const char *type)
{
    if (!want || !*want) return true;
    if (ew_pattern_valid(want) && ew_pattern_match(want, type)) return true;
    return strstr(type, want) != NULL;
}

static bool eq_or_any(const char *want, const char *have)
{
    return !want || !*want || strcmp(want, have) == 0;
}

static bool matches(const item *it, const live_filter *f)
{
    return type_matches(f->type, it->type) && eq_or_any(f->subject, it->subject) &&
           eq_or_any(f->correlation, it->corr) && eq_or_any(f->trace, it->trace);
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static bool passed(const struct timespec *ts)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* How long an answer waits, once it has something, for more to come with it: the batching that
 * keeps a busy bus from costing a request per event. */
#define LIVE_BATCH_MS 200

uint64_t live_read(live *l, uint64_t after, const live_filter *f, int wait_ms, size_t backlog,
                   ew_buf *b)
{
    struct timespec end, batch_end;
    deadline_in(&end, wait_ms);
    size_t sent = 0;
    bool batching = false;
    pthread_mutex_lock(&l->mu);
    if (after == UINT64_MAX) {
        /* a new client: the newest events the ring holds, those that match, at most backlog */
        uint64_t first = l->head > LIVE_RING - 1 ? l->head - (LIVE_RING - 1) : 1;
        size_t found = 0;
        uint64_t from = l->head;
        for (uint64_t s = l->head; s >= first && s > 0 && found < backlog; s--) {
            if (matches(&l->ring[s % LIVE_RING], f)) {
                found++;
                from = s - 1;
            }
        }
        after = found ? from : l->head;
    }
    for (;;) {
        uint64_t oldest = l->head >= LIVE_RING ? l->head - LIVE_RING + 1 : 1;
        if (l->head > after + LIVE_MAX_BATCH || after + 1 < oldest) {
            /* too far behind: skip to the newest LIVE_MAX_BATCH and say so */
            uint64_t to = l->head - LIVE_MAX_BATCH;
            if (to < oldest - 1) to = oldest - 1;
            /* what the client would have been sent: the matching ones still in the ring, and
             * every one that left it (no telling which of those matched) */
            uint64_t n = 0;
            for (uint64_t s = after + 1; s <= to; s++)
                n += s < oldest || matches(&l->ring[s % LIVE_RING], f);
            if (n)
                ew_buf_printf(b, "event: skipped\ndata: {\"skipped\":%llu}\n\n",
                              (unsigned long long)n);
            l->skipped += n;
            after = to;
        }
        while (after < l->head && sent < LIVE_MAX_BATCH) {
            const item *it = &l->ring[++after % LIVE_RING];
            if (!matches(it, f)) continue;
            ew_buf_printf(b, "id: %llu\ndata: ", (unsigned long long)after);
            ew_buf_puts(b, it->line);
            ew_buf_puts(b, "\n\n");
            sent++;
        }
        if (l->stopped || sent >= LIVE_MAX_BATCH || passed(&end)) break;
        if (sent && !batching) {
            batching = true;
            deadline_in(&batch_end, LIVE_BATCH_MS);
        }
        if (batching && passed(&batch_end)) break;
        pthread_cond_timedwait(&l->cv, &l->mu, batching ? &batch_end : &end);
    }
    pthread_mutex_unlock(&l->mu);
    /* where the client is, even when nothing it wants came */
    ew_buf_printf(b, "id: %llu\nevent: pos\ndata: %llu\n\n", (unsigned long long)after,
                  (unsigned long long)after);
    return after;
}
