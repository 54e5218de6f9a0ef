/* eventwire — the RabbitMQ backend, publishing: the shared publisher connection, each batch
 * encoded by the AMQP binding and published with confirms, returned messages counted as failed. */
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

/* ---- publishing --------------------------------------------------------------------------- */

/* Drops the publisher's connection; the next publish reconnects, at once the first time. */
void ew__mq_pub_down(rmq *r)
{
    amqp_destroy_connection(r->pst);
    r->pst = NULL;
    r->pnext_try_ns = 0;
}

/* A failure that leaves the publisher's connection unusable: says why (in err and the log),
 * drops the connection, returns code. */
static int pub_fail(rmq *r, ew_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int pub_fail(rmq *r, ew_error *err, int code, const char *fmt, ...)
{
    ew_error e = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    ew__bus_log(r->bus, EW_LOG_WARN, "rabbitmq: publisher dropped its connection: %s", e.msg);
    ew__mq_pub_down(r);
    if (err) *err = e;
    return code;
}

/* Before a batch or a declaration: a connection that the broker closed while we were idle (a
 * restart, say) is found here and replaced at once, instead of failing the call. Nothing is
 * outstanding on it, so whatever frame is waiting is the broker closing it. Under pmu. */
void ew__mq_pub_check_idle(rmq *r)
{
    while (r->pst) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        int rc = amqp_simple_wait_frame_noblock(r->pst, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT) return;
        bool closing =
            rc != AMQP_STATUS_OK || (f.frame_type == AMQP_FRAME_METHOD &&
                                     (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                                      f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD));
        if (closing) {
            ew__bus_log(r->bus, EW_LOG_INFO,
                        "rabbitmq: the broker at %s closed the idle publisher connection; "
                        "reconnecting",
                        r->addr);
            ew__mq_pub_down(r);
        }
    }
}

/* Connects the publisher when it is down, with back-off between failed attempts. Under pmu. */
int ew__mq_pub_ensure(rmq *r, ew_error *err)
{
    if (r->pst) return 0;
    int64_t now = ew_mono_ns();
    if (now < r->pnext_try_ns)
        return ew_error_set(err, EW_ECONNECT, "%s; next attempt in %lld ms", r->pwhy,
                            (long long)((r->pnext_try_ns - now) / 1000000 + 1));
    amqp_connection_state_t st;
    int rc = ew__mq_conn_open(r, &st, err);
    if (!rc && !(rc = ew__mq_declare_topology(r, st, err))) {
        amqp_confirm_select(st, CHANNEL);
        rc = ew__mq_rpc_check(st, EW_EIO, err, "enabling publisher confirms");
    }
    if (rc) {
        if (st) amqp_destroy_connection(st);
        snprintf(r->pwhy, sizeof r->pwhy, "%s", err ? err->msg : "cannot connect");
        r->pnext_try_ns = ew_mono_ns() + (int64_t)ew__jitter_ms(r->pbackoff_ms) * 1000000;
        r->pbackoff_ms = ew__backoff_next(r->pbackoff_ms, BACKOFF_MIN_MS, PUB_BACKOFF_MAX_MS);
        return rc == EW_EIO ? EW_ECONNECT : rc;
    }
    if (r->pbackoff_ms > BACKOFF_MIN_MS)
        ew__bus_log(r->bus, EW_LOG_INFO, "rabbitmq: publisher connected again to %s", r->addr);
    r->pst = st;
    r->pseq = 0;
    r->pbackoff_ms = BACKOFF_MIN_MS;
    return 0;
}

/* The fate of each message of a batch. A returned message is acked after its basic.return: it
 * is settled then, and failed. */
enum { C_PENDING = 0, C_ACK, C_NACK, C_RETURNED, C_RETURNED_SETTLED };

/* Marks the confirm of delivery tag `tag` (and every earlier one when multiple) in state[] of
 * the batch whose first sequence number is first; *low is the first index that may be unsettled.
 * Returns how many were settled. */
