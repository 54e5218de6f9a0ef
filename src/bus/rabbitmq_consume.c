/* eventwire — the RabbitMQ backend, consuming: one thread and connection per group, messages
 * through the receive path to the dispatcher, acknowledgements coalesced in delivery order, and
 * reconnection with back-off. */
#ifdef EW_HAVE_RABBITMQ

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/rabbitmq.h"
#include "bus/receive.h"
#include "bus/wire.h"
#include "eventwire/clock.h"

/* ---- consuming ---------------------------------------------------------------------------- */

void ew__mq_wake(consumer *c)
{
    uint64_t one = 1;
    ssize_t w = write(c->efd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is already non-zero, the thread wakes anyway */
}

/* Runs on a dispatcher worker (or the consumer thread): queues the tag for the consumer thread,
 * which owns the connection. */
static void rmq_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    rmq_msg *m = (rmq_msg *)dl;
    consumer *c = m->c;
    pthread_mutex_lock(&c->mu);
    if (outcome == EW_DELIVERY_ACK) {
        if (c->nacks == c->capacks) {
            size_t cap = c->capacks ? c->capacks * 2 : 64;
            ack_item *a = realloc(c->acks, cap * sizeof *a);
            if (a) {
                c->acks = a;
                c->capacks = cap;
            }
        }
        /* Out of memory: the message stays unacknowledged and comes back after a reconnect. */
        if (c->nacks < c->capacks) c->acks[c->nacks++] = (ack_item){m->tag, m->gen};
    }
    atomic_fetch_sub(&c->inflight, 1);
    if (!c->wake_pending) {
        c->wake_pending = true;
        ew__mq_wake(c);
    }
    pthread_mutex_unlock(&c->mu);
    free(m);
}

static int out_push(consumer *c, uint64_t tag)
{
    if (c->nout == c->capout) {
        size_t cap = c->capout ? c->capout * 2 : 256;
        uint64_t *t = realloc(c->out_tags, cap * sizeof *t);
        if (!t) return EW_ENOMEM;
        c->out_tags = t;
        bool *d = realloc(c->out_done, cap * sizeof *d);
        if (!d) return EW_ENOMEM;
        c->out_done = d;
        c->capout = cap;
    }
    c->out_tags[c->nout] = tag;
    c->out_done[c->nout] = false;
    c->nout++;
    return 0;
}

static long out_find(const consumer *c, uint64_t tag)
{
    size_t lo = 0, hi = c->nout;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->out_tags[mid] < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->nout && c->out_tags[lo] == tag ? (long)lo : -1;
}

static void out_mark(consumer *c, uint64_t tag)
{
    long i = out_find(c, tag);
    if (i >= 0) c->out_done[i] = true;
}

static void out_remove(consumer *c, uint64_t tag)
{
    long i = out_find(c, tag);
    if (i < 0) return;
    memmove(c->out_tags + i, c->out_tags + i + 1, (c->nout - (size_t)i - 1) * sizeof *c->out_tags);
    memmove(c->out_done + i, c->out_done + i + 1, (c->nout - (size_t)i - 1) * sizeof *c->out_done);
    c->nout--;
}

/* Sends the acks of finished deliveries: one basic.ack with multiple=true for the longest run of
 * finished ones at the oldest end, one each for the others (an unfinished one, a handler backing
 * off, must not hold back the rest: the prefetch window would fill up behind it). A tag acked or
 * rejected is out of the broker's unacked set, so multiple=true never names it. */
static int out_flush(consumer *c, ew_error *err)
{
    size_t k = 0;
    while (k < c->nout && c->out_done[k])
        k++;
    int rc = 0;
    if (k) rc = amqp_basic_ack(c->st, CHANNEL, c->out_tags[k - 1], k > 1);
    size_t w = 0;
    for (size_t i = k; i < c->nout && !rc; i++) {
        if (c->out_done[i]) {
            rc = amqp_basic_ack(c->st, CHANNEL, c->out_tags[i], 0);
        } else {
            c->out_tags[w] = c->out_tags[i];
            c->out_done[w++] = false;
        }
    }
    if (rc) return ew_error_set(err, EW_EIO, "sending acks: %s", amqp_error_string2(rc));
    c->nout = w;
    return 0;
}

/* Takes the acks queued by done() and sends those of the current connection (older ones died
 * with their connection: the broker redelivers those messages). */
