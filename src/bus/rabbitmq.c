/* eventwire — the RabbitMQ backend (rabbitmq-c): a durable topic exchange RABBITMQ_EXCHANGE with
 * the event type as routing key, one durable queue `{exchange}.{group}` per subscriber group bound
 * with the group's patterns, publisher confirms, manual acknowledgements under a prefetch window,
 * and a dead-letter exchange `{exchange}.dlx` for what the broker itself rejects.
 *
 * A rabbitmq-c connection is not thread-safe, so each has one owner: publishers share one
 * connection under a mutex (it also carries the declarations of subscribe), and every subscriber
 * group has a consumer thread with a connection of its own. Dispatcher workers never touch that
 * connection: done() queues the delivery tag and wakes the consumer thread (an eventfd), which
 * sends the acknowledgements, coalescing the oldest ones into one basic.ack with multiple=true.
 * docs/bus-rabbitmq.md describes the mapping for users of the broker. */
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
#include "bus/url.h"
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"

#define CHANNEL 1
#define FRAME_MAX 131072
#define AMQP_NAME_MAX 255       /* exchange, queue and routing key names are short strings */
#define PREFETCH_PER_WORKER 64  /* prefetch = workers of the group x this, up to the max */
#define OP_TIMEOUT_MS 30000     /* a declaration, or the confirms of one batch */
#define BACKOFF_MIN_MS 100      /* reconnection back-off: doubles up to the maximum */
#define PUB_BACKOFF_MAX_MS 2000 /* a publisher fails fast while the broker is away */
#define CONS_BACKOFF_MAX_MS 5000
#define FRAMES_PER_STEP 256 /* frames a consumer reads before it sends acks again */
#define IDLE_POLL_MS 1000
#define EPHEMERAL_EXPIRES_MS 60000 /* an ephemeral group's queue, unused this long, is deleted */
#define DECODE_HANDLER "<decode>"  /* the handler named by dead letters of undecodable messages */

typedef struct rmq rmq;

typedef struct ack_item {
    uint64_t tag, gen;
} ack_item;

/* The consumer of one subscriber group: a thread, its connection, and the acknowledgements that
 * dispatcher workers hand it. */
typedef struct consumer {
    rmq *r;
    char *group, *queue;
    bool ephemeral;  /* its queue is not durable and goes with its last consumer */
    char **patterns; /* AMQP binding keys, under r->mu */
    size_t npatterns, cappatterns;
    pthread_t th;
    bool th_started;
    int efd; /* wakes the thread: acks queued, stop, quit */

    pthread_mutex_t mu; /* the members down to inflight */
    pthread_cond_t cv;  /* in_deliver went false */
    ack_item *acks;     /* done(ACK) tags waiting to be sent */
    size_t nacks, capacks;
    bool wake_pending; /* efd was written since the thread last took the acks */
    bool stopping, quit, in_deliver;
    atomic_int inflight; /* handed to the dispatcher, done() not yet called */

    /* The thread's own. */
    amqp_connection_state_t st; /* NULL while disconnected */
    uint64_t gen;               /* connections so far: delivery tags are per connection */
    char *ctag;                 /* the consumer tag the broker gave */
    bool cancelled;
    uint64_t *out_tags; /* delivered on this connection, not yet acked or rejected: ascending */
    bool *out_done;     /* ... and finished with, to be acked */
    size_t nout, capout;
    ack_item *scratch; /* the acks taken from the queue */
    size_t capscratch;
} consumer;

/* One message handed to the dispatcher. */
typedef struct rmq_msg {
    ew_delivery dl; /* first: done() gets it back */
    consumer *c;
    uint64_t tag, gen;
} rmq_msg;

struct rmq {
    ew_bus *bus;
    ew_dispatcher *disp;
    char *url_buf; /* amqp_parse_url points into it */
    struct amqp_connection_info ci;
    const char *vhost;
    char addr[300]; /* "host:port vhost /": for messages (never the password) */
    char *exchange, *dlx;
    int connect_ms, max_in_flight;
    size_t max_bytes;

