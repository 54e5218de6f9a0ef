/* eventwire — the Redis backend, the Pub/Sub consumer (REDIS_MODE=pubsub): the transport of each
 * group's consumer core (consumer.h), PSUBSCRIBE per group, fire and forget: nothing to settle,
 * and what the core releases is lost. */
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

/* ---- the Pub/Sub consumer ---------------------------------------------------------------- */

/* "user.*" -> "PREFIX:user.*"; "user.#" -> "PREFIX:user*"; "*.x", "#" -> "PREFIX:*". The glob may
 * be wider than the pattern: the dispatcher routes by the exact pattern. */
char *ew__rd_pattern_glob(const redis_bus *rb, const char *pattern)
{
    size_t pl = strlen(pattern);
    const char *wild = NULL;
    for (const char *seg = pattern; seg; seg = strchr(seg, '.') ? strchr(seg, '.') + 1 : NULL)
        if ((seg[0] == '*' || seg[0] == '#') && (seg[1] == '.' || seg[1] == '\0')) {
            wild = seg;
            break;
        }
    size_t keep = wild ? (size_t)(wild - pattern) : pl;
    if (wild && wild[0] == '#' && keep > 0) keep--; /* "user.#" matches "user" too */
    size_t n = strlen(rb->prefix) + 1 + keep + 2;
    char *g = malloc(n);
    if (!g) return NULL;
    snprintf(g, n, "%s:%.*s%s", rb->prefix, (int)keep, pattern, wild ? "*" : "");
    return g;
}

/* One reply on the subscribing connection: a confirmation, or a message through the core. */
static void pubsub_message(rconsumer *c, const redisReply *r)
{
    redis_bus *rb = c->rb;
    if (!ew__rd_reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 3 ||
        !ew__rd_reply_is(r->element[0], REDIS_REPLY_STRING))
        return;
    const char *kind = r->element[0]->str;
    if (strcmp(kind, "psubscribe") == 0) {
        pthread_mutex_lock(&c->mu);
        c->nglobs_confirmed++;
        pthread_cond_broadcast(&c->sub_cv);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (strcmp(kind, "pmessage") != 0 || r->elements < 4 ||
        !ew__rd_reply_is(r->element[2], REDIS_REPLY_STRING) ||
        !ew__rd_reply_is(r->element[3], REDIS_REPLY_STRING))
        return;
    const char *channel = r->element[2]->str;
    size_t pl = strlen(rb->prefix);
    const char *type = strlen(channel) > pl + 1 ? channel + pl + 1 : channel;
    char where[300];
    snprintf(where, sizeof where, "redis channel=%.256s", channel);
    /* nothing to settle: the token only orders the core's window */
    ew__ack_token tok = {.a = ++c->seq};
    ew__rd_receive(c, type, where, r->element[3]->str, r->element[3]->len, 0, NULL, tok);
}

/* Sends PSUBSCRIBE for the globs not yet sent on this connection. */
static int pubsub_send_globs(rconsumer *c, ew_error *err)
{
    ew_buf b;
    ew_buf_init(&b);
    pthread_mutex_lock(&c->mu);
    size_t from = c->nglobs_sent, to = c->nglobs;
    if (to > from) {
        ew__rd_put_num(&b, '*', 1 + (to - from));
        ew__rd_put_str(&b, "PSUBSCRIBE");
        for (size_t i = from; i < to; i++)
            ew__rd_put_str(&b, c->globs[i]);
    }
    pthread_mutex_unlock(&c->mu);
    int rc = 0;
    if (to > from && !b.oom) { /* out of memory: at the next fetch */
        if (ew__rd_rsend(c->rd, b.data, b.len)) {
            rc = ew__rd_conn_error(c->rd, err);
        } else {
            pthread_mutex_lock(&c->mu);
            c->nglobs_sent = to;
            pthread_mutex_unlock(&c->mu);
        }
    }
    ew_buf_release(&b);
    return rc;
}

/* Hands up to max of the replies the reader holds to pubsub_message. */
static int pubsub_take(rconsumer *c, size_t max, size_t *got, ew_error *err)
{
    while (*got < max) {
        redisReply *r = NULL;
        if (ew__rd_take_reply(c->rd, &r, err)) return -1;
        if (!r) break;
        pubsub_message(c, r);
        freeReplyObject(r);
        (*got)++;
    }
    return 0;
}

/* ---- the Pub/Sub transport (consumer.h) ----------------------------------------------------- */

static int ps_connect(void *t, ew_error *err)
{
    rconsumer *c = t;
    ew_error e = {0};
    if (!(c->rd = ew__rd_rconnect(c->rb, c->rb->io_ms, false, &e))) {
        if (err) *err = e;
        return e.code ? e.code : EW_ECONNECT;
    }
    pthread_mutex_lock(&c->mu);
    c->nglobs_sent = c->nglobs_confirmed = 0;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* fetch: (re)subscribes what is new, then takes what the reader holds, or waits for the socket,
 * a new pattern (efd) or the core. */
static int ps_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    rconsumer *c = t;
    size_t got = 0;
    if (pubsub_send_globs(c, err) || pubsub_take(c, max, &got, err)) return -1;
    if (got) return 0;
    struct pollfd p[3] = {{.fd = ew__consumer_wake_fd(c->core), .events = POLLIN},
                          {.fd = c->rd->fd, .events = POLLIN},
                          {.fd = c->efd, .events = POLLIN}};
    int pr = poll(p, 3, wait_ms);
    if (pr < 0 && errno != EINTR) return ew_error_set(err, EW_EIO, "poll: %s", strerror(errno));
    if (pr > 0 && p[2].revents) {
        uint64_t v;
        if (read(c->efd, &v, sizeof v) < 0) { /* drained already */
        }
    }
    if (pr > 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        if (ew__rd_conn_read(c->rd, true)) return ew__rd_conn_error(c->rd, err);
        return pubsub_take(c, max, &got, err);
    }
    return 0;
}

/* Pub/Sub has nothing to acknowledge. */
static int ps_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    (void)t, (void)tok, (void)count, (void)upto, (void)err;
    return 0;
}