static int take_acks(consumer *c, ew_error *err)
{
    uint64_t cnt;
    ssize_t rd = read(c->efd, &cnt, sizeof cnt); /* first: a wake after the swap is kept */
    (void)rd;
    pthread_mutex_lock(&c->mu);
    ack_item *a = c->acks;
    size_t n = c->nacks, cap = c->capacks;
    c->acks = c->scratch; /* the two buffers trade places */
    c->capacks = c->capscratch;
    c->scratch = a;
    c->capscratch = cap;
    c->nacks = 0;
    c->wake_pending = false;
    pthread_mutex_unlock(&c->mu);
    if (!c->st) return 0;
    for (size_t i = 0; i < n; i++)
        if (a[i].gen == c->gen) out_mark(c, a[i].tag);
    return out_flush(c, err);
}

static int reject(consumer *c, uint64_t tag, bool requeue, ew_error *err)
{
    out_remove(c, tag);
    int rc = amqp_basic_reject(c->st, CHANNEL, tag, requeue);
    if (rc) return ew_error_set(err, EW_EIO, "sending basic.reject: %s", amqp_error_string2(rc));
    return 0;
}

/* ew__receive's question while the dead letter sink refuses a message. */
static bool recv_stopping(void *ud)
{
    consumer *c = ud;
    pthread_mutex_lock(&c->mu);
    bool s = c->stopping;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* An application property as the binding sees it: its type kept where the binding maps it. */
static ew__header amqp_header(const amqp_table_entry_t *t)
{
    ew__header h = {.name = t->key.bytes, .name_len = t->key.len, .kind = EW__HV_OTHER};
    const amqp_field_value_t *v = &t->value;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        h.kind = EW__HV_BYTES;
        h.value = v->value.bytes.bytes ? v->value.bytes.bytes : "";
        h.value_len = v->value.bytes.len;
        break;
    case AMQP_FIELD_KIND_BOOLEAN:
        h.kind = EW__HV_BOOL;
        h.num = v->value.boolean ? 1 : 0;
        break;
    case AMQP_FIELD_KIND_I8:
        h.kind = EW__HV_INT, h.num = v->value.i8;
        break;
    case AMQP_FIELD_KIND_U8:
        h.kind = EW__HV_INT, h.num = v->value.u8;
        break;
    case AMQP_FIELD_KIND_I16:
        h.kind = EW__HV_INT, h.num = v->value.i16;
        break;
    case AMQP_FIELD_KIND_U16:
        h.kind = EW__HV_INT, h.num = v->value.u16;
        break;
    case AMQP_FIELD_KIND_I32:
        h.kind = EW__HV_INT, h.num = v->value.i32;
        break;
    case AMQP_FIELD_KIND_U32:
        h.kind = EW__HV_INT, h.num = v->value.u32;
        break;
    case AMQP_FIELD_KIND_I64:
        h.kind = EW__HV_INT, h.num = v->value.i64;
        break;
    case AMQP_FIELD_KIND_U64:
        if (v->value.u64 <= INT64_MAX) h.kind = EW__HV_INT, h.num = (int64_t)v->value.u64;
        break;
    case AMQP_FIELD_KIND_TIMESTAMP:
        if (v->value.u64 <= INT64_MAX) h.kind = EW__HV_TIME_S, h.num = (int64_t)v->value.u64;
        break;
    default:
        break; /* tables, arrays, floats, decimals, void: not mapped */
    }
    return h;
}

/* A message through the receive path (receive.h), by the CloudEvents AMQP binding: its body,
 * content type and every application property as received. */
