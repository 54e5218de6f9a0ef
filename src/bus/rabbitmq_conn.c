/* eventwire — the RabbitMQ backend, connections: TCP with a deadline, or TLS for amqps://
 * (rabbitmq-c's amqp_ssl_socket), login, channel, the topology (exchange, dead-letter exchange,
 * group queues) and the small helpers around replies. */
#ifdef EW_HAVE_RABBITMQ

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
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

/* Nagle off (small frames go at once); keepalive finds a peer that vanished, since the
 * connections run without AMQP heartbeats. */
static void tune_socket(int fd)
{
    int on = 1, idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

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
    tune_socket(fd);
    *out = fd;
    return 0;
}

/* ---- TLS (amqps://) ------------------------------------------------------------------------ */

/* The TLS files of an amqps:// bus (RABBITMQ_TLS_*), read once at open; each connection loads
 * them into its own socket. 0, or EW_ECONFIG for a lone certificate or key, or a path too long. */
int ew__mq_tls_settings(rmq *r, const ew_config *cfg, ew_error *err)
{
    static const char *const names[] = {"RABBITMQ_TLS_CA_FILE", "RABBITMQ_TLS_CERT_FILE",
                                        "RABBITMQ_TLS_KEY_FILE"};
    char *dst[] = {r->tls_ca, r->tls_cert, r->tls_key};
    for (int i = 0; i < 3; i++) {
        const char *v = ew_config_get(cfg, names[i]);
        if (strlen(v) >= sizeof r->tls_ca)
            return ew_error_set(err, EW_ECONFIG, "%s: the path is longer than %zu bytes", names[i],
                                sizeof r->tls_ca - 1);
        if (*v && access(v, R_OK) != 0)
            return ew_error_set(err, EW_ECONFIG, "%s: cannot read '%.200s': %s", names[i], v,
                                strerror(errno));
        snprintf(dst[i], sizeof r->tls_ca, "%s", v);
    }
    if (!*r->tls_cert != !*r->tls_key)
        return ew_error_set(err, EW_ECONFIG,
                            "%s is set but %s is not: a client certificate needs both",
                            *r->tls_cert ? names[1] : names[2], *r->tls_cert ? names[2] : names[1]);
    return 0;
}

/* What verifying the broker's certificate found first, noted by verify_note() during the
 * handshake: rabbitmq-c only says that verification failed. */
typedef struct verify_seen {
    int error; /* X509_V_OK, or the first error */
} verify_seen;

static int verify_note(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    verify_seen *seen = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
    if (!ok && seen && seen->error == X509_V_OK) seen->error = X509_STORE_CTX_get_error(x);
    return ok; /* rabbitmq-c refuses the connection after the handshake when this failed */
}

static const char *ssl_reason(void)
{
    unsigned long q = ERR_peek_last_error();
    const char *why = q ? ERR_reason_error_string(q) : NULL;
    return why ? why : "unknown error";
}

/* A TLS socket on st to the broker by the deadline: the broker's certificate checked against
 * RABBITMQ_TLS_CA_FILE (or the system's authorities) and against the URL's host, which OpenSSL
 * checks while it verifies the chain (a name, or an IP address literal: rabbitmq-c's own check
 * knows names only); the client certificate when set. */
