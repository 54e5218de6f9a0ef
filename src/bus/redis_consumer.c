/* eventwire — the Redis backend, what its two consumer transports share (redis_streams.c and
 * redis_pubsub.c run on the consumer core, consumer.h): a group's consumer and its core, the
 * receive, entry ids as ack tokens, and the acknowledgements — XACK for what the core settles
 * and XCLAIM JUSTID for what it holds long — sent on a connection of their own, one batch on the
 * wire while the next gathers. */
#ifdef EW_HAVE_REDIS

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/consumer.h"
#include "bus/receive.h"
#include "bus/redis.h"
#include "bus/wire.h"
#include "core/buf.h"

/* ---- the consumer of a group --------------------------------------------------------------- */

rconsumer *ew__rd_consumer_new(redis_bus *rb, const char *group, size_t index)
{
    rconsumer *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->rb = rb;
    c->efd = -1;
    ew_buf_init(&c->answer);
    pthread_mutex_init(&c->mu, NULL);
    ew__cond_init_mono(&c->sub_cv);
    snprintf(c->name, sizeof c->name, "%s-%zu", rb->consumer_base, index);
    snprintf(c->what, sizeof c->what, "redis: consumer of group %.160s", group);
    snprintf(c->thread, sizeof c->thread, "ewr:%.11s", group);
    c->held_cap = rb->max_inflight;
    c->group = strdup(group);
    c->held = calloc(c->held_cap, sizeof *c->held);
    if (!c->group || !c->held ||
        (rb->pubsub && (c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0))
        goto fail;
    ew__consumer_conf conf = {
        .bus = rb->bus,
        .group = c->group,
        .what = c->what,
        .thread = c->thread,
        .max_inflight = rb->max_inflight,
        .max_bytes = rb->max_bytes,
        .ops = rb->pubsub ? &ew__rd_pubsub_transport : &ew__rd_streams_transport,
        .t = c,
    };
    if (ew__consumer_new(&c->core, &conf, NULL)) goto fail;
    return c;
fail:
    ew__rd_consumer_free(c);
    return NULL;
}

void ew__rd_consumer_free(rconsumer *c)
{
    if (!c) return;
    ew__consumer_free(c->core);
    ew__rd_conn_free(c->rd);
    ew__rd_conn_free(c->ack);
    for (size_t i = 0; i < c->nstreams; i++)
        free(c->streams[i].key);
    for (size_t i = 0; i < c->nglobs; i++)
        free(c->globs[i]);
    free(c->globs);
    free(c->unsent.v);
    free(c->sent.v);
    free(c->held);
    ew_buf_release(&c->answer);
    if (c->efd >= 0) close(c->efd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->sub_cv);
    free(c->group);
    free(c);
}

/* One message through the core (consumer.h): the receive path (receive.h), then the dispatcher,
 * or the dead letter sink; settled in its place. Structured: Redis has no CloudEvents binding.
 * code: the entry has no event to decode (its error and why). False when the core released it:
 * it stays pending (streams) or is lost (Pub/Sub). */
bool ew__rd_receive(rconsumer *c, const char *type, const char *where, const char *payload,
                    size_t len, int code, const char *why, ew__ack_token tok)
{
    ew__recv_msg rm = {
        .wire = {.binding = EW__BINDING_STRUCTURED, .body = payload, .body_len = len},
        .group = c->group,
        .type_hint = type,
        .transport = where,
        .predecoded = code != 0,
        .error = code,
        .error_msg = why,
    };
    return ew__consumer_receive(c->core, &rm, tok);
}

/* ---- entry ids as tokens ------------------------------------------------------------------- */

/* "MS-SEQ" of stream into *tok. False when it is no entry id. */
bool ew__rd_token_parse(const char *id, size_t len, uint32_t stream, ew__ack_token *tok)
{
    uint64_t v[2] = {0, 0};
    size_t i = 0;
    for (int part = 0; part < 2; part++) {
        size_t from = i;
        for (; i < len && id[i] >= '0' && id[i] <= '9'; i++) {
            if (v[part] > (UINT64_MAX - 9) / 10) return false;
            v[part] = v[part] * 10 + (uint64_t)(id[i] - '0');
        }
        if (i == from || (part == 0 && (i == len || id[i++] != '-'))) return false;
    }
    if (i != len) return false;
    *tok = (ew__ack_token){.lane = stream, .a = v[0], .b = v[1]};
    return true;
}

/* v in decimal at out; returns the end. */
static char *put_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *out++ = tmp[--n];
    return out;
}

