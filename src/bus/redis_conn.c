/* eventwire — the Redis backend, the connection: RESP commands formatted here and sent with
 * send(MSG_NOSIGNAL) (hiredis only parses replies), TLS for rediss:// with OpenSSL on the same
 * socket, REDIS_EVENT_URL, connecting, and the shared publishing connection. */
#ifdef EW_HAVE_REDIS

#include <errno.h>
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
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

/* ---- small helpers ----------------------------------------------------------------------- */

bool ew__rd_reply_is(const redisReply *r, int type)
{
    return r && r->type == type;
}

bool ew__rd_reply_err_starts(const redisReply *r, const char *prefix)
{
    return ew__rd_reply_is(r, REDIS_REPLY_ERROR) && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* ---- RESP: commands are formatted here and written with send(MSG_NOSIGNAL), so that a
 * connection the broker closed never raises SIGPIPE in the application; hiredis only reads. */

void ew__rd_put_num(ew_buf *b, char kind, size_t n)
{
    char tmp[32];
    int i = (int)sizeof tmp;
    tmp[--i] = '\n';
    tmp[--i] = '\r';
    do {
        tmp[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    tmp[--i] = kind;
    ew_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

void ew__rd_put_arg(ew_buf *b, const char *s, size_t n)
{
    ew__rd_put_num(b, '$', n);
    ew_buf_append(b, s, n);
    ew_buf_append(b, "\r\n", 2);
}

void ew__rd_put_str(ew_buf *b, const char *s)
{
    ew__rd_put_arg(b, s, strlen(s));
}

void ew__rd_put_cmd(ew_buf *b, int argc, const char *const *argv)
{
    ew__rd_put_num(b, '*', (size_t)argc);
    for (int i = 0; i < argc; i++)
        ew__rd_put_str(b, argv[i]);
}

static void conn_fail(redisContext *c, const char *what)
{
    c->err = REDIS_ERR_IO;
    snprintf(c->errstr, sizeof c->errstr, "%s", what);
}

/* ---- TLS (rediss://): OpenSSL on the connection's own socket. hiredis 0.14 has no TLS, so a
 * connection stays a redisContext (its reader parses the replies) and its TLS state hangs on the
 * reader's user field (redisReader.privdata; not hiredis's redisReaderSetPrivdata, whose cast to
 * int clang refuses), which hiredis leaves to its user: NULL on a plain connection. Bytes go
 * through our BIO, which sends with MSG_NOSIGNAL like the plain path and keeps the socket's
 * time-outs (SO_RCVTIMEO, SO_SNDTIMEO from redisSetTimeout). */

typedef struct tls_conn {
    SSL *ssl;
    int fd;
    bool nowait; /* a read must not block: the caller polled and wants only what is there */
} tls_conn;

static tls_conn *tls_of(const redisContext *c)
{
    return c->reader ? c->reader->privdata : NULL;
}

static int bio_write(BIO *b, const char *buf, int len)
{
    tls_conn *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t w = send(t->fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (w >= 0) return (int)w;
        if (errno != EINTR) return -1; /* EAGAIN: SO_SNDTIMEO ran out, an error like any */
    }
}

static int bio_read(BIO *b, char *buf, int len)
{
    tls_conn *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t r = recv(t->fd, buf, (size_t)len, t->nowait ? MSG_DONTWAIT : 0);
        if (r >= 0) return (int)r;
        if (errno == EINTR) continue;
        if (t->nowait && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
        return -1;
    }
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* Why the last TLS call on t failed (ret its return), in words, into buf. */
static void tls_why(const tls_conn *t, int ret, int saved_errno, char *buf, size_t n)
{
    int e = SSL_get_error(t->ssl, ret);
    unsigned long q = ERR_peek_last_error();
    if (q) {
        const char *r = ERR_reason_error_string(q);
        snprintf(buf, n, "%s", r ? r : "TLS error");
    } else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && saved_errno == 0)) {
        snprintf(buf, n, "the server closed the connection");
    } else if (e == SSL_ERROR_SYSCALL) {
        snprintf(buf, n, "%s",
                 saved_errno == EAGAIN || saved_errno == EWOULDBLOCK
                     ? "no answer in time (timed out)"
                     : strerror(saved_errno));
    } else {
        snprintf(buf, n, "TLS error %d", e);
    }
    ERR_clear_error();
}

int ew__rd_rsend(redisContext *c, const char *buf, size_t len)
{
    tls_conn *t = tls_of(c);
    while (len) {
        if (t) {
            int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
            ERR_clear_error();
            errno = 0;
            int w = SSL_write(t->ssl, buf, chunk);
            if (w <= 0) {
                int saved = errno;
                char why[120];
                tls_why(t, w, saved, why, sizeof why);
                conn_fail(c, why);
                return -1;
            }
            buf += w;
            len -= (size_t)w;
            continue;
        }
        ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            conn_fail(c, errno == EAGAIN || errno == EWOULDBLOCK ? "write timed out"
                                                                 : strerror(errno));
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads what the server sent into c's reader: what is there (nowait, after poll() said the
 * socket is readable), or at least something, waiting up to the connection's time-out. 0, or -1
 * with c->err and c->errstr set. This replaces redisBufferRead(), which reads the socket itself
 * (and so cannot read TLS). */
int ew__rd_conn_read(redisContext *c, bool nowait)
{
    tls_conn *t = tls_of(c);
    if (!t) {
        if (redisBufferRead(c) == REDIS_OK) return 0;
        if (!c->err) conn_fail(c, "connection failed");
        return -1;
    }
    char buf[16384];
    t->nowait = nowait;
    do {
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(t->ssl, buf, (int)sizeof buf);
        if (r <= 0) {
            int saved = errno;
            if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ && nowait) break;
            char why[120];
            tls_why(t, r, saved, why, sizeof why);
            conn_fail(c, why);
            return -1;
        }
        if (redisReaderFeed(c->reader, buf, (size_t)r) != REDIS_OK) {
            conn_fail(c, "out of memory reading a reply");
            return -1;
        }
        /* what OpenSSL decrypted and holds is invisible to poll(): take it all now */
    } while (SSL_pending(t->ssl) > 0);
    return 0;
}

/* As ew__rd_conn_read(c, true), but what arrived is appended to into, not to c's reader: for a
 * reply read in place (redis_resp.c). Reads in chunks of 64 KiB or more, not hiredis's 16. */
int ew__rd_conn_recv(redisContext *c, ew_buf *into)
{
    tls_conn *t = tls_of(c);
    if (t) t->nowait = true;
    do {
        if (ew_buf_reserve(into, 65536)) {
            conn_fail(c, "out of memory reading a reply");
            return -1;
        }
        size_t room = into->cap - into->len - 1; /* ew_buf keeps a byte for its NUL */
        if (t) {
            ERR_clear_error();
            errno = 0;
            int r = SSL_read(t->ssl, into->data + into->len, room > INT_MAX ? INT_MAX : (int)room);
            if (r <= 0) {
                int saved = errno;
                if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ) break;
                char why[120];
                tls_why(t, r, saved, why, sizeof why);
                conn_fail(c, why);
                return -1;
            }
            into->len += (size_t)r;
            continue; /* what OpenSSL decrypted and holds is invisible to poll(): take it all */
        }
        ssize_t r = recv(c->fd, into->data + into->len, room, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
        if (r <= 0) {
            conn_fail(c, r == 0 ? "Server closed the connection" : strerror(errno));
            return -1;
        }
        into->len += (size_t)r;
        if ((size_t)r < room) break; /* the socket is drained */
    } while (!t || SSL_pending(t->ssl) > 0);
    into->data[into->len] = '\0';
    return 0;
}

/* Closes the connection (TLS politely when it is sound) and frees it. */
void ew__rd_conn_free(redisContext *c)
{
    if (!c) return;
    tls_conn *t = tls_of(c);
    if (t) {
        t->nowait = true;
        if (!c->err && SSL_is_init_finished(t->ssl)) SSL_shutdown(t->ssl);
        ERR_clear_error();
        SSL_free(t->ssl); /* and the BIO */
        free(t);
        c->reader->privdata = NULL;
    }
    redisFree(c);
}

/* Reads one reply; NULL when the connection failed (c->errstr says why). */
static redisReply *rread(redisContext *c)
{
    if (!tls_of(c)) {
        void *r = NULL;
        if (redisGetReply(c, &r) != REDIS_OK) {
            if (!c->err) conn_fail(c, "connection failed");
            if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
                snprintf(c->errstr, sizeof c->errstr, "no answer in time (read timed out)");
            return NULL;
        }
        return r;
    }
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(c, &r) != REDIS_OK) {
            if (!c->err) conn_fail(c, "protocol error");
            return NULL;
        }
        if (r) return r;
        if (ew__rd_conn_read(c, false)) return NULL;
    }
}

/* Sends b and reads one reply per command in it, into replies[0..n). false when the connection
 * failed; the replies read so far are kept (the caller frees them all). */
bool ew__rd_rexchange(redisContext *c, const ew_buf *b, redisReply **replies, size_t n)
{
    memset(replies, 0, n * sizeof *replies);
    if (b->oom) {
        conn_fail(c, "out of memory formatting a command");
        return false;
    }
    if (ew__rd_rsend(c, b->data, b->len)) return false;
    for (size_t i = 0; i < n; i++)
        if (!(replies[i] = rread(c))) return false;
    return true;
}

redisReply *ew__rd_rcmd(redisContext *c, int argc, const char *const *argv)
{
    ew_buf b;
    ew_buf_init(&b);
    ew__rd_put_cmd(&b, argc, argv);
    redisReply *r = NULL;
    ew__rd_rexchange(c, &b, &r, 1);
    ew_buf_release(&b);
    return r;
}

void ew__rd_free_replies(redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r[i]) freeReplyObject(r[i]);
}