static ew__recv_result receive(consumer *c, uint64_t tag, const amqp_message_t *m, const char *rkey,
                               const char *exchange, ew_event **ev)
{
    rmq *r = c->r;
    const amqp_basic_properties_t *p = &m->properties;
    size_t nh = (p->_flags & AMQP_BASIC_HEADERS_FLAG) && p->headers.num_entries > 0
                    ? (size_t)p->headers.num_entries
                    : 0;
    ew__header local[32], *hs = local;
    if (nh > 32 && !(hs = malloc(nh * sizeof *hs))) {
        hs = local;
        nh = 32; /* out of memory: the first 32 (the binding may then refuse it) */
    }
    for (size_t i = 0; i < nh; i++)
        hs[i] = amqp_header(&p->headers.entries[i]);
    char id[AMQP_NAME_MAX + 1] = "";
    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && p->message_id.len <= 200 &&
        ew_utf8_valid(p->message_id.bytes, p->message_id.len))
        snprintf(id, sizeof id, "%.*s", (int)p->message_id.len, (const char *)p->message_id.bytes);
    char where[3 * AMQP_NAME_MAX + 100];
    snprintf(where, sizeof where, "rabbitmq queue=%s delivery-tag=%llu exchange=%s routing-key=%s",
             c->queue, (unsigned long long)tag, exchange, rkey);
    bool has_ct = (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) != 0;
    ew__recv_msg rm = {
        .wire = {.binding = EW__BINDING_AMQP,
                 .body = m->body.bytes,
                 .body_len = m->body.len,
                 .content_type = has_ct ? p->content_type.bytes : NULL,
                 .content_type_len = has_ct ? p->content_type.len : 0,
                 .headers = hs,
                 .nheaders = nh},
        .group = c->group,
        .type_hint = *rkey ? rkey : NULL,
        .id_hint = id[0] ? id : NULL,
        .transport = where,
    };
    ew__recv_result res = ew__receive(r->bus, &rm, r->max_bytes, recv_stopping, c, ev);
    if (hs != local) free(hs);
    return res;
}

/* Hands a decoded event to the dispatcher, unless the consumer is stopping (then it goes back to
 * the queue for another consumer). */
static int dispatch_event(consumer *c, uint64_t tag, const ew_event *ev, ew_error *err)
{
    rmq *r = c->r;
    pthread_mutex_lock(&c->mu);
    bool stopping = c->stopping;
    if (!stopping) c->in_deliver = true;
    pthread_mutex_unlock(&c->mu);
    if (stopping) return reject(c, tag, true, err);
    rmq_msg *m = calloc(1, sizeof *m);
    int rc = EW_ENOMEM;
    ew_error de = {0};
    if (m) {
        m->dl.event = ev;
        m->dl.group = c->group;
        m->dl.done = rmq_done;
        m->dl.token = m;
        m->c = c;
        m->tag = tag;
        m->gen = c->gen;
        atomic_fetch_add(&c->inflight, 1);
        rc = ew__dispatch_deliver(r->disp, &m->dl, &de);
        if (rc) {
            atomic_fetch_sub(&c->inflight, 1);
            free(m);
        }
    } else {
        ew_error_set(&de, EW_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&c->mu);
    c->in_deliver = false;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (!rc) return 0;
    /* Nothing was queued: a passing failure goes back to the queue, anything else to the
     * broker's dead-letter exchange. */
    ew__bus_log(r->bus, EW_LOG_ERROR, "rabbitmq: cannot hand event %s to the handlers of %s: %s",
                ew_event_id(ev), c->group, de.msg);
    return reject(c, tag, rc == EW_ENOMEM, err);
}

static int on_deliver(consumer *c, const amqp_basic_deliver_t *d, ew_error *err)
{
    uint64_t tag = d->delivery_tag;
    char rkey[AMQP_NAME_MAX + 1], exchange[AMQP_NAME_MAX + 1];
    size_t kl = d->routing_key.len < AMQP_NAME_MAX ? d->routing_key.len : AMQP_NAME_MAX;
    memcpy(rkey, d->routing_key.bytes, kl);
    rkey[kl] = '\0';
    kl = d->exchange.len < AMQP_NAME_MAX ? d->exchange.len : AMQP_NAME_MAX;
    memcpy(exchange, d->exchange.bytes, kl);
    exchange[kl] = '\0';
    amqp_message_t m;
    amqp_rpc_reply_t rr = amqp_read_message(c->st, CHANNEL, &m, 0);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        char why[200];
        ew__mq_reply_text(rr, why, sizeof why);
        return ew_error_set(err, EW_EIO, "reading a message: %s", why);
    }
    int rc = out_push(c, tag);
    if (rc) {
        amqp_destroy_message(&m);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    ew_event *ev = NULL;
    switch (receive(c, tag, &m, rkey, exchange, &ev)) {
    case EW__RECV_EVENT:
        rc = dispatch_event(c, tag, ev, err);
        ew_event_unref(ev);
        break;
    case EW__RECV_DEAD: /* in the dead letter sink: acknowledged */
        out_mark(c, tag);
        break;
    case EW__RECV_STOPPED: /* the sink refused it until the stop: back to the queue */
        rc = reject(c, tag, true, err);
        break;
    }
    amqp_destroy_message(&m);
    return rc;
}

static bool may_read(consumer *c, bool stopping)
{
    return stopping || atomic_load(&c->inflight) < c->r->max_in_flight;
}

/* Reads what the broker sent, up to FRAMES_PER_STEP frames; *busy when something came. Nonzero
 * when the connection is unusable. */
static int cons_read(consumer *c, bool stopping, bool *busy, ew_error *err)
{
    for (int i = 0; i < FRAMES_PER_STEP && may_read(c, stopping); i++) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT) break;
        if (rc != AMQP_STATUS_OK)
            return ew_error_set(err, EW_EIO, "reading from the broker: %s", amqp_error_string2(rc));
        *busy = true;
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD:
            if ((rc = on_deliver(c, f.payload.method.decoded, err))) return rc;
            break;
        case AMQP_BASIC_CANCEL_METHOD: /* the queue was deleted, or the node went down */
            return ew_error_set(err, EW_EIO, "the broker cancelled the consumer of queue %s",
                                c->queue);
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_rpc_reply_t rr = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                                   .reply = f.payload.method};
            char why[200];
            ew__mq_reply_text(rr, why, sizeof why);
            if (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
                amqp_connection_close_ok_t ok = {0};
                amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            }
            return ew_error_set(err, EW_EIO, "%s", why);
        }
        default: /* basic.consume-ok, basic.cancel-ok, basic.qos-ok, ... */
            break;
        }
    }
    if (!amqp_frames_enqueued(c->st)) amqp_maybe_release_buffers(c->st);
    return 0;
}