    /* The publisher's connection, also used for declarations. */
    pthread_mutex_t pmu;
    amqp_connection_state_t pst; /* NULL while down */
    uint64_t pseq;               /* the last publish sequence number on pst (confirms) */
    int64_t pnext_try_ns;
    int pbackoff_ms;
    char pwhy[sizeof(((ew_error *)0)->msg)]; /* why the last connection attempt failed */

    pthread_mutex_t mu; /* the groups and their patterns; started */
    consumer **groups;
    size_t ngroups, capgroups;
    bool started;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static struct timeval ms_tv(int64_t ms)
{
    if (ms < 1) ms = 1;
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static int jitter_ms(int ms)
{
    /* +-25 %, from the clock's low bits: spreads reconnections without shared random state */
    int span = ms / 2 + 1;
    return ms - ms / 4 + (int)((uint64_t)ew_mono_ns() / 1000 % (uint64_t)span);
}

/* What an RPC reply says, in words. */
static void reply_text(amqp_rpc_reply_t rr, char *buf, size_t n)
{
    switch (rr.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, n, "no error");
        return;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, n, "no reply from the broker");
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, n, "%s", amqp_error_string2(rr.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (rr.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *m = rr.reply.decoded;
            snprintf(buf, n, "the broker closed the connection: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (rr.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *m = rr.reply.decoded;
            snprintf(buf, n, "the broker closed the channel: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            snprintf(buf, n, "unexpected method 0x%08x from the broker", rr.reply.id);
        }
        return;
    }
    snprintf(buf, n, "unknown reply");
}

/* The reply code of a server exception (406 PRECONDITION_FAILED, ...), or 0. */
static int reply_code(amqp_rpc_reply_t rr)
{
    if (rr.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION) return 0;
    if (rr.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
        return ((const amqp_connection_close_t *)rr.reply.decoded)->reply_code;
    if (rr.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
        return ((const amqp_channel_close_t *)rr.reply.decoded)->reply_code;
    return 0;
}

/* Checks the reply of the last RPC: 0, or `code` with "what: reason". A server exception (a
 * closed channel or connection) is EW_ECONFIG when the broker refused what we declared. */
static int rpc_check(amqp_connection_state_t st, int code, ew_error *err, const char *what)
{
    amqp_rpc_reply_t rr = amqp_get_rpc_reply(st);
    if (rr.reply_type == AMQP_RESPONSE_NORMAL) return 0;
    char why[200];
    reply_text(rr, why, sizeof why);
    int rcode = reply_code(rr);
    if (rcode == AMQP_PRECONDITION_FAILED || rcode == AMQP_ACCESS_REFUSED) code = EW_ECONFIG;
    return ew_error_set(err, code, "%s: %s", what, why);
}

/* Our patterns are AMQP topic patterns, except that "*" alone means every type. */
static const char *binding_key(const char *pattern)
{
    return strcmp(pattern, "*") == 0 ? "#" : pattern;
}

/* ---- connections -------------------------------------------------------------------------- */

/* A non-blocking TCP connection to the broker by the deadline (our own connect, for the reason
 * of a failure: rabbitmq-c only says "a socket error occurred"). */
static int tcp_connect(rmq *r, int64_t deadline, int *out, ew_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    char port[16];
    snprintf(port, sizeof port, "%d", r->ci.port);
    int g = getaddrinfo(r->ci.host, port, &hints, &res);
    if (g)
        return ew_error_set(err, EW_ECONNECT, "cannot connect to RabbitMQ at %s (RABBITMQ_URL): %s",
                            r->addr, gai_strerror(g));
    int why = ETIMEDOUT, fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            why = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        int e = errno;
        while (e == EINPROGRESS || e == EINTR) {
            int64_t left = (deadline - ew_mono_ns()) / 1000000;
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
            socklen_t len = sizeof e;
            if (pr > 0)
                e = getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) ? errno : e;
            else
                e = pr == 0 ? ETIMEDOUT : errno;
        }
        if (e == 0) break;
        why = e;
        close(fd);
        fd = -1;
        if (e == ETIMEDOUT) break;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return ew_error_set(err, EW_ECONNECT, "cannot connect to RabbitMQ at %s (RABBITMQ_URL): %s",
                            r->addr, why == ETIMEDOUT ? "timed out" : strerror(why));
    /* Nagle off (small frames go at once); keepalive finds a peer that vanished, since the
     * connections run without AMQP heartbeats. */
    int on = 1, idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    *out = fd;
    return 0;
}

/* Opens a connection with channel 1, within EVENT_BUS_CONNECT_TIMEOUT_MS for the TCP connection
 * and the login together. EW_ECONNECT naming the address when the broker cannot be reached. */
static int conn_open(rmq *r, amqp_connection_state_t *out, ew_error *err)
{
    *out = NULL;
    int64_t deadline = ew_mono_ns() + (int64_t)r->connect_ms * 1000000;
    int fd = -1;
    int rc = tcp_connect(r, deadline, &fd, err);
    if (rc) return rc;
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = st ? amqp_tcp_socket_new(st) : NULL;
    if (!sock) {
        close(fd);
        if (st) amqp_destroy_connection(st);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    amqp_tcp_socket_set_sockfd(sock, fd); /* the connection owns fd from here */
    struct timeval tv;
    int64_t left_ms = (deadline - ew_mono_ns()) / 1000000;
    tv = ms_tv(left_ms);
    amqp_set_handshake_timeout(st, &tv);
    amqp_set_rpc_timeout(st, &tv);
    /* Heartbeats are off: nothing here would send them while a connection idles (an idle
     * publisher would be cut off); TCP keepalive finds dead peers instead. */
    amqp_rpc_reply_t rr = amqp_login(st, r->vhost, 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN,
                                     r->ci.user, r->ci.password);
    char why[200];
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        reply_text(rr, why, sizeof why);
        /* refused credentials or an unknown vhost: a setting to fix, not a broker to wait for */
        int code = reply_code(rr) == AMQP_ACCESS_REFUSED || reply_code(rr) == AMQP_NOT_ALLOWED
                       ? EW_ECONFIG
                       : EW_ECONNECT;
        amqp_destroy_connection(st);
        return ew_error_set(err, code, "cannot log in to RabbitMQ at %s as '%s' (RABBITMQ_URL): %s",
                            r->addr, r->ci.user, why);
    }
    amqp_channel_open(st, CHANNEL);
    if ((rc = rpc_check(st, EW_ECONNECT, err, "opening a channel"))) {
        amqp_destroy_connection(st);
        return rc;
    }
    tv = ms_tv(OP_TIMEOUT_MS > r->connect_ms ? OP_TIMEOUT_MS : r->connect_ms);
    amqp_set_rpc_timeout(st, &tv);
    *out = st;
    return 0;
}

/* Closes politely (the broker requeues what was not acknowledged), then frees. */
static void conn_close(amqp_connection_state_t st)
{
    if (!st) return;
    struct timeval tv = ms_tv(2000);
    amqp_set_rpc_timeout(st, &tv);
    amqp_rpc_reply_t rr = amqp_channel_close(st, CHANNEL, AMQP_REPLY_SUCCESS);
    if (rr.reply_type == AMQP_RESPONSE_NORMAL) amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
}

/* The exchange, the dead-letter exchange and the queue that keeps what reaches it. */
static int declare_topology(rmq *r, amqp_connection_state_t st, ew_error *err)
{
    char what[400];
    amqp_exchange_declare(st, CHANNEL, amqp_cstring_bytes(r->exchange), amqp_cstring_bytes("topic"),
                          0, 1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the topic exchange '%s' (RABBITMQ_EXCHANGE)",
             r->exchange);
    int rc = rpc_check(st, EW_EIO, err, what);
    if (rc) return rc;
    amqp_exchange_declare(st, CHANNEL, amqp_cstring_bytes(r->dlx), amqp_cstring_bytes("topic"), 0,
                          1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the dead-letter exchange '%s'", r->dlx);
    if ((rc = rpc_check(st, EW_EIO, err, what))) return rc;
    amqp_queue_declare(st, CHANNEL, amqp_cstring_bytes(r->dlx), 0, 1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the dead-letter queue '%s'", r->dlx);
    if ((rc = rpc_check(st, EW_EIO, err, what))) return rc;
    amqp_queue_bind(st, CHANNEL, amqp_cstring_bytes(r->dlx), amqp_cstring_bytes(r->dlx),
                    amqp_cstring_bytes("#"), amqp_empty_table);
    snprintf(what, sizeof what, "binding the dead-letter queue '%s'", r->dlx);
    return rpc_check(st, EW_EIO, err, what);
}

/* A group's durable queue, wired to the dead-letter exchange, bound with keys[0..n). An
 * ephemeral group's is neither durable nor lasting: deleted with its last consumer, or after
 * EPHEMERAL_EXPIRES_MS without one (a consumer that died). */
static int declare_queue(rmq *r, amqp_connection_state_t st, const char *queue, char *const *keys,
                         size_t n, bool ephemeral, ew_error *err)
{
    char what[600];
    amqp_table_entry_t arg[2] = {
        {.key = amqp_cstring_bytes("x-dead-letter-exchange"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(r->dlx)}},
        {.key = amqp_cstring_bytes("x-expires"),
         .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = EPHEMERAL_EXPIRES_MS}},
    };
    amqp_table_t args = {.num_entries = ephemeral ? 2 : 1, .entries = arg};
    amqp_queue_declare(st, CHANNEL, amqp_cstring_bytes(queue), 0, !ephemeral, 0, ephemeral, args);
    snprintf(what, sizeof what, "declaring the queue '%s'", queue);
    int rc = rpc_check(st, EW_EIO, err, what);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        amqp_queue_bind(st, CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(r->exchange),
                        amqp_cstring_bytes(keys[i]), amqp_empty_table);
        snprintf(what, sizeof what, "binding the queue '%s' to '%s' with '%s'", queue, r->exchange,
                 keys[i]);
        if ((rc = rpc_check(st, EW_EIO, err, what))) return rc;
    }
    return 0;
}

/* ---- publishing --------------------------------------------------------------------------- */

/* Drops the publisher's connection; the next publish reconnects, at once the first time. */
static void pub_down(rmq *r)
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
    pub_down(r);
    if (err) *err = e;
    return code;
}

/* Before a batch or a declaration: a connection that the broker closed while we were idle (a
 * restart, say) is found here and replaced at once, instead of failing the call. Nothing is
 * outstanding on it, so whatever frame is waiting is the broker closing it. Under pmu. */
static void pub_check_idle(rmq *r)
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
            pub_down(r);
        }
    }
}

