/* eventwire — the Redis backend, the Pub/Sub consumer (REDIS_MODE=pubsub): PSUBSCRIBE per group,
 * fire and forget. */
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

typedef struct pmsg {
    ew_delivery dl;
    rconsumer *c;
} pmsg;

static void pmsg_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    pmsg *m = dl->token;
    rconsumer *c = m->c;
    pthread_mutex_lock(&c->mu);
    c->inflight--;
    ew__rd_room_freed(c);
    pthread_mutex_unlock(&c->mu);
    free(m);
}

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
    bool kept;
    char where[300];
    snprintf(where, sizeof where, "redis channel=%.256s", channel);
    ew_event *ev =
        ew__rd_receive(c, type, where, r->element[3]->str, r->element[3]->len, 0, NULL, &kept);
    if (!ev) return;
    pmsg *m = malloc(sizeof *m);
    if (!m) {
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: out of memory: event %s lost", ew_event_id(ev));
        ew_event_unref(ev);
        return;
    }
    *m = (pmsg){.c = c};
    m->dl.event = ev;
    m->dl.group = c->group;
    m->dl.done = pmsg_done;
    m->dl.token = m;
    pthread_mutex_lock(&c->mu);
    c->inflight++;
    pthread_mutex_unlock(&c->mu);
    ew_error e = {0};
    if (ew__dispatch_deliver(rb->disp, &m->dl, &e)) {
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: event %s lost: %s", ew_event_id(ev), e.msg);
        pthread_mutex_lock(&c->mu);
        c->inflight--;
        pthread_mutex_unlock(&c->mu);
        free(m);
    }
    ew_event_unref(ev);
}

/* Sends PSUBSCRIBE for the globs not yet sent on this connection. */
static int pubsub_send_globs(rconsumer *c, redisContext *conn)
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
    if (to > from) {
        rc = b.oom ? -1 : ew__rd_rsend(conn, b.data, b.len);
        if (!rc) {
            pthread_mutex_lock(&c->mu);
            c->nglobs_sent = to;
            pthread_mutex_unlock(&c->mu);
        }
    }
    ew_buf_release(&b);
    return rc;
}

void *ew__rd_pubsub_reader_main(void *arg)
{
    rconsumer *c = arg;
    redis_bus *rb = c->rb;
    redisContext *conn = NULL;
    int backoff = 0;
    bool was_down = false;
    while (!ew__rd_stopping(c)) {
        if (!conn) {
            if (!(conn =
                      ew__rd_consumer_connect(c, rb->io_ms, &backoff, &was_down, "the subscriber")))
                continue;
            pthread_mutex_lock(&c->mu);
            c->nglobs_sent = c->nglobs_confirmed = 0;
            pthread_mutex_unlock(&c->mu);
        }
        if (pubsub_send_globs(c, conn) || !ew__rd_wait_room(c)) goto drop;
        struct pollfd pf[2] = {{.fd = conn->fd, .events = POLLIN},
                               {.fd = c->efd, .events = POLLIN}};
        int pr = poll(pf, 2, BLOCK_MS);
        if (pr < 0 && errno != EINTR) goto drop;
        if (pf[1].revents & POLLIN) {
            uint64_t v;
            if (read(c->efd, &v, sizeof v) < 0) { /* nothing to do */
            }
        }
        if (pr > 0 && (pf[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (ew__rd_conn_read(conn, true)) goto drop;
            for (;;) {
                void *r = NULL;
                if (redisGetReplyFromReader(conn, &r) != REDIS_OK) goto drop;
                if (!r) break;
                pubsub_message(c, r);
                freeReplyObject(r);
            }
        }
        continue;
    drop:
        ew__rd_consumer_drop(c, &conn, &was_down, "the subscriber");
        backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    }
    ew__rd_consumer_drop(c, &conn, &was_down, "the subscriber");
    pthread_mutex_lock(&c->mu);
    c->exited = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

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