static size_t confirm_mark(unsigned char *state, size_t *low, uint64_t first, size_t n,
                           uint64_t tag, bool multiple, unsigned char v)
{
    size_t settled = 0;
    if (tag < first || tag - first >= n) return 0;
    size_t last = (size_t)(tag - first);
    for (size_t i = multiple ? *low : last; i <= last; i++) {
        if (state[i] == C_PENDING) {
            state[i] = v;
            settled++;
        } else if (state[i] == C_RETURNED) {
            state[i] = C_RETURNED_SETTLED;
            settled++;
        }
    }
    while (*low < n && state[*low] != C_PENDING && state[*low] != C_RETURNED)
        ++*low;
    return settled;
}

/* Reads confirms until every message of the batch [first, first + n) is settled. Under pmu. */
static int pub_wait_confirms(rmq *r, uint64_t first, size_t n, unsigned char *state,
                             const ew_event *const *evs, ew_error *err)
{
    size_t settled = 0, low = 0;
    int64_t deadline = ew_mono_ns() + (int64_t)OP_TIMEOUT_MS * 1000000;
    while (settled < n) {
        int64_t left = (deadline - ew_mono_ns()) / 1000000;
        if (left <= 0) {
            return pub_fail(r, err, EW_ETIMEDOUT,
                            "no confirm from RabbitMQ at %s within %d ms for %zu of %zu events",
                            r->addr, OP_TIMEOUT_MS, n - settled, n);
        }
        struct timeval tv = ew__ms_tv(left);
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(r->pst, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) continue;
        if (rc != AMQP_STATUS_OK) {
            return pub_fail(r, err, EW_EIO, "waiting for RabbitMQ's confirms at %s: %s", r->addr,
                            amqp_error_string2(rc));
        }
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            settled += confirm_mark(state, &low, first, n, a->delivery_tag, a->multiple, C_ACK);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            settled += confirm_mark(state, &low, first, n, a->delivery_tag, a->multiple, C_NACK);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            /* Only mandatory messages come back, and ours are not: should one come back, it
             * failed. Its message id names it; its ack follows and settles it. */
            amqp_message_t m;
            amqp_rpc_reply_t rr = amqp_read_message(r->pst, f.channel, &m, 0);
            if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
                return pub_fail(r, err, EW_EIO, "reading a returned message from %s", r->addr);
            }
            if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG)
                for (size_t i = 0; i < n; i++) {
                    const char *id = ew_event_id(evs[i]);
                    if (state[i] == C_PENDING && strlen(id) == m.properties.message_id.len &&
                        memcmp(id, m.properties.message_id.bytes, m.properties.message_id.len) ==
                            0) {
                        state[i] = C_RETURNED;
                        break;
                    }
                }
            amqp_destroy_message(&m);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_rpc_reply_t rr = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                                   .reply = f.payload.method};
            char why[200];
            ew__mq_reply_text(rr, why, sizeof why);
            return pub_fail(r, err, EW_EIO, "publishing to %s: %s", r->addr, why);
        }
        default:
            break;
        }
    }
    amqp_maybe_release_buffers(r->pst);
    return 0;
}