/* Connects the publisher when it is down, with back-off between failed attempts. Under pmu. */
static int pub_ensure(rmq *r, ew_error *err)
{
    if (r->pst) return 0;
    int64_t now = ew_mono_ns();
    if (now < r->pnext_try_ns)
        return ew_error_set(err, EW_ECONNECT, "%s; next attempt in %lld ms", r->pwhy,
                            (long long)((r->pnext_try_ns - now) / 1000000 + 1));
    amqp_connection_state_t st;
    int rc = conn_open(r, &st, err);
    if (!rc && !(rc = declare_topology(r, st, err))) {
        amqp_confirm_select(st, CHANNEL);
        rc = rpc_check(st, EW_EIO, err, "enabling publisher confirms");
    }
    if (rc) {
        if (st) amqp_destroy_connection(st);
        snprintf(r->pwhy, sizeof r->pwhy, "%s", err ? err->msg : "cannot connect");
        r->pnext_try_ns = ew_mono_ns() + (int64_t)jitter_ms(r->pbackoff_ms) * 1000000;
        r->pbackoff_ms =
            r->pbackoff_ms * 2 > PUB_BACKOFF_MAX_MS ? PUB_BACKOFF_MAX_MS : r->pbackoff_ms * 2;
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
        struct timeval tv = ms_tv(left);
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
            reply_text(rr, why, sizeof why);
            return pub_fail(r, err, EW_EIO, "publishing to %s: %s", r->addr, why);
        }
        default:
            break;
        }
    }
    amqp_maybe_release_buffers(r->pst);
    return 0;
}