static int tls_connect(rmq *r, amqp_connection_state_t st, int64_t deadline, ew_error *err)
{
    amqp_socket_t *sock = amqp_ssl_socket_new(st); /* owned by st */
    if (!sock) return ew_error_set(err, EW_ENOMEM, "out of memory starting TLS");
    SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
    ERR_clear_error();
    if (*r->tls_ca ? amqp_ssl_socket_set_cacert(sock, r->tls_ca) != AMQP_STATUS_OK
                   : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        int rc = *r->tls_ca ? ew_error_set(err, EW_ECONFIG,
                                           "RABBITMQ_TLS_CA_FILE: cannot load certificates from "
                                           "'%.200s': %s",
                                           r->tls_ca, ssl_reason())
                            : ew_error_set(err, EW_ECONFIG,
                                           "the system's certificate authorities cannot be "
                                           "loaded (%s): set RABBITMQ_TLS_CA_FILE",
                                           ssl_reason());
        ERR_clear_error();
        return rc;
    }
    if (*r->tls_cert && amqp_ssl_socket_set_key(sock, r->tls_cert, r->tls_key) != AMQP_STATUS_OK) {
        int rc = ew_error_set(err, EW_ECONFIG,
                              "RABBITMQ_TLS_CERT_FILE, RABBITMQ_TLS_KEY_FILE: cannot use "
                              "'%.200s' with '%.200s': %s",
                              r->tls_cert, r->tls_key, ssl_reason());
        ERR_clear_error();
        return rc;
    }
    amqp_ssl_socket_set_verify_peer(sock, 1);
    amqp_ssl_socket_set_verify_hostname(sock, 0); /* checked in the chain, below */
    unsigned char ip[16];
    bool is_ip =
        inet_pton(AF_INET, r->ci.host, ip) == 1 || inet_pton(AF_INET6, r->ci.host, ip) == 1;
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, r->ci.host)
               : X509_VERIFY_PARAM_set1_host(param, r->ci.host, 0)) != 1) {
        ERR_clear_error();
        return ew_error_set(err, EW_ECONFIG,
                            "RABBITMQ_URL: the host '%.100s' cannot be checked by TLS", r->ci.host);
    }
    verify_seen seen = {X509_V_OK};
    SSL_CTX_set_app_data(ctx, &seen);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, verify_note);
    int64_t left_ms = (deadline - ew_mono_ns()) / 1000000;
    struct timeval tv = ew__ms_tv(left_ms);
    int status = amqp_socket_open_noblock(sock, r->ci.host, r->ci.port, &tv);
    SSL_CTX_set_app_data(ctx, NULL);
    ERR_clear_error();
    if (status == AMQP_STATUS_OK) {
        tune_socket(amqp_socket_get_sockfd(sock));
        return 0;
    }
    if (seen.error == X509_V_ERR_HOSTNAME_MISMATCH || seen.error == X509_V_ERR_IP_ADDRESS_MISMATCH)
        return ew_error_set(err, EW_ECONFIG,
                            "TLS to RabbitMQ at %s: its certificate is not for '%s' (the host of "
                            "RABBITMQ_URL)",
                            r->addr, r->ci.host);
    if (seen.error != X509_V_OK || status == AMQP_STATUS_SSL_PEER_VERIFY_FAILED)
        return ew_error_set(err, EW_ECONFIG,
                            "TLS to RabbitMQ at %s: its certificate does not verify: %s (the "
                            "trusted authorities: RABBITMQ_TLS_CA_FILE)",
                            r->addr,
                            seen.error != X509_V_OK ? X509_verify_cert_error_string(seen.error)
                                                    : "no certificate");
    if (status == AMQP_STATUS_SSL_CONNECTION_FAILED || status == AMQP_STATUS_SSL_ERROR)
        return ew_error_set(err, EW_ECONNECT,
                            "TLS handshake with RabbitMQ at %s failed (is it a TLS port?)",
                            r->addr);
    /* a socket error: our own connect says why */
    int fd = -1;
    int rc = tcp_connect(r, deadline, &fd, err);
    if (fd >= 0) close(fd);
    return rc ? rc
              : ew_error_set(err, EW_ECONNECT,
                             "cannot connect to RabbitMQ at %s (RABBITMQ_URL): %s", r->addr,
                             amqp_error_string2(status));
}

/* Opens a connection with channel 1, within EVENT_BUS_CONNECT_TIMEOUT_MS for the TCP connection
 * (and TLS) and the login together. EW_ECONNECT naming the address when the broker cannot be
 * reached; EW_ECONFIG naming the setting when TLS or the login refuses. */
int ew__mq_conn_open(rmq *r, amqp_connection_state_t *out, ew_error *err)
{
    *out = NULL;
    int64_t deadline = ew_mono_ns() + (int64_t)r->connect_ms * 1000000;
    int rc;
    amqp_connection_state_t st = amqp_new_connection();
    if (!st) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (r->ci.ssl) {
        if ((rc = tls_connect(r, st, deadline, err))) {
            amqp_destroy_connection(st);
            return rc;
        }
    } else {
        int fd = -1;
        if ((rc = tcp_connect(r, deadline, &fd, err))) {
            amqp_destroy_connection(st);
            return rc;
        }
        amqp_socket_t *sock = amqp_tcp_socket_new(st);
        if (!sock) {
            close(fd);
            amqp_destroy_connection(st);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        amqp_tcp_socket_set_sockfd(sock, fd); /* the connection owns fd from here */
    }
    struct timeval tv;
    int64_t left_ms = (deadline - ew_mono_ns()) / 1000000;
    tv = ew__ms_tv(left_ms);
    amqp_set_handshake_timeout(st, &tv);
    amqp_set_rpc_timeout(st, &tv);
    /* Heartbeats are off: nothing here would send them while a connection idles (an idle
     * publisher would be cut off); TCP keepalive finds dead peers instead. */
    amqp_rpc_reply_t rr = amqp_login(st, r->vhost, 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN,
                                     r->ci.user, r->ci.password);
    char why[300];
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        ew__mq_reply_text(rr, why, sizeof why);
        /* refused credentials or an unknown vhost: a setting to fix, not a broker to wait for */
        int code = reply_code(rr) == AMQP_ACCESS_REFUSED || reply_code(rr) == AMQP_NOT_ALLOWED
                       ? EW_ECONFIG
                       : EW_ECONNECT;
        /* a broker that checks client certificates says no to one only after the handshake */
        if (r->ci.ssl && rr.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            rr.library_error == AMQP_STATUS_SSL_ERROR) {
            size_t l = strlen(why);
            snprintf(why + l, sizeof why - l,
                     " (a client certificate it does not take? "
                     "RABBITMQ_TLS_CERT_FILE)");
        }
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
