/* eventwire — the Redis backend, the Streams consumer: the transport of each group's consumer
 * core (consumer.h): XREADGROUP (its blocking read answered while the core settles on the other
 * connection), our own pending entries read again after a reconnection, XAUTOCLAIM, consumer
 * groups created and created again, trimming by age; the entry id is the ack token. */
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

/* ---- the streams transport (consumer.h) ---------------------------------------------------- */

enum { READ_NONE, READ_ENTRIES, READ_WAKE };

/* Entries held long are refreshed every REDIS_CLAIM_IDLE_MS / 4, once half that old: their idle
 * time in Redis stays under three quarters of it. */
static int64_t refresh_period_ns(const redis_bus *rb)
{
    return rb->claim_idle_ms * 1000000 / 4;
}

/* Is tok ours already: held by the core (held[0..nheld), a snapshot), or acknowledged and not
 * yet answered? */
static bool known(const rconsumer *c, const ew__ack_token *tok, size_t nheld)
{
    for (size_t i = 0; i < nheld; i++)
        if (c->held[i].lane == tok->lane && c->held[i].a == tok->a && c->held[i].b == tok->b)
            return true;
    return ew__rd_acks_has(c, tok);
}

/* "redis stream=KEY entry=ID" (the key cut at 256 bytes) into out (ID_MAX + 300 bytes): where
 * a message came from, for dead letters and log lines. Copied rather than printed: it is made
 * for every entry received. */
static void where_of(char *out, const rstream *st, const char *id, size_t id_len)
{
    size_t kl = st->key_len < 256 ? st->key_len : 256;
    char *p = out;
    memcpy(p, "redis stream=", 13);
    p += 13;
    memcpy(p, st->key, kl);
    p += kl;
    memcpy(p, " entry=", 7);
    p += 7;
    memcpy(p, id, id_len); /* < ID_MAX */
    p[id_len] = '\0';
}

/* One stream entry as received, from a hiredis reply or read in place: its id, its fields
 * (-1: nil, the entry was deleted while pending), the value of its first field named 'event'
 * and the value of its first field (NULL: none, or not a string). */
typedef struct rentry {
    bool ok; /* the shape of an entry: [id, [field, value, ...] | nil] */
    const char *id;
    size_t id_len;
    long long fields;
    bool has_event;
    const char *event, *first;
    size_t event_len, first_len;
} rentry;

/* The index-th field name and its value (NULL: not strings). */
static void rentry_field(rentry *e, size_t index, const char *name, size_t name_len,
                         const char *val, size_t val_len)
{
    if (index == 0) {
        e->first = val;
        e->first_len = val_len;
    }
    if (!e->has_event && name && name_len == 5 && memcmp(name, "event", 5) == 0) {
        e->has_event = true;
        e->event = val;
        e->event_len = val_len;
    }
}

static rentry rentry_of_reply(const redisReply *r)
{
    rentry e = {0};
    if (!ew__rd_reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 2 ||
        !ew__rd_reply_is(r->element[0], REDIS_REPLY_STRING))
        return e;
    e.ok = true;
    e.id = r->element[0]->str;
    e.id_len = r->element[0]->len;
    const redisReply *f = r->element[1];
    e.fields = ew__rd_reply_is(f, REDIS_REPLY_ARRAY) ? (long long)f->elements : -1;
    for (size_t i = 0; e.fields > 0 && i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        bool ks = k->type == REDIS_REPLY_STRING, vs = v->type == REDIS_REPLY_STRING;
        rentry_field(&e, i / 2, ks ? k->str : NULL, ks ? k->len : 0, vs ? v->str : NULL,
                     vs ? v->len : 0);
    }
    return e;
}

/* The item at *pos of a complete answer in buf[0, end), and *pos past it whole (an array with
 * all it holds). False when the answer is malformed there. */
static bool item_whole(const char *buf, size_t end, size_t *pos, ew__resp_item *it)
{
    size_t at = *pos;
    if (!ew__resp_next(buf, end, pos, it)) return false;
    if (it->type != '*' || it->n <= 0) return true;
    *pos = at;
    return ew__resp_skip(buf, end, pos);
}

/* The entry at *pos of a complete answer in buf[0, end) (redis_resp.c), as rentry_of_reply
 * reads one from hiredis. False when the answer is malformed there. */