static void ps_disconnect(void *t, bool closing)
{
    (void)closing;
    rconsumer *c = t;
    ew__rd_conn_free(c->rd);
    c->rd = NULL;
}

const ew__consumer_ops ew__rd_pubsub_transport = {
    .connect = ps_connect,
    .fetch = ps_fetch,
    .settle = ps_settle,
    .disconnect = ps_disconnect,
    .settle_one = true,
    .backoff_min_ms = BACKOFF_MIN_MS,
    .backoff_max_ms = BACKOFF_MAX_MS,
    .idle_ms = BLOCK_MS,
};

/* Waits until every glob of c is confirmed by Redis, up to the connect time-out. */
int ew__rd_pubsub_wait_confirmed(rconsumer *c, ew_error *err)
{
    redis_bus *rb = c->rb;
    struct timespec ts = ew__mono_deadline(rb->connect_ms);
    pthread_mutex_lock(&c->mu);
    while (c->nglobs_confirmed < c->nglobs)
        if (pthread_cond_timedwait(&c->sub_cv, &c->mu, &ts) == ETIMEDOUT) break;
    bool ok = c->nglobs_confirmed >= c->nglobs;
    pthread_mutex_unlock(&c->mu);
    if (!ok)
        return ew_error_set(err, EW_ECONNECT,
                            "Redis at %s did not confirm the subscriptions of group %s within "
                            "%d ms",
                            rb->addr, c->group, rb->connect_ms);
    return 0;
}

void ew__rd_pubsub_wake(rconsumer *c)
{
    uint64_t one = 1;
    if (c->efd >= 0 && write(c->efd, &one, sizeof one) < 0) { /* the poll times out anyway */
    }
}

#else
typedef int ew__redis_pubsub_unused;
#endif
