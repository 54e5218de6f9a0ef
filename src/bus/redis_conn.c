/* eventwire — the Redis backend, the connection: RESP commands formatted here and sent with
 * send(MSG_NOSIGNAL) (hiredis only reads replies), REDIS_EVENT_URL, connecting, and the shared
 * publishing connection. */
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

int ew__rd_rsend(redisContext *c, const char *buf, size_t len)
{
    while (len) {
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

/* Reads one reply; NULL when the connection failed (c->errstr says why). */
static redisReply *rread(redisContext *c)
{
    void *r = NULL;
    if (redisGetReply(c, &r) != REDIS_OK) {
        if (!c->err) conn_fail(c, "connection failed");
        if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
            snprintf(c->errstr, sizeof c->errstr, "no answer in time (read timed out)");
        return NULL;
    }
    return r;
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

/* redis://[user:password@]host[:port][/db]; port 6379 and db 0 when left out. */
int ew__redis_url_parse(rurl *u, const char *url, ew_error *err)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (strncmp(url, "rediss://", 9) == 0)
        return url_error(err, "TLS (rediss://) is not supported by this build");
    if (strncmp(url, "redis://", 8) != 0) {
        char what[160];
        snprintf(what, sizeof what, "'%.60s' does not start with redis://", url);
        return url_error(err, what);
    }
    const char *p = url + 8;
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
    redisFree(c);
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
    redisFree(rb->pub);
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