static bool rentry_at(const char *buf, size_t end, size_t *pos, rentry *e)
{
    *e = (rentry){0};
    size_t at = *pos;
    ew__resp_item it, id, f;
    if (!ew__resp_next(buf, end, pos, &it)) return false;
    if (it.type != '*' || it.n < 2) { /* no entry: passed over (e->ok false) */
        *pos = at;
        return item_whole(buf, end, pos, &it);
    }
    if (!item_whole(buf, end, pos, &id)) return false;
    e->ok = id.type == '$' && id.n >= 0;
    e->id = id.str;
    e->id_len = id.len;
    at = *pos;
    if (!ew__resp_next(buf, end, pos, &f)) return false;
    e->fields = f.type == '*' ? f.n : -1;
    if (f.type != '*') { /* not an array: passed over */
        *pos = at;
        if (!item_whole(buf, end, pos, &f)) return false;
    }
    ew__resp_item name = {0};
    for (long long k = 0; k < e->fields; k++) {
        ew__resp_item v;
        if (!item_whole(buf, end, pos, &v)) return false;
        bool str = v.type == '$' && v.n >= 0;
        if (k % 2 == 0) {
            name = str ? v : (ew__resp_item){0};
        } else {
            rentry_field(e, (size_t)k / 2, name.str, name.len, str ? v.str : NULL, str ? v.len : 0);
        }
    }
    for (long long k = 2; k < it.n; k++) { /* more than [id, fields]: passed over */
        ew__resp_item v;
        if (!item_whole(buf, end, pos, &v)) return false;
    }
    return true;
}

/* One entry of stream s through the core; skip_known: not one we hold (held[0..nheld)). 1 when
 * it was handed to the core, else 0. *last: its id (when given); *bytes grows by its event's
 * size. */
static size_t take_entry(rconsumer *c, uint32_t s, const rentry *e, bool skip_known, size_t nheld,
                         char *last, size_t *bytes)
{
    ew__ack_token tok;
    if (!e->ok || e->id_len >= ID_MAX || !ew__rd_token_parse(e->id, e->id_len, s, &tok)) {
        ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: unexpected entry shape in %s: skipped",
                    c->streams[s].key);
        return 0;
    }
    char id[ID_MAX];
    memcpy(id, e->id, e->id_len);
    id[e->id_len] = '\0';
    if (last) memcpy(last, id, e->id_len + 1);
    if (skip_known && known(c, &tok, nheld)) return 0;
    if (e->fields < 0) { /* deleted (trimmed) while pending */
        ew__rd_acks_queue(c, &tok, 1);
        return 0;
    }
    char where[ID_MAX + 300];
    where_of(where, &c->streams[s], id, e->id_len);
    if (!e->has_event || !e->event) {
        char msg[200];
        snprintf(msg, sizeof msg, "stream entry %s of %s has no 'event' field", id,
                 c->streams[s].key);
        ew__rd_receive(c, c->streams[s].type, where, e->first ? e->first : "",
                       e->first ? e->first_len : 0, EW_EMISSING, msg, tok);
    } else {
        ew__rd_receive(c, c->streams[s].type, where, e->event, e->event_len, 0, NULL, tok);
        *bytes += e->event_len;
    }
    return 1;
}

/* The entries [[id, [field, value, ...] | nil], ...] of stream s, each through the core, in
 * order; skip_known: not those we hold. Returns how many were handed to the core; *last: the id
 * of the last entry (when given); *bytes grows by the events' sizes. */
static size_t take_entries(rconsumer *c, uint32_t s, const redisReply *entries, bool skip_known,
                           char *last, size_t *bytes)
{
    size_t got = 0, nheld = 0;
    if (skip_known && entries->elements) {
        nheld = ew__consumer_held(c->core, INT64_MAX, c->held, c->held_cap);
        if (nheld > c->held_cap) nheld = c->held_cap;
    }
    for (size_t j = 0; j < entries->elements; j++) {
        rentry e = rentry_of_reply(entries->element[j]);
        got += take_entry(c, s, &e, skip_known, nheld, last, bytes);
    }
    return got;
}

