/* eventwire — the RabbitMQ backend, consuming: the transport of each group's consumer core
 * (consumer.h: its thread, reconnection, window and in-order acknowledgements): connect and
 * consume, read deliveries, basic.ack (multiple=true for a run), basic.reject to requeue. */
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
#include "bus/consumer.h"
#include "bus/rabbitmq.h"
#include "bus/receive.h"
#include "bus/wire.h"
#include "eventwire/clock.h"

/* ---- consuming ---------------------------------------------------------------------------- */

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

/* A message through the consumer core (consumer.h), by the CloudEvents AMQP binding: its body,
 * content type and every application property as received; the delivery tag settles it. */
static void receive(consumer *c, uint64_t tag, const amqp_message_t *m, const char *rkey,
                    const char *exchange)
{
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
    ew__consumer_receive(c->core, &rm, (ew__ack_token){.a = tag});
    if (hs != local) free(hs);
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
    receive(c, tag, &m, rkey, exchange);
    amqp_destroy_message(&m);
    return 0;
}

/* ---- the transport (consumer.h) -------------------------------------------------------------- */

/* ops->fetch: reads what the broker sent, up to FRAMES_PER_STEP frames and max deliveries; when
 * nothing was there, waits for the socket or the core's wake-up. */
static int t_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    consumer *c = t;
    bool busy = false;
    size_t got = 0;
    for (int i = 0; i < FRAMES_PER_STEP && got < max; i++) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT) break;
        if (rc != AMQP_STATUS_OK)
            return ew_error_set(err, EW_EIO, "reading from the broker: %s", amqp_error_string2(rc));
        busy = true;
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD:
            if ((rc = on_deliver(c, f.payload.method.decoded, err))) return rc;
            got++;
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
    if (busy || amqp_data_in_buffer(c->st) || amqp_frames_enqueued(c->st)) return 0;
    struct pollfd p[2] = {{.fd = ew__consumer_wake_fd(c->core), .events = POLLIN},
                          {.fd = amqp_get_sockfd(c->st), .events = POLLIN}};
    poll(p, 2, wait_ms);
    return 0;
}

/* ops->settle: basic.ack, with multiple=true for a run (the core names its newest tag, and every
 * older tag is acked or rejected already: multiple=true never names one still being handled). */
static int t_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    consumer *c = t;
    int rc = amqp_basic_ack(c->st, CHANNEL, tok->a, upto && count > 1);
    if (rc) return ew_error_set(err, EW_EIO, "sending acks: %s", amqp_error_string2(rc));
    return 0;
}

/* ops->release: back to the queue, for this or another consumer. */
static int t_release(void *t, const ew__ack_token *tok, ew_error *err)
{
    consumer *c = t;
    int rc = amqp_basic_reject(c->st, CHANNEL, tok->a, true);
    if (rc) return ew_error_set(err, EW_EIO, "sending basic.reject: %s", amqp_error_string2(rc));
    return 0;
}

/* ops->stop_fetching: no more deliveries; what still arrives is released back to the queue. The
 * connection stays up to acknowledge what the handlers finish while the bus drains. */
static int t_stop_fetching(void *t, ew_error *err)
{
    consumer *c = t;
    amqp_basic_cancel_t m = {.consumer_tag = amqp_cstring_bytes(c->ctag), .nowait = 0};
    int rc = amqp_send_method(c->st, CHANNEL, AMQP_BASIC_CANCEL_METHOD, &m);
    if (rc) return ew_error_set(err, EW_EIO, "cancelling the consumer: %s", amqp_error_string2(rc));
    return 0;
}

static void t_disconnect(void *t, bool closing)
{
    consumer *c = t;
    if (closing)
        ew__mq_conn_close(c->st);
    else if (c->st)
        amqp_destroy_connection(c->st);
    c->st = NULL;
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

/* ops->connect: connects, declares the queue and its bindings again (a broker that lost them gets
 * them back), and starts consuming. */
static int t_connect(void *t, ew_error *err)
{
    consumer *c = t;
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
    return 0;
fail:
    amqp_destroy_connection(st);
    return rc;
}

static const ew__consumer_ops transport = {
    .connect = t_connect,
    .fetch = t_fetch,
    .settle = t_settle,
    .stop_fetching = t_stop_fetching,
    .disconnect = t_disconnect,
    .release = t_release,
    .settle_one = true, /* an unfinished delivery must not hold back the prefetch window */
    .backoff_min_ms = BACKOFF_MIN_MS,
    .backoff_max_ms = CONS_BACKOFF_MAX_MS,
    .idle_ms = IDLE_POLL_MS,
};

void ew__mq_consumer_free(consumer *c)
{
    if (!c) return;
    ew__consumer_free(c->core);
    for (size_t i = 0; i < c->npatterns; i++)
        free(c->patterns[i]);
    free(c->patterns);
    free(c->ctag);
    free(c->group);
    free(c->queue);
    free(c->what);
    free(c);
}

consumer *ew__mq_consumer_new(rmq *r, const char *group, const char *queue)
{
    consumer *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->r = r;
    snprintf(c->thread, sizeof c->thread, "ewq:%.11s", group);
    c->group = strdup(group);
    c->queue = strdup(queue);
    if (!c->group || !c->queue || asprintf(&c->what, "rabbitmq: consumer of queue %s", queue) < 0) {
        c->what = NULL;
        ew__mq_consumer_free(c);
        return NULL;
    }
    ew__consumer_conf conf = {
        .bus = r->bus,
        .group = c->group,
        .what = c->what,
        .thread = c->thread,
        .max_inflight = (size_t)r->max_in_flight,
        .max_bytes = r->max_bytes,
        .ops = &transport,
        .t = c,
    };
    if (ew__consumer_new(&c->core, &conf, NULL)) {
        ew__mq_consumer_free(c);
        return NULL;
    }
    return c;
}

#else
typedef int ew__rabbitmq_consume_unused;
#endif
