/* eventwire — the Redis backend, the Streams consumer: XREADGROUP, our own pending entries,
 * XAUTOCLAIM, consumer groups created and recreated, and the reader thread. */
#ifdef EW_HAVE_REDIS

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/receive.h"
#include "bus/redis.h"
#include "bus/wire.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

/* ---- trimming by age ---------------------------------------------------------------------- */

/* Whether key is due for a trim now; marks it trimmed when it is. */
static bool trim_due(redis_bus *rb, const char *key, int64_t now_ms)
{
    bool due = false;
    pthread_mutex_lock(&rb->trim_mu);
    size_t i = 0;
    while (i < rb->ntrims && strcmp(rb->trims[i].key, key) != 0)
        i++;
    if (i == rb->ntrims) {
        if (rb->ntrims == rb->trims_cap) {
            size_t cap = rb->trims_cap ? rb->trims_cap * 2 : 16;
            struct rtrim *t = realloc(rb->trims, cap * sizeof *t);
            if (t) {
                rb->trims = t;
                rb->trims_cap = cap;
            }
        }
        char *k = rb->ntrims < rb->trims_cap ? strdup(key) : NULL;
        if (k) rb->trims[rb->ntrims++] = (struct rtrim){k, 0};
        due = true; /* unremembered (out of memory): trimmed every time, which is only slower */
        if (k) rb->trims[i].at_ms = now_ms;
    } else if (now_ms - rb->trims[i].at_ms >= rb->trim_every_ms) {
        rb->trims[i].at_ms = now_ms;
        due = true;
    }
    pthread_mutex_unlock(&rb->trim_mu);
    return due;
}

int ew__rd_trim_by_age(redis_bus *rb, redisContext *conn, const char *key)
{
    if (rb->max_age_ms <= 0) return 0;
    int64_t now_ms = ew_now_us() / 1000;
    if (!trim_due(rb, key, now_ms)) return 0;
    /* entry ids are the milliseconds Redis added them at: MINID keeps those from threshold on */
    char minid[32];
    snprintf(minid, sizeof minid, "%lld", (long long)(now_ms - rb->max_age_ms));
    const char *argv[] = {"XTRIM", key, "MINID", minid};
    redisReply *r = ew__rd_rcmd(conn, 4, argv);
    if (!r) return -1;
    if (r->type == REDIS_REPLY_ERROR)
        ew__bus_log(rb->bus, EW_LOG_WARN, "redis: trimming %s by age: %.200s", key, r->str);
    else if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        ew__bus_log(rb->bus, EW_LOG_DEBUG, "redis: trimmed %lld entries older than %lld s from %s",
                    (long long)r->integer, (long long)(rb->max_age_ms / 1000), key);
    freeReplyObject(r);
    return 0;
}

/* ---- the streams consumer ---------------------------------------------------------------- */

/* A batch of entries taken from one XREADGROUP / XAUTOCLAIM reply, ready to deliver. */
typedef struct rbatch {
    rmsg **v;
    size_t n, cap;
    size_t bytes; /* of the events in it */
} rbatch;

/* Turns one entry [id, [field, value, ...] | nil] of stream s into a delivery in batch, or
 * acknowledges it (deleted, or dead-lettered). skip_known: drop entries we already hold. */