/* ---- the URL ----------------------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into out (cap bytes with the NUL); -1 for a bad escape or overflow. */
static int pct_decode(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= n) return -1;
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0) return -1;
            ch = (char)(h * 16 + l);
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

static int parse_num(const char *s, size_t n, long max, long *out)
{
    if (n == 0 || n > 10) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

static int url_error(ew_error *err, const char *what)
{
    return ew_error_set(err, EW_ECONFIG, "%s: %s (expected %s)", URL_VAR, what, URL_FORM);
}

/* redis://[user:password@]host[:port][/db], or rediss:// (TLS); port 6379 and db 0 when left
 * out. No message shows the URL itself: it may hold a password. */
int ew__redis_url_parse(rurl *u, const char *url, ew_error *err)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        u->tls = true;
        p = url + 9;
    } else {
        /* the scheme alone, if it looks like one: never what follows */
        size_t sl =
            strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
        char what[160];
        bool alpha = (url[0] >= 'a' && url[0] <= 'z') || (url[0] >= 'A' && url[0] <= 'Z');
        if (alpha && sl <= 20 && url[sl] == ':')
            snprintf(what, sizeof what, "the scheme '%.*s:' is neither redis:// nor rediss://",
                     (int)sl, url);
        else
            snprintf(what, sizeof what, "it does not start with redis:// or rediss://");
        return url_error(err, what);
    }
    size_t auth_len = strcspn(p, "/?#");
    const char *rest = p + auth_len;
    if (*rest == '?' || *rest == '#')
        return url_error(err, "query strings and fragments are not supported");
    const char *at = NULL;
    for (const char *q = p; q < rest; q++)
        if (*q == '@') at = q; /* the last one: a password may hold a raw '@' */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return url_error(err, "a user needs a password (redis://user:password@host, or "
                                  "redis://:password@host for the password alone)");
        if (pct_decode(u->user, sizeof u->user, p, (size_t)(colon - p)))
            return url_error(err, "the user name is too long or has a bad %-escape");
        if (pct_decode(u->pass, sizeof u->pass, colon + 1, (size_t)(at - colon - 1)))
            return url_error(err, "the password is too long or has a bad %-escape");
        if (!u->pass[0]) return url_error(err, "the password is empty");
        u->has_pass = true;
        p = at + 1;
    }
    const char *host = p, *host_end;
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(rest - p));
        if (!close) return url_error(err, "an IPv6 address lacks its closing ']'");
        host = p + 1;
        host_end = close;
        p = close + 1;
    } else {
        host_end = memchr(p, ':', (size_t)(rest - p));
        if (!host_end) host_end = rest;
        p = host_end;
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0) return url_error(err, "the host is missing");
    if (hlen >= sizeof u->host) return url_error(err, "the host name is too long");
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    if (p < rest) {
        long port;
        if (*p != ':' || parse_num(p + 1, (size_t)(rest - p - 1), 65535, &port) || port == 0) {
            char what[160];
            snprintf(what, sizeof what, "the port '%.*s' is not a number from 1 to 65535",
                     (int)((rest - p - 1) > 20 ? 20 : (rest - p - 1)), p + 1);
            return url_error(err, what);
        }
        u->port = (int)port;
    }
    if (*rest == '/' && rest[1]) {
        long db;
        if (parse_num(rest + 1, strlen(rest + 1), 1000000, &db)) {
            char what[160];
            snprintf(what, sizeof what, "the database '%.20s' is not a number", rest + 1);
            return url_error(err, what);
        }
        u->db = (int)db;
    }
    return 0;
}