static uint32_t stream_index_of(const rconsumer *c, const char *key, size_t len)
{
    for (size_t i = 0; i < c->nrsel; i++) {
        const rstream *s = &c->streams[c->rsel[i]];
        if (len == s->key_len && memcmp(key, s->key, len) == 0) return c->rsel[i];
    }
    return UINT32_MAX;
}

/* An XREADGROUP answer for the streams of rsel: [[key, [entry...]], ...] or nil. */
static size_t take_read_reply(rconsumer *c, const redisReply *r)
{
    size_t got = 0, bytes = 0;
    if (!ew__rd_reply_is(r, REDIS_REPLY_ARRAY)) return 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sr = r->element[i];
        if (!ew__rd_reply_is(sr, REDIS_REPLY_ARRAY) || sr->elements != 2 ||
            !ew__rd_reply_is(sr->element[0], REDIS_REPLY_STRING) ||
            !ew__rd_reply_is(sr->element[1], REDIS_REPLY_ARRAY))
            continue;
        uint32_t s = stream_index_of(c, sr->element[0]->str, sr->element[0]->len);
        if (s != UINT32_MAX) got += take_entries(c, s, sr->element[1], false, NULL, &bytes);
    }
    if (got) c->entry_bytes = (c->entry_bytes + bytes / got) / 2 + 1;
    return got;
}

/* The same, read in place from the complete answer buf[0, end) that starts with an array
 * (redis_resp.c). -1 when it is malformed (the connection cannot be trusted any more). */