/* Workers of the group's subscriptions in this bus, for the prefetch window. */
static int group_workers(consumer *c)
{
    int workers = 0;
    ew_handler_stats s;
    for (size_t i = 0; ew_bus_handler_stats(c->r->bus, i, &s) == 0; i++)
        if (strcmp(s.group, c->group) == 0) workers += s.consumers;
    return workers > 0 ? workers : 1;
}

/* Connects, declares the queue and its bindings again (a broker that lost them gets them
 * back), and starts consuming. */
static int cons_connect(consumer *c, ew_error *err)
{
    rmq *r = c->r;
    amqp_connection_state_t st;
    int rc = ew__mq_conn_open(r, &st, err);
    if (rc) return rc;
    if ((rc = ew__mq_declare_topology(r, st, err))) goto fail;
    pthread_mutex_lock(&r->mu);
    size_t n = c->npatterns;
    char **keys = calloc(n ? n : 1, sizeof *keys);
    for (size_t i = 0; keys && i < n; i++)
        if (!(keys[i] = strdup(c->patterns[i]))) n = i;
    pthread_mutex_unlock(&r->mu);
    if (!keys) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    rc = ew__mq_declare_queue(r, st, c->queue, keys, n, c->ephemeral, err);
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    if (rc) goto fail;
    long prefetch = (long)group_workers(c) * PREFETCH_PER_WORKER;
    if (prefetch > r->max_in_flight) prefetch = r->max_in_flight;
    if (prefetch > 65535) prefetch = 65535;
    amqp_basic_qos(st, CHANNEL, 0, (uint16_t)prefetch, 0);
    if ((rc = ew__mq_rpc_check(st, EW_EIO, err, "setting the prefetch window (basic.qos)")))
        goto fail;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(st, CHANNEL, amqp_cstring_bytes(c->queue),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consuming from the queue '%s'", c->queue);
    if ((rc = ew__mq_rpc_check(st, EW_EIO, err, what))) goto fail;
    free(c->ctag);
    c->ctag = strndup(ok->consumer_tag.bytes, ok->consumer_tag.len);
    if (!c->ctag) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    amqp_maybe_release_buffers(st);
    c->st = st;
    c->gen++;
    c->cancelled = false;
    c->nout = 0;
    return 0;
fail:
    amqp_destroy_connection(st);
    return rc;
}

static void wait_wake(consumer *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->efd, .events = POLLIN};
    poll(&p, 1, timeout_ms);
}