/* The entry id of tok into out (ID_MAX bytes, NUL-terminated); returns its length. Written by
 * hand: every acknowledged entry comes through here, and snprintf cost ~2,000 instructions an
 * entry (callgrind), a tenth of the consumer thread's work. */
size_t ew__rd_token_id(const ew__ack_token *tok, char *out)
{
    char *p = put_u64(out, tok->a);
    *p++ = '-';
    p = put_u64(p, tok->b);
    *p = '\0';
    return (size_t)(p - out);
}

/* ---- acknowledgements ---------------------------------------------------------------------- */

static int toks_push(rtoks *t, const ew__ack_token *v, size_t n)
{
    if (t->n + n > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n)
            cap *= 2;
        ew__ack_token *w = realloc(t->v, cap * sizeof *w);
        if (!w) return -1;
        t->v = w;
        t->cap = cap;
    }
    memcpy(t->v + t->n, v, n * sizeof *v);
    t->n += n;
    return 0;
}

/* XACK (or, claim, XCLAIM ... 0 IDS JUSTID: resets their idle time) for toks[0..n), one command
 * per stream and ACKS_PER_CMD ids. Returns the number of commands. */
static size_t put_per_stream(rconsumer *c, const ew__ack_token *v, size_t n, bool claim, ew_buf *b)
{
    size_t ncmd = 0;
    bool seen[MAX_STREAMS] = {false};
    for (size_t i = 0; i < n; i++) {
        uint32_t s = v[i].lane;
        if (s >= MAX_STREAMS || seen[s]) continue;
        seen[s] = true;
        size_t total = 0;
        for (size_t j = i; j < n; j++)
            total += v[j].lane == s;
        for (size_t done = 0, j = i; done < total;) {
            size_t k = total - done < ACKS_PER_CMD ? total - done : ACKS_PER_CMD;
            ew__rd_put_num(b, '*', (claim ? 6 : 3) + k);
            ew__rd_put_str(b, claim ? "XCLAIM" : "XACK");
            ew__rd_put_arg(b, c->streams[s].key, c->streams[s].key_len);
            ew__rd_put_str(b, c->group);
            if (claim) {
                ew__rd_put_str(b, c->name);
                ew__rd_put_str(b, "0");
            }
            for (size_t put = 0; put < k; j++)
                if (v[j].lane == s) {
                    char id[ID_MAX];
                    ew__rd_put_arg(b, id, ew__rd_token_id(&v[j], id));
                    put++;
                }
            if (claim) ew__rd_put_str(b, "JUSTID");
            done += k;
            ncmd++;
        }
    }
    return ncmd;
}

int ew__rd_conn_error(redisContext *conn, ew_error *err)
{
    return ew_error_set(err, EW_EIO, "%s", conn->errstr[0] ? conn->errstr : "connection failed");
}

/* Takes one complete reply from what conn's reader holds; *r NULL when there is none yet. 0, or
 * -1 when the stream is no RESP (the connection is unusable). */
int ew__rd_take_reply(redisContext *conn, redisReply **r, ew_error *err)
{
    void *rep = NULL;
    if (redisGetReplyFromReader(conn, &rep) != REDIS_OK) return ew__rd_conn_error(conn, err);
    *r = rep;
    return 0;
}