/* ---- connections ------------------------------------------------------------------------- */

/* Redis 6.2 brought XAUTOCLAIM: a server too old for it is refused at open (streams only). */
static int check_server(redis_bus *rb, redisContext *c, ew_error *err)
{
    const char *argv[] = {"INFO", "server"};
    redisReply *r = ew__rd_rcmd(c, 2, argv);
    if (!r)
        return ew_error_set(err, EW_ECONNECT, "Redis at %s did not answer: %s", rb->addr,
                            c->errstr);
    int rc = 0;
    const char *v = r->type == REDIS_REPLY_STRING ? strstr(r->str, "redis_version:") : NULL;
    int major = 0, minor = 0;
    if (v && sscanf(v + 14, "%d.%d", &major, &minor) == 2 &&
        (major < 6 || (major == 6 && minor < 2)))
        rc = ew_error_set(err, EW_ENOTSUP,
                          "Redis at %s is version %d.%d: the redis bus's streams need 6.2 or "
                          "later (or REDIS_MODE=pubsub)",
                          rb->addr, major, minor);
    freeReplyObject(r);
    return rc;
}

/* The TLS settings of a rediss:// bus, once, at open: the trusted authorities
 * (REDIS_TLS_CA_FILE, or the system's), the client certificate and key when set, TLS 1.2 at
 * least, the server's certificate verified. Nothing for redis://. 0, or EW_ECONFIG naming the
 * setting whose file cannot be used. */