static int rmq_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                       ew_error *err)
{
    rmq *r = self;
    *npublished = 0;
    char *one_body;
    size_t one_len;
    unsigned char one_state;
    char **bodies = n == 1 ? &one_body : calloc(n, sizeof *bodies);
    size_t *lens = n == 1 ? &one_len : calloc(n, sizeof *lens);
    unsigned char *state = n == 1 ? &one_state : calloc(n, 1);
    int rc = 0;
    size_t encoded = 0;
    if (!bodies || !lens || !state) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    /* Encode everything first: a batch with an event we refuse publishes none of it. */
    for (; encoded < n; encoded++) {
        size_t i = encoded;
        if ((rc = ew_event_encode(evs[i], &bodies[i], &lens[i], err))) goto out;
        if (lens[i] > r->max_bytes) {
            free(bodies[i]);
            rc = ew_error_set(err, EW_ETOOBIG,
                              "event %zu of %zu (%s %s) is %zu bytes, more than EVENT_MAX_BYTES "
                              "(%zu): nothing published",
                              i, n, ew_event_type(evs[i]), ew_event_id(evs[i]), lens[i],
                              r->max_bytes);
            goto out;
        }
        state[i] = C_PENDING;
    }

    pthread_mutex_lock(&r->pmu);
    pub_check_idle(r);
    if ((rc = pub_ensure(r, err))) goto unlock;
    uint64_t first = r->pseq + 1;
    for (size_t i = 0; i < n; i++) {
        const ew_event *ev = evs[i];
        const char *corr = ew_event_correlation_id(ev);
        amqp_basic_properties_t p = {
            ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                      AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                      AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG,
            .content_type = amqp_cstring_bytes("application/cloudevents+json"),
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
        amqp_bytes_t body = {.len = lens[i], .bytes = bodies[i]};
        int arc = amqp_basic_publish(r->pst, CHANNEL, amqp_cstring_bytes(r->exchange),
                                     amqp_cstring_bytes(ew_event_type(ev)), 0, 0, &p, body);
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
        free(bodies[i]);
    if (n != 1) {
        free(bodies);
        free(lens);
        free(state);
    }
    return rc;
}

/* ---- consuming ---------------------------------------------------------------------------- */

static void wake(consumer *c)
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
        wake(c);
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

/* A message that is not one of our events: into the bus's dead letter sink with the raw payload
 * and the reason, then acknowledged. If the sink refuses it, the broker dead-letters it instead
 * (basic.reject without requeue routes it to {exchange}.dlx): it is never dropped. */
static int dead_letter_raw(consumer *c, uint64_t tag, const amqp_message_t *m, const char *rkey,
                           int code, const ew_error *why, ew_error *err)
{
    rmq *r = c->r;
    char abuf[2048];
    ew_arena a;
    ew_arena_init(&a, abuf, sizeof abuf);
    const char *body = m->body.bytes ? m->body.bytes : "";
    const char *id = NULL, *type = NULL;
    if (m->body.len <= r->max_bytes) {
        ew_json *root;
        ew_json_limits lim = {.max_bytes = r->max_bytes, .max_depth = 32};
        if (ew_json_parse(&root, body, m->body.len, &lim, &a, NULL) == 0 &&
            root->kind == EW_JSON_OBJECT) {
            const ew_json *v = ew_json_get(root, "id");
            if (v && v->kind == EW_JSON_STRING && v->len > 0 && v->len <= 200) id = v->str;
            v = ew_json_get(root, "type");
            if (v && v->kind == EW_JSON_STRING && v->len > 0 && v->len <= 200) type = v->str;
        }
    }
    if (!id && (m->properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
        m->properties.message_id.len <= 200 &&
        ew_utf8_valid(m->properties.message_id.bytes, m->properties.message_id.len))
        id = ew_arena_strndup(&a, m->properties.message_id.bytes, m->properties.message_id.len);
    if (!type && *rkey) type = rkey;
    char reason[300];
    snprintf(reason, sizeof reason, "%s: %s", ew_err_name(code), why->msg);
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = NULL,
        .payload = body,
        .payload_len = m->body.len,
        .event_id = id,
        .event_type = type,
        .group = c->group,
        .handler = DECODE_HANDLER,
        .error = reason,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
    };
    ew_error se = {0};
    int src = ew__bus_dead_letter(r->bus, &dl, &se);
    ew_arena_release(&a);
    if (src == 0) {
        ew__bus_log(r->bus, EW_LOG_WARN,
                    "rabbitmq: a message on queue %s could not be decoded (%s): dead-lettered",
                    c->queue, reason);
        out_mark(c, tag);
        return 0;
    }
    ew__bus_log(r->bus, EW_LOG_ERROR,
                "rabbitmq: a message on queue %s could not be decoded (%s) and the dead letter "
                "sink refused it (%s): rejected to the exchange %s",
                c->queue, reason, se.msg, r->dlx);
    return reject(c, tag, false, err);
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
    rmq *r = c->r;
    uint64_t tag = d->delivery_tag;
    char rkey[AMQP_NAME_MAX + 1];
    size_t kl = d->routing_key.len < AMQP_NAME_MAX ? d->routing_key.len : AMQP_NAME_MAX;
    memcpy(rkey, d->routing_key.bytes, kl);
    rkey[kl] = '\0';
    amqp_message_t m;
    amqp_rpc_reply_t rr = amqp_read_message(c->st, CHANNEL, &m, 0);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        char why[200];
        reply_text(rr, why, sizeof why);
        return ew_error_set(err, EW_EIO, "reading a message: %s", why);
    }
    int rc = out_push(c, tag);
    if (rc) {
        amqp_destroy_message(&m);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    ew_event *ev = NULL;
    ew_error de = {0};
    ew_decode_opts opts = {.max_bytes = r->max_bytes};
    int drc = ew_event_decode(&ev, m.body.bytes ? m.body.bytes : "", m.body.len, &opts, &de);
    if (drc) {
        rc = dead_letter_raw(c, tag, &m, rkey, drc, &de, err);
    } else {
        rc = dispatch_event(c, tag, ev, err);
        ew_event_unref(ev);
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
            reply_text(rr, why, sizeof why);
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
    int rc = conn_open(r, &st, err);
    if (rc) return rc;
    if ((rc = declare_topology(r, st, err))) goto fail;
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
    rc = declare_queue(r, st, c->queue, keys, n, c->ephemeral, err);
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    if (rc) goto fail;
    long prefetch = (long)group_workers(c) * PREFETCH_PER_WORKER;
    if (prefetch > r->max_in_flight) prefetch = r->max_in_flight;
    if (prefetch > 65535) prefetch = 65535;
    amqp_basic_qos(st, CHANNEL, 0, (uint16_t)prefetch, 0);
    if ((rc = rpc_check(st, EW_EIO, err, "setting the prefetch window (basic.qos)"))) goto fail;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(st, CHANNEL, amqp_cstring_bytes(c->queue),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consuming from the queue '%s'", c->queue);
    if ((rc = rpc_check(st, EW_EIO, err, what))) goto fail;
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
                next_try = ew_mono_ns() + (int64_t)jitter_ms(backoff) * 1000000;
                backoff = backoff * 2 > CONS_BACKOFF_MAX_MS ? CONS_BACKOFF_MAX_MS : backoff * 2;
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
            next_try = ew_mono_ns() + (int64_t)jitter_ms(backoff) * 1000000;
        }
    }
    conn_close(c->st);
    c->st = NULL;
    return NULL;
}

static int consumer_start(consumer *c, ew_error *err)
{
    if (c->th_started) return 0;
    int rc = pthread_create(&c->th, NULL, consumer_main, c);
    if (rc)
        return ew_error_set(err, EW_ENOMEM, "cannot start the consumer thread of %s: %s", c->group,
                            strerror(rc));
    c->th_started = true;
    return 0;
}

static void consumer_free(consumer *c)
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

static consumer *consumer_new(rmq *r, const char *group, const char *queue)
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
        consumer_free(c);
        return NULL;
    }
    return c;
}