/* Is there something to read on conn now? */
static bool readable(const redisContext *conn)
{
    struct pollfd p = {.fd = conn->fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Reads the answers owed on the acknowledging connection: all of them (block), or those that
 * arrived. Once all are in, the batch they answer is done. 0, or -1: the connection failed. */
int ew__rd_acks_take(rconsumer *c, bool block, ew_error *err)
{
    while (c->owed) {
        redisReply *r = NULL;
        if (ew__rd_take_reply(c->ack, &r, err)) return -1;
        if (!r) {
            if (!block && !readable(c->ack)) break;
            if (ew__rd_conn_read(c->ack, !block)) return ew__rd_conn_error(c->ack, err);
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR && !ew__rd_reply_err_starts(r, "NOGROUP"))
            ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: acknowledging entries of group %s: %s",
                        c->group, r->str);
        freeReplyObject(r);
        c->owed--;
    }
    if (!c->owed) c->sent.n = 0;
    return 0;
}

/* Sends what is waiting to be acknowledged, once the batch before it is answered. */
int ew__rd_acks_flush(rconsumer *c, bool block, ew_error *err)
{
    if (c->owed && ew__rd_acks_take(c, block, err)) return -1;
    if (c->owed || !c->unsent.n) return 0;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_reserve(&b, c->unsent.n * (ID_MAX + 8) + 256); /* one allocation; oom: as below */
    size_t ncmd = put_per_stream(c, c->unsent.v, c->unsent.n, false, &b);
    bool oom = b.oom; /* kept for the next flush */
    int rc = oom ? 0 : ew__rd_rsend(c->ack, b.data, b.len);
    ew_buf_release(&b);
    if (oom) return 0;
    if (rc) return ew__rd_conn_error(c->ack, err);
    rtoks t = c->sent;
    c->sent = c->unsent;
    c->unsent = t;
    c->unsent.n = 0;
    c->owed = ncmd;
    return 0;
}

/* Queues toks[0..n) for XACK, sent by the next ew__rd_acks_flush(). They are kept until Redis
 * answered: a connection lost before that sends them again on the next. */
void ew__rd_acks_queue(rconsumer *c, const ew__ack_token *toks, size_t n)
{
    if (toks_push(&c->unsent, toks, n))
        ew__bus_log(c->rb->bus, EW_LOG_ERROR,
                    "redis: out of memory acknowledging %zu entries of group %s: they will be "
                    "delivered again",
                    n, c->group);
}

/* The acknowledging connection is gone: what it had sent unanswered waits for the next. */
void ew__rd_acks_lost(rconsumer *c)
{
    if (c->sent.n) ew__rd_acks_queue(c, c->sent.v, c->sent.n);
    c->sent.n = 0;
    c->owed = 0;
}

/* Is tok acknowledged already, its answer not in yet? */
bool ew__rd_acks_has(const rconsumer *c, const ew__ack_token *tok)
{
    for (int k = 0; k < 2; k++) {
        const rtoks *t = k ? &c->sent : &c->unsent;
        for (size_t i = 0; i < t->n; i++)
            if (t->v[i].lane == tok->lane && t->v[i].a == tok->a && t->v[i].b == tok->b)
                return true;
    }
    return false;
}

/* The entries the core took before older_than_ns and still holds: XCLAIM with min-idle 0 resets
 * their idle time, so that no other consumer of the group takes them over from a live one while
 * a handler still works on them. */
int ew__rd_refresh(rconsumer *c, int64_t older_than_ns, ew_error *err)
{
    size_t n = ew__consumer_held(c->core, older_than_ns, c->held, c->held_cap);
    if (n > c->held_cap) n = c->held_cap;
    if (!n) return 0;
    ew_buf b;
    ew_buf_init(&b);
    size_t ncmd = put_per_stream(c, c->held, n, true, &b);
    bool oom = b.oom; /* not refreshed now: at the next turn */
    int rc = oom ? 0 : ew__rd_rsend(c->ack, b.data, b.len);
    ew_buf_release(&b);
    if (rc) return ew__rd_conn_error(c->ack, err);
    if (!oom) c->owed += ncmd;
    return 0;
}

/* After the core closed: acknowledgements its connection could not send go out on the
 * publishing connection; what still cannot is delivered again (and said). */
void ew__rd_consumer_leftovers(rconsumer *c)
{
    redis_bus *rb = c->rb;
    ew__rd_acks_lost(c);
    if (!c->unsent.n) return;
    ew_buf b;
    ew_buf_init(&b);
    size_t ncmd = put_per_stream(c, c->unsent.v, c->unsent.n, false, &b);
    redisReply **r = calloc(ncmd ? ncmd : 1, sizeof *r);
    size_t got = 0;
    int rc = EW_ENOMEM;
    pthread_mutex_lock(&rb->pub_mu);
    if (r && !b.oom) rc = ew__rd_pub_exchange(rb, &b, r, ncmd, &got, NULL);
    pthread_mutex_unlock(&rb->pub_mu);
    if (r) ew__rd_free_replies(r, got);
    free(r);
    ew_buf_release(&b);
    if (rc)
        ew__bus_log(rb->bus, EW_LOG_WARN,
                    "redis: group %s: %zu acknowledgements not sent before close; those entries "
                    "will be delivered again",
                    c->group, c->unsent.n);
    c->unsent.n = 0;
}

#else
typedef int ew__redis_consumer_unused;
#endif