static void *consumer_main(void *arg)
{
    consumer *c = arg;
    rmq *r = c->r;
    int backoff = BACKOFF_MIN_MS;
    int64_t next_try = 0;
    bool ever = false;
    for (;;) {
        ew_error e = {0};
        /* The flags first: every done() comes before quit, so the acks taken after seeing quit
         * are the last ones. */
        pthread_mutex_lock(&c->mu);
        bool quit = c->quit, stopping = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (take_acks(c, &e)) goto lost;
        if (quit) break;
        if (!c->st) {
            int64_t now = ew_mono_ns();
            if (stopping) {
                wait_wake(c, IDLE_POLL_MS);
            } else if (now < next_try) {
                wait_wake(c, (int)((next_try - now) / 1000000) + 1);
            } else if (cons_connect(c, &e) == 0) {
                ew__bus_log(r->bus, ever ? EW_LOG_INFO : EW_LOG_DEBUG,
                            "rabbitmq: %s consuming from queue %s at %s",
                            ever ? "reconnected:" : "started:", c->queue, r->addr);
                ever = true;
                backoff = BACKOFF_MIN_MS;
            } else {
                ew__bus_log(r->bus, EW_LOG_WARN,
                            "rabbitmq: consumer of queue %s: %s; retrying in about %d ms", c->queue,
                            e.msg, backoff);
                next_try = ew_mono_ns() + (int64_t)ew__jitter_ms(backoff) * 1000000;
                backoff = ew__backoff_next(backoff, BACKOFF_MIN_MS, CONS_BACKOFF_MAX_MS);
            }
            continue;
        }
        if (stopping && !c->cancelled) {
            /* No more deliveries; what still arrives is rejected back to the queue. The
             * connection stays up to acknowledge what the handlers finish while the bus drains. */
            amqp_basic_cancel_t m = {.consumer_tag = amqp_cstring_bytes(c->ctag), .nowait = 0};
            int rc = amqp_send_method(c->st, CHANNEL, AMQP_BASIC_CANCEL_METHOD, &m);
            c->cancelled = true;
            if (rc) {
                ew_error_set(&e, EW_EIO, "cancelling the consumer: %s", amqp_error_string2(rc));
                goto lost;
            }
        }
        bool busy = false;
        if (cons_read(c, stopping, &busy, &e)) goto lost;
        if (busy || amqp_data_in_buffer(c->st) || amqp_frames_enqueued(c->st)) continue;
        struct pollfd p[2] = {{.fd = c->efd, .events = POLLIN},
                              {.fd = amqp_get_sockfd(c->st), .events = POLLIN}};
        poll(p, may_read(c, stopping) ? 2 : 1, IDLE_POLL_MS);
        continue;
    lost:
        if (c->st) {
            ew__bus_log(r->bus, stopping ? EW_LOG_DEBUG : EW_LOG_WARN,
                        "rabbitmq: consumer of queue %s lost its connection to %s: %s; "
                        "reconnecting (unacknowledged messages will be delivered again)",
                        c->queue, r->addr, e.msg);
            amqp_destroy_connection(c->st);
            c->st = NULL;
            c->nout = 0;
            next_try = ew_mono_ns() + (int64_t)ew__jitter_ms(backoff) * 1000000;
        }
    }
    ew__mq_conn_close(c->st);
    c->st = NULL;
    return NULL;
}

int ew__mq_consumer_start(consumer *c, ew_error *err)
{
    if (c->th_started) return 0;
    int rc = pthread_create(&c->th, NULL, consumer_main, c);
    if (rc)
        return ew_error_set(err, EW_ENOMEM, "cannot start the consumer thread of %s: %s", c->group,
                            strerror(rc));
    c->th_started = true;
    return 0;
}

void ew__mq_consumer_free(consumer *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->npatterns; i++)
        free(c->patterns[i]);
    free(c->patterns);
    if (c->efd >= 0) close(c->efd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->acks);
    free(c->scratch);
    free(c->out_tags);
    free(c->out_done);
    free(c->ctag);
    free(c->group);
    free(c->queue);
    free(c);
}

consumer *ew__mq_consumer_new(rmq *r, const char *group, const char *queue)
{
    consumer *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->r = r;
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_init(&c->inflight, 0);
    c->group = strdup(group);
    c->queue = strdup(queue);
    if (c->efd < 0 || !c->group || !c->queue) {
        ew__mq_consumer_free(c);
        return NULL;
    }
    return c;
}

#else
typedef int ew__rabbitmq_consume_unused;
#endif