/* ---- the ops ------------------------------------------------------------------------------ */

static void rmq_free(rmq *r)
{
    for (size_t i = 0; i < r->ngroups; i++)
        consumer_free(r->groups[i]);
    free(r->groups);
    pthread_mutex_destroy(&r->pmu);
    pthread_mutex_destroy(&r->mu);
    free(r->url_buf);
    free(r->exchange);
    free(r->dlx);
    free(r);
}

/* Parses RABBITMQ_URL: amqp://[user[:password]@]host[:port][/vhost]. "/" or nothing after the
 * address is the default vhost "/", as most clients read it; "%2f" spells it too. */
int ew__amqp_url_parse(const char *url, char **buf, struct amqp_connection_info *ci, ew_error *err)
{
    if (!(*buf = strdup(url))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    amqp_default_connection_info(ci);
    if (strncmp(url, "amqps://", 8) == 0)
        return ew_error_set(err, EW_ECONFIG,
                            "RABBITMQ_URL: amqps:// (TLS) is not supported by this backend; use "
                            "amqp://");
    if (strncmp(url, "amqp://", 7) != 0 || amqp_parse_url(*buf, ci) != AMQP_STATUS_OK)
        return ew_error_set(err, EW_ECONFIG,
                            "RABBITMQ_URL: '%.100s' is not an AMQP URL "
                            "(amqp://user:password@host:port/vhost)",
                            url);
    if (!*ci->host)
        return ew_error_set(err, EW_ECONFIG, "RABBITMQ_URL: '%.100s' names no host", url);
    if (ci->port < 1 || ci->port > 65535)
        return ew_error_set(err, EW_ECONFIG, "RABBITMQ_URL: port %d is outside 1..65535", ci->port);
    return 0;
}

static int parse_url(rmq *r, const char *url, ew_error *err)
{
    int rc = ew__amqp_url_parse(url, &r->url_buf, &r->ci, err);
    if (rc) return rc;
    r->vhost = *r->ci.vhost ? r->ci.vhost : "/";
    snprintf(r->addr, sizeof r->addr, "%s:%d vhost %s", r->ci.host, r->ci.port, r->vhost);
    return 0;
}

static int rmq_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    rmq *r = calloc(1, sizeof *r);
    if (!r) return ew_error_set(err, EW_ENOMEM, "out of memory");
    pthread_mutex_init(&r->pmu, NULL);
    pthread_mutex_init(&r->mu, NULL);
    r->bus = bus;
    r->disp = ew__bus_dispatcher(bus);
    r->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    r->max_in_flight = (int)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    r->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    r->pbackoff_ms = BACKOFF_MIN_MS;
    const char *ex = ew_config_get(cfg, "RABBITMQ_EXCHANGE");
    int rc = parse_url(r, ew_config_get(cfg, "RABBITMQ_URL"), err);
    if (rc) goto fail;
    if (strlen(ex) + 4 > AMQP_NAME_MAX) {
        rc = ew_error_set(err, EW_ECONFIG, "RABBITMQ_EXCHANGE: '%.64s...' is longer than %d bytes",
                          ex, AMQP_NAME_MAX - 4);
        goto fail;
    }
    r->exchange = strdup(ex);
    if (!r->exchange || asprintf(&r->dlx, "%s.dlx", ex) < 0) {
        r->dlx = NULL;
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    /* Connect now: an unreachable broker is an error at open, not at the first publish. */
    pthread_mutex_lock(&r->pmu);
    rc = pub_ensure(r, err);
    pthread_mutex_unlock(&r->pmu);
    if (rc) goto fail;
    ew__bus_log(bus, EW_LOG_DEBUG, "rabbitmq: connected to %s, exchange %s", r->addr, r->exchange);
    *self = r;
    return 0;
fail:
    if (r->pst) amqp_destroy_connection(r->pst);
    rmq_free(r);
    return rc;
}

static consumer *find_group(rmq *r, const char *group)
{
    for (size_t i = 0; i < r->ngroups; i++)
        if (strcmp(r->groups[i]->group, group) == 0) return r->groups[i];
    return NULL;
}

static int rmq_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    rmq *r = self;
    char queue[2 * AMQP_NAME_MAX];
    int ql = snprintf(queue, sizeof queue, "%s.%s", r->exchange, group);
    if (ql < 0 || ql > AMQP_NAME_MAX)
        return ew_error_set(err, EW_EINVAL,
                            "the queue name %s.%.40s... of group %.40s... is longer than %d bytes",
                            r->exchange, group, group, AMQP_NAME_MAX);
    char *key = strdup(binding_key(pattern));
    if (!key) return ew_error_set(err, EW_ENOMEM, "out of memory");

    /* The binding exists before subscribe returns: what is published from now on is kept in
     * the group's queue, also before the bus starts. bsub->from_beginning changes nothing: a
     * queue holds only what was routed to it once bound, so there is no history to replay. */
    pthread_mutex_lock(&r->pmu);
    pub_check_idle(r);
    int rc = pub_ensure(r, err);
    if (!rc) {
        rc = declare_queue(r, r->pst, queue, &key, 1, bsub->ephemeral, err);
        if (rc) pub_down(r);
    }
    pthread_mutex_unlock(&r->pmu);
    if (rc) {
        free(key);
        return rc;
    }

    pthread_mutex_lock(&r->mu);
    consumer *c = find_group(r, group);
    bool created = false;
    if (!c) {
        if (r->ngroups == r->capgroups) {
            size_t cap = r->capgroups ? r->capgroups * 2 : 4;
            consumer **g = realloc(r->groups, cap * sizeof *g);
            if (!g) {
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                goto unlock;
            }
            r->groups = g;
            r->capgroups = cap;
        }
        if (!(c = consumer_new(r, group, queue))) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            goto unlock;
        }
        r->groups[r->ngroups++] = c;
        created = true;
    }
    if (bsub->ephemeral) c->ephemeral = true;
    bool have = false;
    for (size_t i = 0; i < c->npatterns; i++)
        have = have || strcmp(c->patterns[i], key) == 0;
    if (!have) {
        if (c->npatterns == c->cappatterns) {
            size_t cap = c->cappatterns ? c->cappatterns * 2 : 4;
            char **p = realloc(c->patterns, cap * sizeof *p);
            if (!p) {
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                goto unlock;
            }
            c->patterns = p;
            c->cappatterns = cap;
        }
        c->patterns[c->npatterns++] = key;
        key = NULL;
    }
    if (created && r->started) rc = consumer_start(c, err);