static void take_entry(rconsumer *c, uint32_t s, const redisReply *e, rbatch *batch,
                       bool skip_known)
{
    redis_bus *rb = c->rb;
    if (!ew__rd_reply_is(e, REDIS_REPLY_ARRAY) || e->elements < 2 ||
        !ew__rd_reply_is(e->element[0], REDIS_REPLY_STRING) || e->element[0]->len >= ID_MAX) {
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: unexpected entry shape in %s: skipped",
                    c->streams[s].key);
        return;
    }
    const char *id = e->element[0]->str;
    const redisReply *f = e->element[1];
    if (skip_known) {
        pthread_mutex_lock(&c->mu);
        bool known = ew__rd_known_locked(c, s, id);
        pthread_mutex_unlock(&c->mu);
        if (known) return;
    }
    if (!ew__rd_reply_is(f, REDIS_REPLY_ARRAY)) { /* deleted (trimmed) while pending */
        pthread_mutex_lock(&c->mu);
        ew__rd_ack_push_locked(c, s, id);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    const redisReply *val = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (f->element[i]->type == REDIS_REPLY_STRING && f->element[i]->len == 5 &&
            memcmp(f->element[i]->str, "event", 5) == 0) {
            val = f->element[i + 1];
            break;
        }
    bool kept = false;
    ew_event *ev = NULL;
    char where[ID_MAX + 300];
    snprintf(where, sizeof where, "redis stream=%.256s entry=%s", c->streams[s].key, id);
    if (!val || val->type != REDIS_REPLY_STRING) {
        const redisReply *first = f->elements >= 2 ? f->element[1] : NULL;
        const char *p = first && first->type == REDIS_REPLY_STRING ? first->str : "";
        size_t pl = first && first->type == REDIS_REPLY_STRING ? first->len : 0;
        char msg[200];
        snprintf(msg, sizeof msg, "stream entry %s of %s has no 'event' field", id,
                 c->streams[s].key);
        ev = ew__rd_receive(c, c->streams[s].type, where, p, pl, EW_EMISSING, msg, &kept);
    } else {
        ev = ew__rd_receive(c, c->streams[s].type, where, val->str, val->len, 0, NULL, &kept);
        batch->bytes += val->len;
    }
    if (!ev) {
        /* dead-lettered: acknowledged; or the bus stopped while the sink refused it: left
         * pending, for this group's next reader */
        if (kept) {
            pthread_mutex_lock(&c->mu);
            ew__rd_ack_push_locked(c, s, id);
            pthread_mutex_unlock(&c->mu);
        }
        return;
    }
    rmsg *m = malloc(sizeof *m);
    if (!m || (batch->n == batch->cap &&
               !(batch->v = realloc(batch->v, (batch->cap = batch->cap ? batch->cap * 2 : 256) *
                                                  sizeof *batch->v)))) {
        free(m);
        ew_event_unref(ev);
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: out of memory: %s left pending", id);
        return;
    }
    *m = (rmsg){.c = c, .stream = s};
    memcpy(m->id, id, e->element[0]->len + 1);
    m->dl.event = ev;
    m->dl.group = c->group;
    m->dl.done = ew__rd_msg_done;
    m->dl.token = m;
    batch->v[batch->n++] = m;
}

/* Hands a batch to the dispatcher, in order. Every entry counts as in flight first (done() may
 * run before ew__dispatch_deliver() returns). */
static void deliver_batch(rconsumer *c, rbatch *batch)
{
    if (!batch->n) return;
    int64_t now = ew_mono_ns();
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < batch->n; i++) {
        batch->v[i]->since_ns = now;
        ew__rd_list_append(c, batch->v[i]);
    }
    c->inflight += batch->n;
    pthread_mutex_unlock(&c->mu);
    ew_dispatcher *d = c->rb->disp;
    for (size_t i = 0; i < batch->n; i++) {
        rmsg *m = batch->v[i];
        const ew_event *ev = m->dl.event;
        ew_error e = {0};
        if (ew__dispatch_deliver(d, &m->dl, &e)) {
            /* done() will never be called: the entry stays pending and is claimed again */
            ew__bus_log(c->rb->bus, EW_LOG_ERROR,
                        "redis: entry %s of %s (event %s) not handed to the handlers: %s; left "
                        "pending",
                        m->id, c->streams[m->stream].key, ew_event_id(ev), e.msg);
            pthread_mutex_lock(&c->mu);
            ew__rd_list_unlink(c, m);
            c->inflight--;
            pthread_mutex_unlock(&c->mu);
            free(m);
        }
        ew_event_unref(ev);
    }
    batch->n = 0;
}

static uint32_t stream_index(rconsumer *c, const redisReply *key, const uint32_t *sel, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const rstream *s = &c->streams[sel[i]];
        if (key->len == s->key_len && memcmp(key->str, s->key, key->len) == 0) return sel[i];
    }
    return UINT32_MAX;
}

/* Reads one XREADGROUP reply ([[key, [entry...]], ...] or nil) into batch. Stores the last id
 * per stream and whether the stream gave a full page in last/full when given. */
static void take_read_reply(rconsumer *c, const redisReply *r, const uint32_t *sel, size_t nsel,
                            rbatch *batch, bool skip_known, char (*last)[ID_MAX], bool *full,
                            size_t page)
{
    if (!ew__rd_reply_is(r, REDIS_REPLY_ARRAY)) return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sr = r->element[i];
        if (!ew__rd_reply_is(sr, REDIS_REPLY_ARRAY) || sr->elements != 2 ||
            !ew__rd_reply_is(sr->element[0], REDIS_REPLY_STRING) ||
            !ew__rd_reply_is(sr->element[1], REDIS_REPLY_ARRAY))
            continue;
        uint32_t s = stream_index(c, sr->element[0], sel, nsel);
        if (s == UINT32_MAX) continue;
        const redisReply *entries = sr->element[1];
        for (size_t j = 0; j < entries->elements; j++)
            take_entry(c, s, entries->element[j], batch, skip_known);
        if (last) {
            size_t k = 0;
            while (k < nsel && sel[k] != s)
                k++;
            if (k < nsel && entries->elements) {
                const redisReply *le = entries->element[entries->elements - 1];
                if (ew__rd_reply_is(le, REDIS_REPLY_ARRAY) && le->elements >= 1 &&
                    ew__rd_reply_is(le->element[0], REDIS_REPLY_STRING) &&
                    le->element[0]->len < ID_MAX)
                    memcpy(last[k], le->element[0]->str, le->element[0]->len + 1);
            }
            if (k < nsel) full[k] = entries->elements >= page;
        }
    }
}

