/* eventwire — the Redis backend, what the Streams and Pub/Sub consumers share: stopping and
 * waiting, the in-flight window, the list of entries in hand, the receive path, reconnecting, and
 * the acker thread that sends XACKs in batches. */
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

/* ---- consumers: shared parts ------------------------------------------------------------- */

bool ew__rd_stopping(rconsumer *c)
{
    pthread_mutex_lock(&c->mu);
    bool s = c->stop;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* Waits ms unless the consumer is stopped first: true then. */
bool ew__rd_wait_stop(rconsumer *c, int ms)
{
    struct timespec ts = ew__mono_deadline(ms);
    pthread_mutex_lock(&c->mu);
    while (!c->stop)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT) break;
    bool s = c->stop;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* Waits for room under EVENT_BUS_MAX_IN_FLIGHT; returns how much, 0 when stopped. */
size_t ew__rd_wait_room(rconsumer *c)
{
    redis_bus *rb = c->rb;
    pthread_mutex_lock(&c->mu);
    while (!c->stop && c->inflight >= rb->max_inflight) {
        c->room_wait = true;
        pthread_cond_wait(&c->cv, &c->mu);
    }
    size_t avail = c->stop ? 0 : rb->max_inflight - c->inflight;
    pthread_mutex_unlock(&c->mu);
    return avail;
}

/* Called under mu when one in-flight delivery finished. */
void ew__rd_room_freed(rconsumer *c)
{
    if (c->room_wait && c->inflight <= c->rb->low_water) {
        c->room_wait = false;
        pthread_cond_signal(&c->cv);
    }
}

static int rackv_push(rackv *a, uint32_t stream, const char *id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        rack *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    size_t n = strlen(id);
    if (n >= ID_MAX) n = ID_MAX - 1;
    a->v[a->n].stream = stream;
    memcpy(a->v[a->n].id, id, n);
    a->v[a->n].id[n] = '\0';
    a->n++;
    return 0;
}

/* Queues an acknowledgement for the acker. Under mu. */
void ew__rd_ack_push_locked(rconsumer *c, uint32_t stream, const char *id)
{
    if (rackv_push(&c->acks, stream, id)) {
        ew__bus_log(c->rb->bus, EW_LOG_ERROR,
                    "redis: out of memory acknowledging entry %s: it will be delivered again", id);
        return;
    }
    if (c->ack_wait) {
        c->ack_wait = false;
        pthread_cond_signal(&c->ack_cv);
    }
}

void ew__rd_list_unlink(rconsumer *c, rmsg *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        c->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        c->tail = m->prev;
    m->prev = m->next = NULL;
}

void ew__rd_list_append(rconsumer *c, rmsg *m)
{
    m->next = NULL;
    m->prev = c->tail;
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
}

/* The dispatcher is done with a stream entry: acknowledge it (ACK) or leave it pending for
 * redelivery (ABANDONED). Any thread. */
void ew__rd_msg_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    rmsg *m = dl->token;
    rconsumer *c = m->c;
    pthread_mutex_lock(&c->mu);
    ew__rd_list_unlink(c, m);
    c->inflight--;
    if (outcome == EW_DELIVERY_ACK && !c->rb->pubsub) ew__rd_ack_push_locked(c, m->stream, m->id);
    ew__rd_room_freed(c);
    pthread_mutex_unlock(&c->mu);
    free(m);
}

/* Is this entry ours already: in flight, or acknowledged and not yet confirmed? Under mu. */
bool ew__rd_known_locked(rconsumer *c, uint32_t stream, const char *id)
{
    for (rmsg *m = c->head; m; m = m->next)
        if (m->stream == stream && strcmp(m->id, id) == 0) return true;
    for (size_t i = 0; i < c->acks.n; i++)
        if (c->acks.v[i].stream == stream && strcmp(c->acks.v[i].id, id) == 0) return true;
    for (size_t i = 0; i < c->sending.n; i++)
        if (c->sending.v[i].stream == stream && strcmp(c->sending.v[i].id, id) == 0) return true;
    return false;
}

/* ew__receive's question while the dead letter sink refuses a message. */
static bool recv_stopping(void *ud)
{
    return ew__rd_stopping(ud);
}

/* One message through the receive path (receive.h): the event, or NULL when it was
 * dead-lettered (*kept: acknowledge it) or the bus stopped while the sink refused it. */