int ew__rd_tls_open(redis_bus *rb, const ew_config *cfg, ew_error *err)
{
    if (!rb->url.tls) return 0;
    const char *ca = ew_config_get(cfg, "REDIS_TLS_CA_FILE");
    const char *cert = ew_config_get(cfg, "REDIS_TLS_CERT_FILE");
    const char *key = ew_config_get(cfg, "REDIS_TLS_KEY_FILE");
    if (!*cert != !*key)
        return ew_error_set(err, EW_ECONFIG,
                            "%s is set but %s is not: a client certificate needs both",
                            *cert ? "REDIS_TLS_CERT_FILE" : "REDIS_TLS_KEY_FILE",
                            *cert ? "REDIS_TLS_KEY_FILE" : "REDIS_TLS_CERT_FILE");
    const char *const files[][2] = {
        {"REDIS_TLS_CA_FILE", ca}, {"REDIS_TLS_CERT_FILE", cert}, {"REDIS_TLS_KEY_FILE", key}};
    for (int i = 0; i < 3; i++)
        if (*files[i][1] && access(files[i][1], R_OK) != 0)
            return ew_error_set(err, EW_ECONFIG, "%s: cannot read '%.200s': %s", files[i][0],
                                files[i][1], strerror(errno));
    ERR_clear_error();
    int rc = 0;
    char why[160] = "";
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "eventwire-redis");
    if (!ctx || !m || !BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory setting up TLS");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (*ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1
            : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        unsigned long q = ERR_peek_last_error();
        snprintf(why, sizeof why, "%s", q ? ERR_reason_error_string(q) : "unknown error");
        rc = *ca ? ew_error_set(err, EW_ECONFIG,
                                "REDIS_TLS_CA_FILE: cannot load certificates from '%.200s': %s", ca,
                                why)
                 : ew_error_set(err, EW_ECONFIG,
                                "the system's certificate authorities cannot be loaded (%s): set "
                                "REDIS_TLS_CA_FILE",
                                why);
        goto fail;
    }
    if (*cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        unsigned long q = ERR_peek_last_error();
        rc = ew_error_set(err, EW_ECONFIG,
                          "REDIS_TLS_CERT_FILE: cannot use the certificate in '%.200s': %s", cert,
                          q ? ERR_reason_error_string(q) : "unknown error");
        goto fail;
    }
    if (*key && (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_check_private_key(ctx) != 1)) {
        unsigned long q = ERR_peek_last_error();
        rc = ew_error_set(err, EW_ECONFIG,
                          "REDIS_TLS_KEY_FILE: cannot use the key in '%.200s' with "
                          "REDIS_TLS_CERT_FILE: %s",
                          key, q ? ERR_reason_error_string(q) : "unknown error");
        goto fail;
    }
    ERR_clear_error();
    rb->tls = ctx;
    rb->tls_bio = m;
    return 0;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    if (m) BIO_meth_free(m);
    return rc;
}