/* Creates the group on streams[from..to) of c (XGROUP CREATE key group ID MKSTREAM), pipelined;
 * an existing group is left as it is. */
int ew__rd_create_groups(redis_bus *rb, redisContext *conn, rconsumer *c, rstream *const *ss,
                         size_t n, const char *start_id, ew_error *err)
{
    if (!n) return 0;
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XGROUP", "CREATE", ss[i]->key, c->group, start_id, "MKSTREAM"};
        ew__rd_put_cmd(&b, 6, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    int rc = 0;
    if (!r) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else if (!ew__rd_rexchange(conn, &b, r, n)) {
        rc = ew_error_set(err, EW_EIO, "creating consumer group %s on Redis at %s: %s", c->group,
                          rb->addr, conn->errstr);
    } else {
        for (size_t i = 0; i < n && !rc; i++)
            if (r[i]->type == REDIS_REPLY_ERROR && !ew__rd_reply_err_starts(r[i], "BUSYGROUP"))
                rc = ew_error_set(err, EW_EIO, "XGROUP CREATE %s %s: %.150s", ss[i]->key, c->group,
                                  r[i]->str);
    }
    if (r) ew__rd_free_replies(r, n);
    free(r);
    ew_buf_release(&b);
    return rc;
}

/* The group vanished (the broker lost its data, or someone deleted the stream): create it
 * again from the start of what the stream holds now. */
static int recreate_groups(rconsumer *c, redisContext *conn)
{
    rstream *ss[MAX_STREAMS];
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    for (size_t i = 0; i < n; i++)
        ss[i] = &c->streams[i];
    pthread_mutex_unlock(&c->mu);
    ew_error e = {0};
    int rc = ew__rd_create_groups(c->rb, conn, c, ss, n, "0", &e);
    if (rc)
        ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: group %s: %s", c->group, e.msg);
    else
        ew__bus_log(c->rb->bus, EW_LOG_WARN,
                    "redis: consumer group %s was missing on %s: created again from the "
                    "oldest entry",
                    c->group, c->rb->addr);
    return rc;
}

/* Re-reads this consumer's own pending entries (XREADGROUP ... 0): what the broker handed us
 * on a connection that failed before we received it. Entries we hold are skipped. */
static int read_own_pending(rconsumer *c, redisContext *conn, rbatch *batch)
{
    uint32_t sel[MAX_STREAMS];
    char last[MAX_STREAMS][ID_MAX];
    bool full[MAX_STREAMS];
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        sel[i] = (uint32_t)i;
        strcpy(last[i], "0");
    }
    char count[16];
    snprintf(count, sizeof count, "%d", PENDING_PAGE);
    while (n > 0) {
        const char *argv[6 + 2 * MAX_STREAMS];
        int argc = 0;
        argv[argc++] = "XREADGROUP";
        argv[argc++] = "GROUP";
        argv[argc++] = c->group;
        argv[argc++] = c->name;
        argv[argc++] = "COUNT";
        argv[argc++] = count;
        argv[argc++] = "STREAMS";
        for (size_t i = 0; i < n; i++)
            argv[argc++] = c->streams[sel[i]].key;
        for (size_t i = 0; i < n; i++)
            argv[argc++] = last[i];
        redisReply *r = ew__rd_rcmd(conn, argc, argv);
        if (!r) return -1;
        if (r->type == REDIS_REPLY_ERROR) {
            bool nogroup = ew__rd_reply_err_starts(r, "NOGROUP");
            if (!nogroup)
                ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: reading pending entries of %s: %s",
                            c->group, r->str);
            freeReplyObject(r);
            return nogroup ? recreate_groups(c, conn) : 0;
        }
        for (size_t i = 0; i < n; i++)
            full[i] = false;
        take_read_reply(c, r, sel, n, batch, true, last, full, PENDING_PAGE);
        freeReplyObject(r);
        if (batch->n)
            ew__bus_log(c->rb->bus, EW_LOG_INFO,
                        "redis: group %s: %zu entries the broker gave us before the connection "
                        "failed are delivered now",
                        c->group, batch->n);
        deliver_batch(c, batch);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (full[i]) {
                sel[k] = sel[i];
                memmove(last[k], last[i], ID_MAX);
                k++;
            }
        n = k;
    }
    return 0;
}