ew_event *ew__rd_receive(rconsumer *c, const char *type, const char *where, const char *payload,
                         size_t len, int code, const char *why, bool *kept)
{
    ew__recv_msg rm = {
        .wire = {.binding = EW__BINDING_STRUCTURED, .body = payload, .body_len = len},
        .group = c->group,
        .type_hint = type,
        .transport = where,
        .predecoded = code != 0, /* the entry has no event to decode */
        .error = code,
        .error_msg = why,
    };
    ew_event *ev = NULL;
    ew__recv_result r = ew__receive(c->rb->bus, &rm, c->rb->max_bytes, recv_stopping, c, &ev);
    *kept = r == EW__RECV_DEAD;
    return ev;
}

redisContext *ew__rd_consumer_connect(rconsumer *c, int io_ms, int *backoff, bool *was_down,
                                      const char *role)
{
    redis_bus *rb = c->rb;
    if (*backoff && ew__rd_wait_stop(c, ew__jitter_ms(*backoff))) return NULL;
    ew_error e = {0};
    redisContext *conn = ew__rd_rconnect(rb, io_ms, false, &e);
    if (!conn) {
        if (!*was_down)
            ew__bus_log(rb->bus, EW_LOG_WARN, "redis: %s of group %s: %s; retrying", role, c->group,
                        e.msg);
        *was_down = true;
        *backoff = ew__backoff_next(*backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        return NULL;
    }
    if (*was_down)
        ew__bus_log(rb->bus, EW_LOG_INFO, "redis: %s of group %s reconnected to %s", role, c->group,
                    rb->addr);
    *was_down = false;
    *backoff = 0;
    return conn;
}

void ew__rd_consumer_drop(rconsumer *c, redisContext **conn, bool *was_down, const char *role)
{
    if (!*conn) return;
    if (!ew__rd_stopping(c)) {
        ew__bus_log(c->rb->bus, EW_LOG_WARN, "redis: %s of group %s lost its connection: %s", role,
                    c->group, (*conn)->errstr);
        *was_down = true;
    }
    atomic_store(&c->client_id, 0);
    ew__rd_conn_free(*conn);
    *conn = NULL;
}
/* ---- the acker --------------------------------------------------------------------------- */

/* Formats XACK commands for the acknowledgements in a (grouped by stream, ACKS_PER_CMD ids
 * each) and XCLAIM ... JUSTID commands for the entries in h (to keep them ours). Returns the
 * number of commands. */
static size_t format_acks(rconsumer *c, const rackv *a, const rackv *h, ew_buf *b)
{
    size_t ncmd = 0;
    for (int pass = 0; pass < 2; pass++) {
        const rackv *v = pass == 0 ? a : h;
        if (!v->n) continue;
        /* the streams present, in first-seen order */
        bool seen[MAX_STREAMS] = {false};
        for (size_t i = 0; i < v->n; i++) {
            uint32_t s = v->v[i].stream;
            if (seen[s]) continue;
            seen[s] = true;
            size_t total = 0;
            for (size_t j = i; j < v->n; j++)
                total += v->v[j].stream == s;
            for (size_t done = 0, j = i; done < total;) {
                size_t k = total - done < ACKS_PER_CMD ? total - done : ACKS_PER_CMD;
                if (pass == 0) {
                    ew__rd_put_num(b, '*', 3 + k);
                    ew__rd_put_str(b, "XACK");
                    ew__rd_put_arg(b, c->streams[s].key, c->streams[s].key_len);
                    ew__rd_put_str(b, c->group);
                } else {
                    ew__rd_put_num(b, '*', 6 + k);
                    ew__rd_put_str(b, "XCLAIM");
                    ew__rd_put_arg(b, c->streams[s].key, c->streams[s].key_len);
                    ew__rd_put_str(b, c->group);
                    ew__rd_put_str(b, c->name);
                    ew__rd_put_str(b, "0");
                }
                for (size_t put = 0; put < k; j++)
                    if (v->v[j].stream == s) {
                        ew__rd_put_str(b, v->v[j].id);
                        put++;
                    }
                if (pass == 1) ew__rd_put_str(b, "JUSTID");
                done += k;
                ncmd++;
            }
        }
    }
    return ncmd;
}

/* Entries in flight for longer than half of REDIS_CLAIM_IDLE_MS: refreshed now (XCLAIM with
 * min-idle 0 resets their idle time), so that no other consumer claims them while a handler
 * still works on them. Under mu. */
static void collect_stale_locked(rconsumer *c, rackv *h, int64_t now)
{
    int64_t limit = now - c->rb->claim_idle_ms * 1000000 / 2;
    while (c->head && c->head->since_ns < limit && h->n < 65536) {
        rmsg *m = c->head;
        if (rackv_push(h, m->stream, m->id)) break;
        m->since_ns = now;
        ew__rd_list_unlink(c, m);
        ew__rd_list_append(c, m);
    }
}

/* Sleeps ms on the acker's condition variable (mu held). */
static void acker_sleep_locked(rconsumer *c, int ms)
{
    struct timespec ts = ew__mono_deadline(ms);
    while (pthread_cond_timedwait(&c->ack_cv, &c->mu, &ts) != ETIMEDOUT)
        if (c->ack_stop) break;
}

/* Sends the acknowledgements the dispatcher's done() calls queue, as they come: while one batch
 * is on the wire the next one gathers, so batches grow with the load. Also refreshes entries
 * held long. Runs until close(), after the reader stopped, so that the drain is acknowledged. */
void *ew__rd_acker_main(void *arg)
{
    rconsumer *c = arg;
    redis_bus *rb = c->rb;
    redisContext *conn = NULL;
    int backoff = 0;
    bool was_down = false;
    rackv hb = {0};
    ew_buf b;
    ew_buf_init(&b);
    int64_t hb_period_ns = rb->claim_idle_ms * 1000000 / 4;
    int64_t next_hb = ew_mono_ns() + hb_period_ns;
    int64_t give_up = 0; /* once closing: when unsent acknowledgements are abandoned */
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (!c->sending.n && !hb.n) {
            while (!c->acks.n && !c->ack_stop && ew_mono_ns() < next_hb) {
                c->ack_wait = true;
                struct timespec ts = ew__mono_deadline((next_hb - ew_mono_ns()) / 1000000 + 1);
                pthread_cond_timedwait(&c->ack_cv, &c->mu, &ts);
            }
            c->ack_wait = false;
            if (c->ack_stop && !c->acks.n) break;
        }
        if (!c->sending.n) {
            rackv t = c->sending;
            c->sending = c->acks;
            c->acks = t;
            c->acks.n = 0;
        }
        int64_t now = ew_mono_ns();
        if (c->ack_stop) {
            hb.n = 0;
            if (!give_up)
                give_up = now + (int64_t)(rb->connect_ms < 1000 ? 1000 : rb->connect_ms) * 1000000;
            if (now > give_up) {
                ew__bus_log(rb->bus, EW_LOG_WARN,
                            "redis: group %s: %zu acknowledgements not sent before close; those "
                            "entries will be delivered again",
                            c->group, c->sending.n + c->acks.n);
                c->sending.n = c->acks.n = 0;
                break;
            }
        } else if (now >= next_hb) {
            collect_stale_locked(c, &hb, now);
            next_hb = now + hb_period_ns;
        }
        ew_buf_reset(&b);
        size_t ncmd = format_acks(c, &c->sending, &hb, &b);
        pthread_mutex_unlock(&c->mu);

        bool ok = ncmd == 0;
        if (ncmd && !conn) {
            ew_error e = {0};
            if (!(conn = ew__rd_rconnect(rb, rb->io_ms, false, &e))) {
                if (!was_down)
                    ew__bus_log(rb->bus, EW_LOG_WARN,
                                "redis: acknowledgements of group %s wait: %s; retrying", c->group,
                                e.msg);
                was_down = true;
                backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            } else {
                if (was_down)
                    ew__bus_log(rb->bus, EW_LOG_INFO,
                                "redis: acknowledgements of group %s flow again", c->group);
                was_down = false;
                backoff = 0;
            }
        }
        if (ncmd && conn) {
            redisReply *stack[32];
            redisReply **r = ncmd <= 32 ? stack : malloc(ncmd * sizeof *r);
            if (!r) {
                backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            } else if (!ew__rd_rexchange(conn, &b, r, ncmd)) {
                ew__bus_log(rb->bus, EW_LOG_WARN,
                            "redis: acknowledgements of group %s: connection lost: %s", c->group,
                            conn->errstr);
                ew__rd_conn_free(conn);
                conn = NULL;
                was_down = true;
                backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
            } else {
                ok = true;
                for (size_t i = 0; i < ncmd; i++)
                    if (r[i]->type == REDIS_REPLY_ERROR &&
                        !ew__rd_reply_err_starts(r[i], "NOGROUP"))
                        ew__bus_log(rb->bus, EW_LOG_ERROR,
                                    "redis: acknowledging entries of group %s: %s", c->group,
                                    r[i]->str);
            }
            if (r) ew__rd_free_replies(r, ncmd);
            if (r != stack) free(r);
        }
        pthread_mutex_lock(&c->mu);
        if (ok) {
            c->sending.n = 0;
            hb.n = 0;
        } else {
            acker_sleep_locked(c, backoff ? backoff : BACKOFF_MIN_MS);
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (conn) ew__rd_conn_free(conn);
    free(hb.v);
    ew_buf_release(&b);
    return NULL;
}

#else
typedef int ew__redis_consumer_unused;
#endif