unlock:
    pthread_mutex_unlock(&r->mu);
    free(key);
    return rc;
}

static int rmq_start(void *self, ew_error *err)
{
    rmq *r = self;
    pthread_mutex_lock(&r->mu);
    r->started = true;
    int rc = 0;
    for (size_t i = 0; i < r->ngroups && !rc; i++)
        rc = consumer_start(r->groups[i], err);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static void rmq_stop(void *self)
{
    rmq *r = self;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->ngroups; i++) {
        consumer *c = r->groups[i];
        pthread_mutex_lock(&c->mu);
        c->stopping = true;
        wake(c);
        while (c->in_deliver)
            pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&r->mu);
}

static void rmq_close(void *self)
{
    rmq *r = self;
    for (size_t i = 0; i < r->ngroups; i++) {
        consumer *c = r->groups[i];
        if (!c->th_started) continue;
        pthread_mutex_lock(&c->mu);
        c->stopping = c->quit = true;
        wake(c);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->th, NULL);
    }
    conn_close(r->pst);
    r->pst = NULL;
    rmq_free(r);
}

const ew_bus_ops ew__bus_rabbitmq_ops = {
    .version = EW_BUS_OPS_VERSION,
    .name = "rabbitmq",
    .open = rmq_open,
    .publish = rmq_publish,
    .subscribed = rmq_subscribed,
    .start = rmq_start,
    .stop = rmq_stop,
    .close = rmq_close,
};

#else
typedef int ew__rabbitmq_unused;
#endif