static long take_read_answer(rconsumer *c, const char *buf, size_t end)
{
    size_t got = 0, bytes = 0, pos = 0;
    ew__resp_item top;
    if (!ew__resp_next(buf, end, &pos, &top) || top.type != '*') return -1;
    for (long long i = 0; i < top.n; i++) {
        size_t at = pos;
        ew__resp_item sr, key, entries;
        if (!ew__resp_next(buf, end, &pos, &sr)) return -1;
        if (sr.type != '*' || sr.n != 2 || !ew__resp_next(buf, end, &pos, &key) ||
            key.type != '$' || key.n < 0 || !ew__resp_next(buf, end, &pos, &entries) ||
            entries.type != '*') { /* not [key, [entry...]]: passed over */
            pos = at;
            if (!item_whole(buf, end, &pos, &sr)) return -1;
            continue;
        }
        uint32_t s = stream_index_of(c, key.str, key.len);
        for (long long j = 0; j < entries.n; j++) {
            rentry e;
            if (!rentry_at(buf, end, &pos, &e)) return -1;
            if (s != UINT32_MAX) got += take_entry(c, s, &e, false, 0, NULL, &bytes);
        }
    }
    if (got) c->entry_bytes = (c->entry_bytes + bytes / got) / 2 + 1;
    return (long)got;
}
static size_t stream_count(rconsumer *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* An answer with an error: the group vanished (made again), a read cut short at stop, or a
 * refusal (logged; no read for a while). 0, or -1: the connection failed. */
static int read_refused(rconsumer *c, const redisReply *r, const char *what)
{
    if (ew__rd_reply_err_starts(r, "NOGROUP")) return recreate_groups(c, c->rd) ? -1 : 0;
    if (ew__rd_reply_err_starts(r, "UNBLOCKED")) return 0;
    ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: %s for group %s: %s", what, c->group, r->str);
    c->pause_until = ew_mono_ns() + (int64_t)BACKOFF_MAX_MS * 1000000;
    return 0;
}

/* Re-reads this consumer's own pending entries (XREADGROUP ... 0), a page of one stream a
 * call: what the broker handed us on a connection that failed before we received it. Entries
 * the core holds are skipped. */
static int read_own_pending(rconsumer *c, size_t max, size_t *got, ew_error *err)
{
    size_t n = stream_count(c), want = max < PENDING_PAGE ? max : (size_t)PENDING_PAGE;
    char count[24];
    snprintf(count, sizeof count, "%zu", want);
    while (c->pend_stream < n && !*got) {
        rstream *st = &c->streams[c->pend_stream];
        const char *argv[] = {"XREADGROUP", "GROUP",   c->group, c->name,     "COUNT",
                              count,        "STREAMS", st->key,  c->pend_last};
        redisReply *r = ew__rd_rcmd(c->rd, 9, argv);
        if (!r) return ew__rd_conn_error(c->rd, err);
        if (r->type == REDIS_REPLY_ERROR) {
            int rc = read_refused(c, r, "reading pending entries");
            freeReplyObject(r);
            if (rc) return ew__rd_conn_error(c->rd, err);
            c->pend_stream = (uint32_t)n; /* the rest: by XAUTOCLAIM, in time */
            break;
        }
        size_t page = 0, bytes = 0;
        if (ew__rd_reply_is(r, REDIS_REPLY_ARRAY) && r->elements == 1 &&
            ew__rd_reply_is(r->element[0], REDIS_REPLY_ARRAY) && r->element[0]->elements == 2 &&
            ew__rd_reply_is(r->element[0]->element[1], REDIS_REPLY_ARRAY)) {
            const redisReply *entries = r->element[0]->element[1];
            page = entries->elements;
            *got = take_entries(c, c->pend_stream, entries, true, c->pend_last, &bytes);
        }
        freeReplyObject(r);
        if (page < want) {
            c->pend_stream++;
            strcpy(c->pend_last, "0");
        }
    }
    c->pend_count += *got;
    if (c->pend_stream >= n) {
        c->need_pending = false;
        if (c->pend_count)
            ew__bus_log(c->rb->bus, EW_LOG_INFO,
                        "redis: group %s: %zu entries the broker gave us before the connection "
                        "failed are delivered again",
                        c->group, c->pend_count);
    }
    return 0;
}

/* Takes over entries that other (dead) consumers of the group left pending longer than
 * REDIS_CLAIM_IDLE_MS, at most max. */
static int autoclaim(rconsumer *c, size_t max, size_t *got, ew_error *err)
{
    redis_bus *rb = c->rb;
    size_t n = stream_count(c);
    char idle[24], count[24];
    snprintf(idle, sizeof idle, "%" PRId64, rb->claim_idle_ms);
    for (size_t s = 0; s < n && *got < max; s++) {
        rstream *st = &c->streams[s];
        size_t claimed = 0, bytes = 0;
        for (int page = 0; page < 16 && *got < max; page++) {
            size_t want = max - *got < CLAIM_PAGE ? max - *got : (size_t)CLAIM_PAGE;
            snprintf(count, sizeof count, "%zu", want);
            const char *argv[] = {"XAUTOCLAIM", st->key,    c->group, c->name,
                                  idle,         st->cursor, "COUNT",  count};
            redisReply *r = ew__rd_rcmd(c->rd, 8, argv);
            if (!r) return ew__rd_conn_error(c->rd, err);
            if (r->type == REDIS_REPLY_ERROR) {
                int rc = read_refused(c, r, "XAUTOCLAIM");
                freeReplyObject(r);
                if (rc) return ew__rd_conn_error(c->rd, err);
                break;
            }
            bool more = false;
            if (ew__rd_reply_is(r, REDIS_REPLY_ARRAY) && r->elements >= 2 &&
                ew__rd_reply_is(r->element[0], REDIS_REPLY_STRING) && r->element[0]->len < ID_MAX &&
                ew__rd_reply_is(r->element[1], REDIS_REPLY_ARRAY)) {
                memcpy(st->cursor, r->element[0]->str, r->element[0]->len + 1);
                size_t g = take_entries(c, (uint32_t)s, r->element[1], true, NULL, &bytes);
                claimed += g;
                *got += g;
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

/* Sends a blocking read on rd, answered in a later fetch (wait_read). */
static int send_read(rconsumer *c, const char *const *argv, int argc, int kind, ew_error *err)
{
    ew_buf b;
    ew_buf_init(&b);
    ew__rd_put_cmd(&b, argc, argv);
    int rc = b.oom ? 0 : ew__rd_rsend(c->rd, b.data, b.len);
    bool oom = b.oom;
    ew_buf_release(&b);
    if (oom) return 0; /* nothing sent: tried again at the next fetch */
    if (rc) return ew__rd_conn_error(c->rd, err);
    c->reading = kind;
    c->answer.len = 0;
    memset(&c->scan, 0, sizeof c->scan);
    c->read_deadline = ew_mono_ns() + (int64_t)(BLOCK_MS + c->rb->io_ms) * 1000000;
    return 0;
}

/* Reads new entries, at most max. With room for all streams: one XREADGROUP ... COUNT n BLOCK
 * for all of them (replies within about READ_BYTES), answered later. COUNT is per stream, so with
 * room for fewer entries than there are streams, the streams are read max at a time without
 * blocking, in turn, and when none has anything a plain XREAD ... BLOCK (which takes nothing)
 * waits for the next XADD on any of them, so that the bound holds. */
static int start_read(rconsumer *c, size_t max, size_t *got, ew_error *err)
{
    size_t n = stream_count(c);
    if (n == 0) return 0;
    char counts[24], block[16];
    snprintf(block, sizeof block, "%d", BLOCK_MS);
    const char *argv[10 + 2 * MAX_STREAMS];
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = c->group;
    argv[argc++] = c->name;
    argv[argc++] = "COUNT";
    argv[argc++] = counts;
    if (max >= n) {
        size_t count = max / n, fit = READ_BYTES / n / (c->entry_bytes ? c->entry_bytes : 1);
        snprintf(counts, sizeof counts, "%zu", count < fit ? count : fit ? fit : 1);
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
        argv[argc++] = "STREAMS";
        c->nrsel = n;
        for (size_t i = 0; i < n; i++) {
            c->rsel[i] = (uint32_t)i;
            argv[argc++] = c->streams[i].key;
        }
        for (size_t i = 0; i < n; i++)
            argv[argc++] = ">";
        c->read_max = max;
        return send_read(c, argv, argc, READ_ENTRIES, err);
    }
    snprintf(counts, sizeof counts, "1");
    argv[argc++] = "STREAMS";
    int fixed = argc;
    for (size_t tried = 0; tried < n; tried += max) {
        argc = fixed;
        c->nrsel = max;
        for (size_t i = 0; i < max; i++) {
            c->rsel[i] = (uint32_t)((c->rot + i) % n);
            argv[argc++] = c->streams[c->rsel[i]].key;
        }
        for (size_t i = 0; i < max; i++)
            argv[argc++] = ">";
        c->rot = (c->rot + max) % n;
        redisReply *r = ew__rd_rcmd(c->rd, argc, argv);
        if (!r) return ew__rd_conn_error(c->rd, err);
        bool refused = r->type == REDIS_REPLY_ERROR;
        int rc = refused ? read_refused(c, r, "XREADGROUP") : 0;
        if (!refused) *got = take_read_reply(c, r);
        freeReplyObject(r);
        if (rc) return ew__rd_conn_error(c->rd, err);
        if (*got || refused) return 0;
    }
    argc = 0;
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
    return send_read(c, argv, argc, READ_WAKE, err);
}

/* The answer of the read out on rd, once all of it is in c->answer (*taken then): its entries
 * through the core, read in place; an error answer through hiredis (read_refused). 0, or -1: the
 * connection failed, or sent what is no RESP. */
static int take_answer(rconsumer *c, bool *taken, ew_error *err)
{
    *taken = false;
    size_t end = 0;
    int done = c->answer.len ? ew__resp_complete(&c->scan, c->answer.data, c->answer.len, &end) : 0;
    if (done < 0) return ew_error_set(err, EW_EIO, "Redis answered a read with no RESP");
    if (done == 0) return 0;
    *taken = true;
    int kind = c->reading, rc = 0;
    c->reading = READ_NONE;
    const char *a = c->answer.data;
    if (a[0] == '-') { /* refused: hiredis makes the error of it */
        redisReply *r = NULL;
        if (redisReaderFeed(c->rd->reader, a, end) != REDIS_OK ||
            ew__rd_take_reply(c->rd, &r, err) || !r) {
            if (r) freeReplyObject(r);
            rc = ew_error_set(err, EW_EIO, "reading an error answer: %s", c->rd->reader->errstr);
        } else {
            rc = read_refused(c, r, kind == READ_WAKE ? "XREAD" : "XREADGROUP");
            freeReplyObject(r);
            if (rc) rc = ew__rd_conn_error(c->rd, err);
        }
    } else if (kind == READ_ENTRIES) { /* XREAD's answer only woke us */
        long got = take_read_answer(c, a, end);
        if (got < 0)
            rc = ew_error_set(err, EW_EIO, "Redis answered XREADGROUP with no entries' shape");
        else
            c->refill = (size_t)got >= c->read_max;
    }
    /* one command is out on rd at a time: nothing follows its answer */
    if (!rc && c->answer.len > end)
        rc = ew_error_set(err, EW_EIO, "Redis sent more than the answer to a read");
    c->answer.len = 0;
    memset(&c->scan, 0, sizeof c->scan);
    return rc;
}

/* Waits up to wait_ms for the answer of the read out on rd, the answers owed on ack, or the core's
 * wake-up; takes what came. Returns at the next refresh (st_fetch makes it). */
static int wait_read(rconsumer *c, int wait_ms, ew_error *err)
{
    int64_t end = ew_mono_ns() + (int64_t)wait_ms * 1000000;
    for (;;) {
        bool taken = false;
        if (c->reading && take_answer(c, &taken, err)) return -1;
        if (c->reading == READ_NONE && taken) return 0;
        if ((c->owed || c->unsent.n) && ew__rd_acks_flush(c, false, err)) return -1;
        int64_t now = ew_mono_ns(), until = end;
        if (c->reading && c->read_deadline < until) until = c->read_deadline;
        if (c->next_refresh < until) until = c->next_refresh; /* then back to st_fetch */
        if (c->reading && now >= c->read_deadline)
            return ew_error_set(err, EW_EIO, "no answer in time (read timed out)");
        if (now >= until) return 0;
        struct pollfd p[3] = {{.fd = ew__consumer_wake_fd(c->core), .events = POLLIN},
                              {.fd = c->reading ? c->rd->fd : -1, .events = POLLIN},
                              {.fd = c->owed ? c->ack->fd : -1, .events = POLLIN}};
        int pr = poll(p, 3, (int)((until - now) / 1000000) + 1);
        if (pr < 0 && errno != EINTR) return ew_error_set(err, EW_EIO, "poll: %s", strerror(errno));
        if (pr <= 0) continue;
        if (p[0].revents) return 0; /* the core has work: settle, stop */
        if (p[1].revents && ew__rd_conn_recv(c->rd, &c->answer))
            return ew__rd_conn_error(c->rd, err);
    }
}

/* keepalive (a full window, a refusing dead letter sink): what is held long is still refreshed,
 * and the acknowledgements flow. */
static int st_keepalive(void *t, ew_error *err)
{
    rconsumer *c = t;
    int64_t now = ew_mono_ns();
    if (now >= c->next_refresh) {
        c->next_refresh = now + refresh_period_ns(c->rb);
        if (ew__rd_refresh(c, now - 2 * refresh_period_ns(c->rb), err)) return -1;
    }
    return (c->owed || c->unsent.n) ? ew__rd_acks_flush(c, false, err) : 0;
}

static int st_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    rconsumer *c = t;
    redis_bus *rb = c->rb;
    if (c->owed && ew__rd_acks_take(c, false, err)) return -1;
    int64_t now = ew_mono_ns();
    size_t got = 0;
    int rc = 0;
    if (!c->reading && !c->cancelled) {
        if (c->need_pending) rc = read_own_pending(c, max, &got, err);
        if (!rc && !got && now >= c->next_claim) {
            int64_t period = rb->claim_idle_ms / 4 < 100    ? 100
                             : rb->claim_idle_ms / 4 > 5000 ? 5000
                                                            : rb->claim_idle_ms / 4;
            c->next_claim = now + period * 1000000;
            rc = autoclaim(c, max, &got, err);
        }
        if (!rc && !got && rb->max_age_ms > 0 && now >= c->next_trim) {
            size_t n = stream_count(c);
            for (size_t i = 0; !rc && i < n; i++)
                if (ew__rd_trim_by_age(rb, c->rd, c->streams[i].key))
                    rc = ew__rd_conn_error(c->rd, err);
            c->next_trim = now + rb->trim_every_ms * 1000000;
        }
        /* a window a read filled waits for a quarter of it to be free, so that reads stay large
         * (one XREADGROUP per few entries would cost Redis and us a round trip each) */
        if (max * 4 >= rb->max_inflight) c->refill = false;
        if (!rc && !got && !c->refill && now >= c->pause_until) {
            rc = start_read(c, max, &got, err);
            c->refill = got >= max;
        }
        if (rc) return rc;
    }
    if (st_keepalive(c, err)) return -1;
    return got ? 0 : wait_read(c, wait_ms, err);
}

/* settle_each: XACK, one batch on the wire at a time; this one goes when the one before it is
 * answered (here, or while the next fetch waits), so that the thread never waits for it. */
static int st_settle_each(void *t, const ew__ack_token *toks, size_t n, ew_error *err)
{
    rconsumer *c = t;
    ew__rd_acks_queue(c, toks, n);
    return ew__rd_acks_flush(c, false, err);
}

/* Unused (settle_each is set), but the core's contract has it. */
static int st_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    (void)count, (void)upto;
    return st_settle_each(t, tok, 1, err);
}

/* stop_fetching: no new read, and the one blocked in Redis is cut short (CLIENT UNBLOCK from the
 * other connection); what it still brings is released by the core and stays pending. */
static int st_stop_fetching(void *t, ew_error *err)
{
    rconsumer *c = t;
    c->cancelled = true;
    if (!c->reading || !c->client_id) return 0;
    if (c->owed && ew__rd_acks_take(c, true, err)) return -1;
    char id[24];
    snprintf(id, sizeof id, "%lld", c->client_id);
    const char *argv[] = {"CLIENT", "UNBLOCK", id};
    redisReply *r = ew__rd_rcmd(c->ack, 3, argv);
    if (!r) return ew__rd_conn_error(c->ack, err);
    freeReplyObject(r); /* refused (an ACL without it): the read ends by itself within BLOCK_MS */
    return 0;
}

/* connect: the reading connection and the acknowledging one; what could not be acknowledged on
 * the last goes out first; our own pending entries are read again (need_pending). */
static int st_connect(void *t, ew_error *err)
{
    rconsumer *c = t;
    redis_bus *rb = c->rb;
    ew_error e = {0};
    if (!(c->rd = ew__rd_rconnect(rb, rb->io_ms, false, &e)) ||
        !(c->ack = ew__rd_rconnect(rb, rb->io_ms, false, &e)))
        goto fail;
    c->rd->reader->maxbuf = 0; /* keep the read buffer: replies are large */
    const char *argv[] = {"CLIENT", "ID"};
    redisReply *r = ew__rd_rcmd(c->rd, 2, argv);
    if (!r) {
        ew__rd_conn_error(c->rd, &e);
        goto fail;
    }
    c->client_id = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    c->reading = READ_NONE;
    c->cancelled = false;
    c->need_pending = true;
    c->pend_stream = 0;
    c->pend_count = 0;
    strcpy(c->pend_last, "0");
    if (ew__rd_acks_flush(c, true, &e)) goto fail;
    return 0;
fail:
    ew__rd_conn_free(c->rd);
    ew__rd_conn_free(c->ack);
    c->rd = c->ack = NULL;
    ew__rd_acks_lost(c);
    if (err) *err = e;
    return e.code ? e.code : EW_EIO;
}

/* disconnect: at close, the last acknowledgements are sent and answered first (what is still
 * unsent then goes by the publishing connection, ew__rd_consumer_leftovers). */
static void st_disconnect(void *t, bool closing)
{
    rconsumer *c = t;
    if (closing && c->ack) {
        ew_error e = {0};
        if (!ew__rd_acks_flush(c, true, &e)) ew__rd_acks_take(c, true, &e);
    }
    ew__rd_acks_lost(c);
    ew__rd_conn_free(c->rd);
    ew__rd_conn_free(c->ack);
    c->rd = c->ack = NULL;
    c->reading = READ_NONE;
    ew_buf_release(&c->answer); /* the largest answer's room: given back while disconnected */
    memset(&c->scan, 0, sizeof c->scan);
    c->client_id = 0;
}

const ew__consumer_ops ew__rd_streams_transport = {
    .connect = st_connect,
    .fetch = st_fetch,
    .settle = st_settle,
    .settle_each = st_settle_each,
    .stop_fetching = st_stop_fetching,
    .disconnect = st_disconnect,
    .keepalive = st_keepalive,
    .settle_one = true,
    .keep_on_reconnect = true, /* XACK of an entry id works from any connection */
    .backoff_min_ms = BACKOFF_MIN_MS,
    .backoff_max_ms = BACKOFF_MAX_MS,
    .idle_ms = BLOCK_MS,
};

#else
typedef int ew__redis_streams_unused;
#endif