/* Takes over entries that other (dead) consumers of the group left pending longer than
 * REDIS_CLAIM_IDLE_MS. */
static int autoclaim(rconsumer *c, redisContext *conn, rbatch *batch, size_t avail)
{
    redis_bus *rb = c->rb;
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    char idle[24], count[16];
    snprintf(idle, sizeof idle, "%" PRId64, rb->claim_idle_ms);
    for (size_t s = 0; s < n && avail > 0; s++) {
        rstream *st = &c->streams[s];
        size_t claimed = 0;
        for (int page = 0; page < 16 && avail > 0; page++) {
            size_t want = avail < CLAIM_PAGE ? avail : (size_t)CLAIM_PAGE;
            snprintf(count, sizeof count, "%zu", want);
            const char *argv[] = {"XAUTOCLAIM", st->key,    c->group, c->name,
                                  idle,         st->cursor, "COUNT",  count};
            redisReply *r = ew__rd_rcmd(conn, 8, argv);
            if (!r) return -1;
            if (r->type == REDIS_REPLY_ERROR) {
                bool nogroup = ew__rd_reply_err_starts(r, "NOGROUP");
                if (!nogroup)
                    ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: XAUTOCLAIM %s %s: %s", st->key,
                                c->group, r->str);
                freeReplyObject(r);
                if (nogroup && recreate_groups(c, conn)) return -1;
                break;
            }
            bool more = false;
            if (ew__rd_reply_is(r, REDIS_REPLY_ARRAY) && r->elements >= 2 &&
                ew__rd_reply_is(r->element[0], REDIS_REPLY_STRING) && r->element[0]->len < ID_MAX &&
                ew__rd_reply_is(r->element[1], REDIS_REPLY_ARRAY)) {
                memcpy(st->cursor, r->element[0]->str, r->element[0]->len + 1);
                const redisReply *entries = r->element[1];
                for (size_t j = 0; j < entries->elements; j++)
                    take_entry(c, (uint32_t)s, entries->element[j], batch, true);
                claimed += batch->n;
                avail = batch->n < avail ? avail - batch->n : 0;
                deliver_batch(c, batch);
                more = strcmp(st->cursor, "0-0") != 0;
            }
            freeReplyObject(r);
            if (!more) break;
        }
        if (claimed)
            ew__bus_log(rb->bus, EW_LOG_INFO,
                        "redis: group %s took over %zu entries of %s pending for more than "
                        "%" PRId64 " ms",
                        c->group, claimed, st->key, rb->claim_idle_ms);
    }
    return 0;
}

/* One XREADGROUP for new entries of the streams sel[0..nsel), COUNT each; BLOCK when block_ms
 * > 0. Returns -1 when the connection failed, else 0 and *got = the entries delivered. */
static int read_group(rconsumer *c, redisContext *conn, rbatch *batch, const uint32_t *sel,
                      size_t nsel, size_t count, int block_ms, size_t *got)
{
    char counts[24], block[16];
    snprintf(counts, sizeof counts, "%zu", count);
    snprintf(block, sizeof block, "%d", block_ms);
    const char *argv[10 + 2 * MAX_STREAMS];
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = c->group;
    argv[argc++] = c->name;
    argv[argc++] = "COUNT";
    argv[argc++] = counts;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    }
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < nsel; i++)
        argv[argc++] = c->streams[sel[i]].key;
    for (size_t i = 0; i < nsel; i++)
        argv[argc++] = ">";
    *got = 0;
    redisReply *r = ew__rd_rcmd(conn, argc, argv);
    if (!r) return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (ew__rd_reply_err_starts(r, "NOGROUP")) {
            rc = recreate_groups(c, conn);
        } else if (!ew__rd_reply_err_starts(r, "UNBLOCKED")) {
            ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: XREADGROUP for group %s: %s", c->group,
                        r->str);
            ew__rd_wait_stop(c, BACKOFF_MAX_MS);
        }
    } else {
        batch->bytes = 0;
        take_read_reply(c, r, sel, nsel, batch, false, NULL, NULL, 0);
        if (batch->n) c->entry_bytes = (c->entry_bytes + batch->bytes / batch->n) / 2 + 1;
    }
    freeReplyObject(r);
    *got = batch->n;
    deliver_batch(c, batch);
    return rc;
}