void ew__rd_tls_close(redis_bus *rb)
{
    SSL_CTX_free(rb->tls);
    if (rb->tls_bio) BIO_meth_free(rb->tls_bio);
    rb->tls = NULL;
    rb->tls_bio = NULL;
}

/* TLS on c's socket: the handshake, the server's certificate checked against the authorities and
 * against the URL's host (a name, or an IP address literal). Then a PING, since a server that
 * wants a client certificate says so only after the handshake (TLS 1.3). 0, or an error naming
 * the setting to look at: EW_ECONFIG for a certificate that does not verify or a refused client,
 * EW_ECONNECT for a server that does not speak TLS or does not answer. */
static int tls_start(redis_bus *rb, redisContext *c, ew_error *err)
{
    tls_conn *t = calloc(1, sizeof *t);
    BIO *bio = NULL;
    if (!t || !(t->ssl = SSL_new(rb->tls)) || !(bio = BIO_new(rb->tls_bio))) {
        if (t) SSL_free(t->ssl);
        free(t);
        return ew_error_set(err, EW_ENOMEM, "out of memory starting TLS");
    }
    t->fd = c->fd;
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    c->reader->privdata = t; /* c owns t from here: ew__rd_conn_free */
    unsigned char ip[16];
    bool is_ip =
        inet_pton(AF_INET, rb->url.host, ip) == 1 || inet_pton(AF_INET6, rb->url.host, ip) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, rb->url.host) != 1
              : (SSL_set_tlsext_host_name(t->ssl, rb->url.host) != 1 ||
                 SSL_set1_host(t->ssl, rb->url.host) != 1)) {
        ERR_clear_error();
        return ew_error_set(err, EW_ECONFIG, "%s: the host '%.100s' cannot be checked by TLS",
                            URL_VAR, rb->url.host);
    }
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(t->ssl);
    if (r != 1) {
        int saved = errno;
        long v = SSL_get_verify_result(t->ssl);
        if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
            ERR_clear_error();
            return ew_error_set(err, EW_ECONFIG,
                                "TLS to Redis at %s: its certificate is not for '%s' (the host "
                                "of %s)",
                                rb->addr, rb->url.host, URL_VAR);
        }
        if (v != X509_V_OK) {
            ERR_clear_error();
            return ew_error_set(err, EW_ECONFIG,
                                "TLS to Redis at %s: its certificate does not verify: %s (the "
                                "trusted authorities: REDIS_TLS_CA_FILE)",
                                rb->addr, X509_verify_cert_error_string(v));
        }
        char why[120];
        tls_why(t, r, saved, why, sizeof why);
        return ew_error_set(err, EW_ECONNECT,
                            "TLS handshake with Redis at %s failed: %s (is it a TLS port?)",
                            rb->addr, why);
    }
    /* TLS 1.3: the server judges the client's certificate after the handshake and answers with
     * its session tickets, or with an alert and a closed connection. A PING sent into that close
     * would meet a reset, which loses the alert: so the verdict is read first (what OpenSSL's
     * servers, Redis among them, send at once; up to 200 ms for a server that sends nothing). */
    bool ok = true;
    if (SSL_version(t->ssl) >= TLS1_3_VERSION) {
        struct pollfd pf = {.fd = t->fd, .events = POLLIN};
        if (poll(&pf, 1, rb->connect_ms < 200 ? rb->connect_ms : 200) > 0)
            ok = ew__rd_conn_read(c, true) == 0;
    }
    const char *argv[] = {"PING"};
    redisReply *rep = ok ? ew__rd_rcmd(c, 1, argv) : NULL;
    if (!rep) {
        bool cert = strstr(c->errstr, "certificate") != NULL;
        return ew_error_set(err, cert ? EW_ECONFIG : EW_ECONNECT,
                            "Redis at %s refused the TLS connection: %s%s", rb->addr, c->errstr,
                            cert ? " (the client certificate: REDIS_TLS_CERT_FILE, "
                                   "REDIS_TLS_KEY_FILE)"
                                 : "");
    }
    freeReplyObject(rep); /* an error here (NOAUTH) is AUTH's to report */
    return 0;
}