int ew__mq_rmq_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                       const ew__batch *batch, ew_error *err)
{
    rmq *r = self;
    *npublished = 0;
    ew__wire_out one_out;
    unsigned char one_state;
    ew__wire_out *outs = n == 1 ? &one_out : calloc(n, sizeof *outs);
    unsigned char *state = n == 1 ? &one_state : calloc(n, 1);
    int rc = 0;
    size_t encoded = 0;
    if (!outs || !state) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    /* Encode everything first, by the AMQP binding (binding.c: body, content type, any
     * cloudEvents_ application properties, the size checked): a batch with an event we refuse
     * publishes none of it. */
    for (; encoded < n; encoded++) {
        size_t i = encoded;
        ew_error e = {0};
        if ((rc = ew__binding_encode(evs[i], EW__BINDING_AMQP, r->content_mode, r->max_bytes,
                                     &outs[i], &e))) {
            ew_error_set(err, rc, "event %zu of %zu: %s: nothing published", i, n, e.msg);
            goto out;
        }
        state[i] = C_PENDING;
    }

    pthread_mutex_lock(&r->pmu);
    ew__mq_pub_check_idle(r);
    if ((rc = ew__mq_pub_ensure(r, err))) goto unlock;
    uint64_t first = r->pseq + 1;
    for (size_t i = 0; i < n; i++) {
        const ew_event *ev = evs[i];
        const char *corr = ew_event_correlation_id(ev);
        amqp_basic_properties_t p = {
            ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                      AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                      AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG,
            .content_type = amqp_cstring_bytes(outs[i].content_type),
            .delivery_mode = AMQP_DELIVERY_PERSISTENT,
            .message_id = amqp_cstring_bytes(ew_event_id(ev)),
            .timestamp = (uint64_t)(ew_event_time_us(ev) / 1000000),
            .type = amqp_cstring_bytes(ew_event_type(ev)),
            .app_id = amqp_cstring_bytes(ew_event_source(ev)),
        };
        if (corr) {
            p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
            p.correlation_id = amqp_cstring_bytes(corr);
        }
        /* the binding's headers as application properties: strings, and integers and booleans
         * as their own types */
        amqp_table_entry_t hs_s[16], *hs = hs_s;
        size_t nh = outs[i].nheaders;
        if (nh > 16 && !(hs = malloc(nh * sizeof *hs))) {
            rc =
                ew_error_set(err, EW_ENOMEM, "out of memory: event %zu of %zu not published", i, n);
            goto unlock;
        }
        for (size_t h = 0; h < nh; h++) {
            const ew__header *x = &outs[i].headers[h];
            hs[h] = (amqp_table_entry_t){
                .key = {.len = x->name_len, .bytes = (void *)x->name},
                .value = {.kind = AMQP_FIELD_KIND_UTF8,
                          .value.bytes = {.len = x->value_len, .bytes = (void *)x->value}}};
            if (x->kind == EW__HV_INT)
                hs[h].value =
                    (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = x->num};
            else if (x->kind == EW__HV_BOOL)
                hs[h].value = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BOOLEAN,
                                                   .value.boolean = (int)x->num};
        }
        if (nh) {
            p._flags |= AMQP_BASIC_HEADERS_FLAG;
            p.headers = (amqp_table_t){.num_entries = (int)nh, .entries = hs};
        }
        amqp_bytes_t body = {.len = outs[i].body_len, .bytes = outs[i].body};
        int arc = amqp_basic_publish(r->pst, CHANNEL, amqp_cstring_bytes(r->exchange),
                                     amqp_cstring_bytes(ew_event_type(ev)), 0, 0, &p, body);
        if (hs != hs_s) free(hs);
        if (arc != AMQP_STATUS_OK) {
            rc = pub_fail(r, err, EW_EIO, "publishing event %zu of %zu to %s: %s", i, n, r->addr,
                          amqp_error_string2(arc));
            goto unlock;
        }
    }
    r->pseq += n;
    rc = pub_wait_confirms(r, first, n, state, evs, err);
unlock:
    pthread_mutex_unlock(&r->pmu);
    if (!rc) {
        size_t ok = 0;
        while (ok < n && state[ok] == C_ACK)
            ok++;
        *npublished = ok;
        if (ok < n)
            rc = ew_error_set(err, EW_EIO, "event %zu of %zu (%s) not published: %s", ok, n,
                              ew_event_id(evs[ok]),
                              state[ok] == C_NACK ? "the broker refused it (basic.nack)"
                                                  : "the broker returned it unroutable");
    }
out:
    for (size_t i = 0; i < encoded; i++)
        ew__wire_out_release(&outs[i]);
    if (n != 1) {
        free(outs);
        free(state);
    }
    return rc;
}

#else
typedef int ew__rabbitmq_publish_unused;
#endif
