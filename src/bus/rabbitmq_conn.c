/* eventwire — the RabbitMQ backend, connections: TCP with a deadline, login, channel, the
 * topology (exchange, dead-letter exchange, group queues) and the small helpers around replies. */
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

/* ---- helpers ------------------------------------------------------------------------------ */

/* What an RPC reply says, in words. */
void ew__mq_reply_text(amqp_rpc_reply_t rr, char *buf, size_t n)
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
int ew__mq_rpc_check(amqp_connection_state_t st, int code, ew_error *err, const char *what)
{
    amqp_rpc_reply_t rr = amqp_get_rpc_reply(st);
    if (rr.reply_type == AMQP_RESPONSE_NORMAL) return 0;
    char why[200];
    ew__mq_reply_text(rr, why, sizeof why);
    int rcode = reply_code(rr);
    if (rcode == AMQP_PRECONDITION_FAILED || rcode == AMQP_ACCESS_REFUSED) code = EW_ECONFIG;
    return ew_error_set(err, code, "%s: %s", what, why);
}

/* Our patterns are AMQP topic patterns, except that "*" alone means every type. */
const char *ew__mq_binding_key(const char *pattern)
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
int ew__mq_conn_open(rmq *r, amqp_connection_state_t *out, ew_error *err)
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
    tv = ew__ms_tv(left_ms);
    amqp_set_handshake_timeout(st, &tv);
    amqp_set_rpc_timeout(st, &tv);
    /* Heartbeats are off: nothing here would send them while a connection idles (an idle
     * publisher would be cut off); TCP keepalive finds dead peers instead. */
    amqp_rpc_reply_t rr = amqp_login(st, r->vhost, 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN,
                                     r->ci.user, r->ci.password);
    char why[200];
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        ew__mq_reply_text(rr, why, sizeof why);
        /* refused credentials or an unknown vhost: a setting to fix, not a broker to wait for */
        int code = reply_code(rr) == AMQP_ACCESS_REFUSED || reply_code(rr) == AMQP_NOT_ALLOWED
                       ? EW_ECONFIG
                       : EW_ECONNECT;
        amqp_destroy_connection(st);
        return ew_error_set(err, code, "cannot log in to RabbitMQ at %s as '%s' (RABBITMQ_URL): %s",
                            r->addr, r->ci.user, why);
    }
    amqp_channel_open(st, CHANNEL);
    if ((rc = ew__mq_rpc_check(st, EW_ECONNECT, err, "opening a channel"))) {
        amqp_destroy_connection(st);
        return rc;
    }
    tv = ew__ms_tv(OP_TIMEOUT_MS > r->connect_ms ? OP_TIMEOUT_MS : r->connect_ms);
    amqp_set_rpc_timeout(st, &tv);
    *out = st;
    return 0;
}

/* Closes politely (the broker requeues what was not acknowledged), then frees. */
void ew__mq_conn_close(amqp_connection_state_t st)
{
    if (!st) return;
    struct timeval tv = ew__ms_tv(2000);
    amqp_set_rpc_timeout(st, &tv);
    amqp_rpc_reply_t rr = amqp_channel_close(st, CHANNEL, AMQP_REPLY_SUCCESS);
    if (rr.reply_type == AMQP_RESPONSE_NORMAL) amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
}

/* The exchange, the dead-letter exchange and the queue that keeps what reaches it. */
int ew__mq_declare_topology(rmq *r, amqp_connection_state_t st, ew_error *err)
{
    char what[400];
    amqp_exchange_declare(st, CHANNEL, amqp_cstring_bytes(r->exchange), amqp_cstring_bytes("topic"),
                          0, 1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the topic exchange '%s' (RABBITMQ_EXCHANGE)",
             r->exchange);
    int rc = ew__mq_rpc_check(st, EW_EIO, err, what);
    if (rc) return rc;
    amqp_exchange_declare(st, CHANNEL, amqp_cstring_bytes(r->dlx), amqp_cstring_bytes("topic"), 0,
                          1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the dead-letter exchange '%s'", r->dlx);
    if ((rc = ew__mq_rpc_check(st, EW_EIO, err, what))) return rc;
    amqp_queue_declare(st, CHANNEL, amqp_cstring_bytes(r->dlx), 0, 1, 0, 0, amqp_empty_table);
    snprintf(what, sizeof what, "declaring the dead-letter queue '%s'", r->dlx);
    if ((rc = ew__mq_rpc_check(st, EW_EIO, err, what))) return rc;
    amqp_queue_bind(st, CHANNEL, amqp_cstring_bytes(r->dlx), amqp_cstring_bytes(r->dlx),
                    amqp_cstring_bytes("#"), amqp_empty_table);
    snprintf(what, sizeof what, "binding the dead-letter queue '%s'", r->dlx);
    return ew__mq_rpc_check(st, EW_EIO, err, what);
}

/* A group's durable queue, wired to the dead-letter exchange, bound with keys[0..n). An
 * ephemeral group's is neither durable nor lasting: deleted with its last consumer, or after
 * EPHEMERAL_EXPIRES_MS without one (a consumer that died). */
int ew__mq_declare_queue(rmq *r, amqp_connection_state_t st, const char *queue, char *const *keys,
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
    int rc = ew__mq_rpc_check(st, EW_EIO, err, what);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        amqp_queue_bind(st, CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(r->exchange),
                        amqp_cstring_bytes(keys[i]), amqp_empty_table);
        snprintf(what, sizeof what, "binding the queue '%s' to '%s' with '%s'", queue, r->exchange,
                 keys[i]);
        if ((rc = ew__mq_rpc_check(st, EW_EIO, err, what))) return rc;
    }
    return 0;
}

#else
typedef int ew__rabbitmq_conn_unused;
#endif