/* A new connection, authenticated and on the URL's database; NULL with err set (EW_ECONNECT
 * when Redis cannot be reached or does not answer within EVENT_BUS_CONNECT_TIMEOUT_MS,
 * EW_ECONFIG when it refuses the credentials or the database). Commands on it then time out
 * after io_ms. */
redisContext *ew__rd_rconnect(redis_bus *rb, int io_ms, bool check_version, ew_error *err)
{
    redisContext *c =
        redisConnectWithTimeout(rb->url.host, rb->url.port, ew__ms_tv(rb->connect_ms));
    if (!c) {
        ew_error_set(err, EW_ENOMEM, "out of memory connecting to Redis");
        return NULL;
    }
    if (c->err) {
        ew_error_set(err, EW_ECONNECT, "cannot connect to Redis at %s (%s): %s", rb->addr, URL_VAR,
                     c->errstr);
        goto fail;
    }
    if (redisSetTimeout(c, ew__ms_tv(rb->connect_ms)) != REDIS_OK) {
        ew_error_set(err, EW_ECONNECT, "Redis at %s: %s", rb->addr, c->errstr);
        goto fail;
    }
    if (rb->tls && tls_start(rb, c, err)) goto fail;
    if (rb->url.has_pass) {
        const char *argv[] = {"AUTH", rb->url.user, rb->url.pass};
        int argc = rb->url.user[0] ? 3 : 2;
        if (argc == 2) argv[1] = rb->url.pass;
        redisReply *r = ew__rd_rcmd(c, argc, argv);
        if (!r) {
            ew_error_set(err, EW_ECONNECT, "Redis at %s did not answer: %s", rb->addr, c->errstr);
            goto fail;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ew_error_set(err, EW_ECONFIG, "%s: Redis at %s refused the credentials: %.120s",
                         URL_VAR, rb->addr, r->str);
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (rb->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", rb->url.db);
        const char *argv[] = {"SELECT", db};
        redisReply *r = ew__rd_rcmd(c, 2, argv);
        if (!r) {
            ew_error_set(err, EW_ECONNECT, "Redis at %s did not answer: %s", rb->addr, c->errstr);
            goto fail;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ew_error_set(err, EW_ECONFIG, "%s: Redis at %s has no database %d: %.120s", URL_VAR,
                         rb->addr, rb->url.db, r->str);
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (check_version && check_server(rb, c, err)) goto fail;
    if (redisSetTimeout(c, ew__ms_tv(io_ms)) != REDIS_OK) {
        ew_error_set(err, EW_ECONNECT, "Redis at %s: %s", rb->addr, c->errstr);
        goto fail;
    }
    return c;
fail:
    ew__rd_conn_free(c);
    return NULL;
}

/* The publishing connection, connecting when there is none (with back-off between attempts).
 * Under pub_mu. */
int ew__rd_pub_conn(redis_bus *rb, bool *fresh, ew_error *err)
{
    *fresh = false;
    if (rb->pub) return 0;
    int64_t now = ew_mono_ns();
    if (now < rb->pub_retry_ns)
        return ew_error_set(err, EW_ECONNECT, "Redis at %s is unreachable (%s): retrying", rb->addr,
                            rb->pub_last_err);
    ew_error e = {0};
    rb->pub = ew__rd_rconnect(rb, rb->io_ms, false, &e);
    if (!rb->pub) {
        rb->pub_backoff_ms = ew__backoff_next(rb->pub_backoff_ms, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        rb->pub_retry_ns = now + (int64_t)ew__jitter_ms(rb->pub_backoff_ms) * 1000000;
        snprintf(rb->pub_last_err, sizeof rb->pub_last_err, "%s", e.msg);
        if (err) *err = e;
        return e.code;
    }
    if (rb->pub_backoff_ms)
        ew__bus_log(rb->bus, EW_LOG_INFO, "redis: publishing connection to %s restored", rb->addr);
    rb->pub_backoff_ms = 0;
    rb->pub_retry_ns = 0;
    *fresh = true;
    return 0;
}

void ew__rd_pub_drop(redis_bus *rb)
{
    if (!rb->pub) return;
    snprintf(rb->pub_last_err, sizeof rb->pub_last_err, "%s", rb->pub->errstr);
    ew__bus_log(rb->bus, EW_LOG_WARN, "redis: connection to %s lost: %s", rb->addr,
                rb->pub->errstr);
    ew__rd_conn_free(rb->pub);
    rb->pub = NULL;
}

/* Sends b (n commands) on the publishing connection and reads the n replies. A connection that
 * turns out dead before the first reply (the broker restarted while it was idle) is replaced
 * once. Under pub_mu. Returns 0 or the connection's error; replies[] hold what was read. */
int ew__rd_pub_exchange(redis_bus *rb, const ew_buf *b, redisReply **replies, size_t n,
                        size_t *nread, ew_error *err)
{
    for (int attempt = 0;; attempt++) {
        bool fresh;
        int rc = ew__rd_pub_conn(rb, &fresh, err);
        if (rc) return rc;
        bool ok = ew__rd_rexchange(rb->pub, b, replies, n);
        size_t got = 0;
        while (got < n && replies[got])
            got++;
        *nread = got;
        if (ok) return 0;
        char why[160];
        snprintf(why, sizeof why, "%s", rb->pub->errstr);
        ew__rd_pub_drop(rb);
        if (got == 0 && !fresh && attempt == 0) continue;
        return ew_error_set(err, EW_EIO,
                            "connection to Redis at %s failed after %zu of %zu "
                            "replies: %s",
                            rb->addr, got, n, why);
    }
}

#else
typedef int ew__redis_conn_unused;
#endif