/* Reads new entries, at most avail of them in all. COUNT is per stream, so with room for fewer
 * entries than there are streams, the streams are read `avail` at a time without blocking,
 * in turn, and when none has anything the reader waits for the next XADD on any of them with a
 * plain XREAD (which takes nothing), so that the bound holds. */
static int read_new(rconsumer *c, redisContext *conn, rbatch *batch, size_t avail, size_t *rot)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    if (n == 0) {
        struct timespec ts = ew__mono_deadline(BLOCK_MS);
        if (!c->stop) pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    pthread_mutex_unlock(&c->mu);
    uint32_t sel[MAX_STREAMS];
    size_t got = 0;
    if (avail >= n) {
        for (size_t i = 0; i < n; i++)
            sel[i] = (uint32_t)i;
        /* large events: keep one reply within READ_BYTES */
        size_t count = avail / n, fit = READ_BYTES / n / (c->entry_bytes ? c->entry_bytes : 1);
        return read_group(c, conn, batch, sel, n,
                          count < fit ? count
                          : fit       ? fit
                                      : 1,
                          BLOCK_MS, &got);
    }
    for (size_t tried = 0; tried < n; tried += avail) {
        for (size_t i = 0; i < avail; i++)
            sel[i] = (uint32_t)((*rot + i) % n);
        *rot = (*rot + avail) % n;
        if (read_group(c, conn, batch, sel, avail, 1, 0, &got)) return -1;
        if (got) return 0;
    }
    char block[16];
    snprintf(block, sizeof block, "%d", BLOCK_MS);
    const char *argv[6 + 2 * MAX_STREAMS];
    int argc = 0;
    argv[argc++] = "XREAD";
    argv[argc++] = "COUNT";
    argv[argc++] = "1";
    argv[argc++] = "BLOCK";
    argv[argc++] = block;
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < n; i++)
        argv[argc++] = c->streams[i].key;
    for (size_t i = 0; i < n; i++)
        argv[argc++] = "$";
    redisReply *r = ew__rd_rcmd(conn, argc, argv);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

void *ew__rd_stream_reader_main(void *arg)
{
    rconsumer *c = arg;
    redis_bus *rb = c->rb;
    redisContext *conn = NULL;
    int backoff = 0;
    bool was_down = false, need_pending = true;
    rbatch batch = {0};
    size_t rot = 0;
    int64_t claim_period_ns = (rb->claim_idle_ms / 4 < 100    ? 100
                               : rb->claim_idle_ms / 4 > 5000 ? 5000
                                                              : rb->claim_idle_ms / 4) *
                              1000000;
    int64_t next_claim = 0, next_trim = 0;
    while (!ew__rd_stopping(c)) {
        if (!conn) {
            if (!(conn = ew__rd_consumer_connect(c, BLOCK_MS + rb->io_ms, &backoff, &was_down,
                                                 "the reader")))
                continue;
            conn->reader->maxbuf = 0; /* keep the read buffer: replies are large */
            const char *argv[] = {"CLIENT", "ID"};
            redisReply *r = ew__rd_rcmd(conn, 2, argv);
            if (r && r->type == REDIS_REPLY_INTEGER) atomic_store(&c->client_id, r->integer);
            if (r) freeReplyObject(r);
            need_pending = true;
        }
        int rc = 0;
        if (need_pending) {
            rc = read_own_pending(c, conn, &batch);
            need_pending = rc != 0;
        }
        int64_t now = ew_mono_ns();
        if (!rc && now >= next_claim) {
            size_t avail = ew__rd_wait_room(c);
            if (!avail) break;
            rc = autoclaim(c, conn, &batch, avail);
            next_claim = now + claim_period_ns;
        }
        if (!rc && rb->max_age_ms > 0 && now >= next_trim) {
            pthread_mutex_lock(&c->mu);
            size_t n = c->nstreams;
            pthread_mutex_unlock(&c->mu);
            for (size_t i = 0; !rc && i < n; i++)
                rc = ew__rd_trim_by_age(rb, conn, c->streams[i].key);
            next_trim = now + rb->trim_every_ms * 1000000;
        }
        if (!rc) {
            size_t avail = ew__rd_wait_room(c);
            if (!avail) break;
            rc = read_new(c, conn, &batch, avail, &rot);
        }
        if (rc) {
            ew__rd_consumer_drop(c, &conn, &was_down, "the reader");
            backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        }
    }
    ew__rd_consumer_drop(c, &conn, &was_down, "the reader");
    free(batch.v);
    pthread_mutex_lock(&c->mu);
    c->exited = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

#else
typedef int ew__redis_streams_unused;
#endif
