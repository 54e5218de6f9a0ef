/* eventwire — the Redis backend (EVENT_BUS_TYPE=redis), on hiredis' blocking API.
 *
 * Streams (REDIS_MODE=streams, the default): every event type is a stream PREFIX:TYPE; publish
 * pipelines one XADD per event and returns when Redis has answered them all. Every subscriber
 * group is a Redis consumer group on each stream its patterns match (resolved against the
 * catalog), read by one consumer thread per group with XREADGROUP; a delivery is XACKed by a
 * second thread, in batches, only once the dispatcher is done with it. Entries a dead consumer
 * left pending are taken over with XAUTOCLAIM after REDIS_CLAIM_IDLE_MS; entries still in our
 * hands are kept fresh with XCLAIM JUSTID so that nobody takes them from a live consumer.
 *
 * Pub/Sub (REDIS_MODE=pubsub): PUBLISH to channel PREFIX:TYPE and PSUBSCRIBE per group; fire and
 * forget, as the seed had it. docs/bus-redis.md says what each mode promises. */
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
#include "bus/url.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define URL_VAR "REDIS_EVENT_URL"
#define URL_FORM "redis://[user:password@]host:port[/db]"
#define BLOCK_MS 500          /* one XREADGROUP BLOCK; stop() cuts it short with CLIENT UNBLOCK */
#define BACKOFF_MIN_MS 50     /* reconnection back-off, doubling ... */
#define BACKOFF_MAX_MS 2000   /* ... up to this */
#define ID_MAX 48             /* a stream entry id: two 64-bit numbers and a dash */
#define ACKS_PER_CMD 1024     /* ids in one XACK */
#define PENDING_PAGE 512      /* entries per page when re-reading our own pending list */
#define CLAIM_PAGE 256        /* entries per XAUTOCLAIM */
#define READ_BYTES (16 << 20) /* what one XREADGROUP should bring at most, roughly */
#define MAX_STREAMS EW_T__COUNT

/* ---- settings ---------------------------------------------------------------------------- */

typedef ew__redis_url rurl; /* bus/url.h */

typedef struct redis_bus redis_bus;

/* One stream a group reads: PREFIX:TYPE. */
typedef struct rstream {
    char *key;
    size_t key_len;
    const char *type;    /* in key, after the prefix */
    char cursor[ID_MAX]; /* where the next XAUTOCLAIM starts */
} rstream;

/* An acknowledgement waiting to be sent. */
typedef struct rack {
    uint32_t stream;
    char id[ID_MAX];
} rack;

typedef struct rackv {
    rack *v;
    size_t n, cap;
} rackv;

typedef struct rmsg rmsg;

/* The consumer of one subscriber group: a thread reading (and, for streams, a thread
 * acknowledging), each with its own connection, since a blocked XREADGROUP holds its
 * connection. */
typedef struct rconsumer {
    redis_bus *rb;
    char *group;
    char name[128]; /* the Redis consumer name: unique per bus */
    bool ephemeral; /* the group goes with the bus (XGROUP DESTROY at close) */

    pthread_mutex_t mu;
    pthread_cond_t cv;     /* the reader waits here: room, back-off, streams */
    pthread_cond_t ack_cv; /* the acker waits here */
    pthread_cond_t sub_cv; /* pubsub: subscribe() waits for confirmations */

    /* under mu */
    rstream streams[MAX_STREAMS];
    size_t nstreams;
    char **globs; /* pubsub patterns */
    size_t nglobs, globs_cap, nglobs_sent, nglobs_confirmed;
    rmsg *head, *tail; /* in flight, oldest first (by the time last delivered or refreshed) */
    size_t inflight;
    bool room_wait, ack_wait;
    rackv acks;    /* done(ACK), not yet sent */
    rackv sending; /* taken by the acker, being sent */
    bool stop, ack_stop, exited;

    bool running; /* threads started (under the bus's subscribe/start serialisation) */
    pthread_t reader, acker;
    bool acker_started;
    atomic_llong client_id; /* of the reader's connection, for CLIENT UNBLOCK; 0: none */
    size_t entry_bytes;     /* the reader's running estimate of an entry's size */
    int efd;                /* pubsub: wakes the reader's poll() */
} rconsumer;

struct rmsg {
    ew_delivery dl;
    rconsumer *c;
    rmsg *prev, *next;
    int64_t since_ns; /* delivered or last refreshed */
    uint32_t stream;
    char id[ID_MAX];
};

struct redis_bus {
    ew_bus *bus;
    ew_dispatcher *disp;
    rurl url;
    char addr[300]; /* host:port, for messages */
    char *prefix;
    bool pubsub;
    long long maxlen;
    int64_t claim_idle_ms;
    int connect_ms, io_ms;
    size_t max_inflight, low_water;
    size_t max_bytes;
    char consumer_base[96];
    char xadd_mid[96]; /* the constant part of an XADD after the key */
    size_t xadd_mid_len;
    int xadd_argc;

    pthread_mutex_t pub_mu; /* the publishing connection and everything below */
    redisContext *pub;
    int64_t pub_retry_ns; /* no new connection attempt before this */
    int pub_backoff_ms;
    char pub_last_err[256];

    /* consumers: changed by subscribed() and start() (serialised by the bus), read by stop and
     * close */
    rconsumer **cons;
    size_t ncons, cons_cap;
    bool started;
};

/* ---- small helpers ----------------------------------------------------------------------- */

static struct timeval ms_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static struct timespec mono_deadline(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static int next_backoff(int ms)
{
    return ms <= 0 ? BACKOFF_MIN_MS : ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : ms * 2;
}

static bool reply_is(const redisReply *r, int type)
{
    return r && r->type == type;
}

static bool reply_err_starts(const redisReply *r, const char *prefix)
{
    return reply_is(r, REDIS_REPLY_ERROR) && strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* ---- RESP: commands are formatted here and written with send(MSG_NOSIGNAL), so that a
 * connection the broker closed never raises SIGPIPE in the application; hiredis only reads. */

static void put_num(ew_buf *b, char kind, size_t n)
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

static void put_arg(ew_buf *b, const char *s, size_t n)
{
    put_num(b, '$', n);
    ew_buf_append(b, s, n);
    ew_buf_append(b, "\r\n", 2);
}

static void put_str(ew_buf *b, const char *s)
{
    put_arg(b, s, strlen(s));
}

static void put_cmd(ew_buf *b, int argc, const char *const *argv)
{
    put_num(b, '*', (size_t)argc);
    for (int i = 0; i < argc; i++)
        put_str(b, argv[i]);
}

static void conn_fail(redisContext *c, const char *what)
{
    c->err = REDIS_ERR_IO;
    snprintf(c->errstr, sizeof c->errstr, "%s", what);
}

static int rsend(redisContext *c, const char *buf, size_t len)
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
static bool rexchange(redisContext *c, const ew_buf *b, redisReply **replies, size_t n)
{
    memset(replies, 0, n * sizeof *replies);
    if (b->oom) {
        conn_fail(c, "out of memory formatting a command");
        return false;
    }
    if (rsend(c, b->data, b->len)) return false;
    for (size_t i = 0; i < n; i++)
        if (!(replies[i] = rread(c))) return false;
    return true;
}

static redisReply *rcmd(redisContext *c, int argc, const char *const *argv)
{
    ew_buf b;
    ew_buf_init(&b);
    put_cmd(&b, argc, argv);
    redisReply *r = NULL;
    rexchange(c, &b, &r, 1);
    ew_buf_release(&b);
    return r;
}

static void free_replies(redisReply **r, size_t n)
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
    redisReply *r = rcmd(c, 2, argv);
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
static redisContext *rconnect(redis_bus *rb, int io_ms, bool check_version, ew_error *err)
{
    redisContext *c = redisConnectWithTimeout(rb->url.host, rb->url.port, ms_tv(rb->connect_ms));
    if (!c) {
        ew_error_set(err, EW_ENOMEM, "out of memory connecting to Redis");
        return NULL;
    }
    if (c->err) {
        ew_error_set(err, EW_ECONNECT, "cannot connect to Redis at %s (%s): %s", rb->addr, URL_VAR,
                     c->errstr);
        goto fail;
    }
    if (redisSetTimeout(c, ms_tv(rb->connect_ms)) != REDIS_OK) {
        ew_error_set(err, EW_ECONNECT, "Redis at %s: %s", rb->addr, c->errstr);
        goto fail;
    }
    if (rb->url.has_pass) {
        const char *argv[] = {"AUTH", rb->url.user, rb->url.pass};
        int argc = rb->url.user[0] ? 3 : 2;
        if (argc == 2) argv[1] = rb->url.pass;
        redisReply *r = rcmd(c, argc, argv);
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
        redisReply *r = rcmd(c, 2, argv);
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
    if (redisSetTimeout(c, ms_tv(io_ms)) != REDIS_OK) {
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
static int pub_conn(redis_bus *rb, bool *fresh, ew_error *err)
{
    *fresh = false;
    if (rb->pub) return 0;
    int64_t now = ew_mono_ns();
    if (now < rb->pub_retry_ns)
        return ew_error_set(err, EW_ECONNECT, "Redis at %s is unreachable (%s): retrying", rb->addr,
                            rb->pub_last_err);
    ew_error e = {0};
    rb->pub = rconnect(rb, rb->io_ms, false, &e);
    if (!rb->pub) {
        rb->pub_backoff_ms = next_backoff(rb->pub_backoff_ms);
        rb->pub_retry_ns = now + (int64_t)rb->pub_backoff_ms * 1000000;
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

static void pub_drop(redis_bus *rb)
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
static int pub_exchange(redis_bus *rb, const ew_buf *b, redisReply **replies, size_t n,
                        size_t *nread, ew_error *err)
{
    for (int attempt = 0;; attempt++) {
        bool fresh;
        int rc = pub_conn(rb, &fresh, err);
        if (rc) return rc;
        bool ok = rexchange(rb->pub, b, replies, n);
        size_t got = 0;
        while (got < n && replies[got])
            got++;
        *nread = got;
        if (ok) return 0;
        char why[160];
        snprintf(why, sizeof why, "%s", rb->pub->errstr);
        pub_drop(rb);
        if (got == 0 && !fresh && attempt == 0) continue;
        return ew_error_set(err, EW_EIO,
                            "connection to Redis at %s failed after %zu of %zu "
                            "replies: %s",
                            rb->addr, got, n, why);
    }
}

/* ---- publish ----------------------------------------------------------------------------- */

static void put_key(ew_buf *b, const redis_bus *rb, const char *type)
{
    size_t pl = strlen(rb->prefix), tl = strlen(type);
    put_num(b, '$', pl + 1 + tl);
    ew_buf_append(b, rb->prefix, pl);
    ew_buf_putc(b, ':');
    ew_buf_append(b, type, tl);
    ew_buf_append(b, "\r\n", 2);
}

static int rd_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                      ew_error *err)
{
    redis_bus *rb = self;
    *npublished = 0;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_reserve(&b, n * 640);
    for (size_t i = 0; i < n; i++) {
        char *json;
        size_t len;
        ew_error e = {0};
        int rc = ew_event_encode(evs[i], &json, &len, &e);
        if (rc) {
            ew_buf_release(&b);
            return ew_error_set(err, rc, "event %zu of %zu (%s): %s: nothing published", i, n,
                                ew_event_id(evs[i]), e.msg);
        }
        if (len > rb->max_bytes) {
            free(json);
            ew_buf_release(&b);
            return ew_error_set(err, EW_ETOOBIG,
                                "event %zu of %zu (%s, %s) is %zu bytes encoded, more than "
                                "EVENT_MAX_BYTES (%zu): nothing published",
                                i, n, ew_event_id(evs[i]), ew_event_type(evs[i]), len,
                                rb->max_bytes);
        }
        if (rb->pubsub) {
            ew_buf_append(&b, "*3\r\n$7\r\nPUBLISH\r\n", 17);
        } else {
            put_num(&b, '*', (size_t)rb->xadd_argc);
            ew_buf_append(&b, "$4\r\nXADD\r\n", 10);
        }
        put_key(&b, rb, ew_event_type(evs[i]));
        if (!rb->pubsub) ew_buf_append(&b, rb->xadd_mid, rb->xadd_mid_len);
        put_arg(&b, json, len);
        free(json);
    }
    if (b.oom) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory: nothing published");
    }
    redisReply *stack[64];
    redisReply **replies = n <= 64 ? stack : malloc(n * sizeof *replies);
    if (!replies) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory: nothing published");
    }
    size_t nread = 0;
    pthread_mutex_lock(&rb->pub_mu);
    int rc = pub_exchange(rb, &b, replies, n, &nread, err);
    pthread_mutex_unlock(&rb->pub_mu);
    size_t ok = 0;
    while (ok < nread && replies[ok]->type != REDIS_REPLY_ERROR)
        ok++;
    if (ok < nread) {
        rc = ew_error_set(err, EW_EIO, "Redis at %s refused event %zu of %zu (%s): %.120s",
                          rb->addr, ok, n, ew_event_id(evs[ok]), replies[ok]->str);
    } else if (rc && n > 1 && err) {
        ew_error inner = *err;
        ew_error_set(err, rc, "event %zu of %zu not published: %s", ok, n, inner.msg);
    }
    *npublished = ok;
    free_replies(replies, nread);
    if (replies != stack) free(replies);
    ew_buf_release(&b);
    return rc;
}

/* ---- consumers: shared parts ------------------------------------------------------------- */

static bool stopping(rconsumer *c)
{
    pthread_mutex_lock(&c->mu);
    bool s = c->stop;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* Waits ms unless the consumer is stopped first: true then. */
static bool wait_stop(rconsumer *c, int ms)
{
    struct timespec ts = mono_deadline(ms);
    pthread_mutex_lock(&c->mu);
    while (!c->stop)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT) break;
    bool s = c->stop;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* Waits for room under EVENT_BUS_MAX_IN_FLIGHT; returns how much, 0 when stopped. */
static size_t wait_room(rconsumer *c)
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
static void room_freed(rconsumer *c)
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
static void ack_push_locked(rconsumer *c, uint32_t stream, const char *id)
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

static void list_unlink(rconsumer *c, rmsg *m)
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

static void list_append(rconsumer *c, rmsg *m)
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
static void msg_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    rmsg *m = dl->token;
    rconsumer *c = m->c;
    pthread_mutex_lock(&c->mu);
    list_unlink(c, m);
    c->inflight--;
    if (outcome == EW_DELIVERY_ACK && !c->rb->pubsub) ack_push_locked(c, m->stream, m->id);
    room_freed(c);
    pthread_mutex_unlock(&c->mu);
    free(m);
}

/* Is this entry ours already: in flight, or acknowledged and not yet confirmed? Under mu. */
static bool known_locked(rconsumer *c, uint32_t stream, const char *id)
{
    for (rmsg *m = c->head; m; m = m->next)
        if (m->stream == stream && strcmp(m->id, id) == 0) return true;
    for (size_t i = 0; i < c->acks.n; i++)
        if (c->acks.v[i].stream == stream && strcmp(c->acks.v[i].id, id) == 0) return true;
    for (size_t i = 0; i < c->sending.n; i++)
        if (c->sending.v[i].stream == stream && strcmp(c->sending.v[i].id, id) == 0) return true;
    return false;
}

/* What can be read of an undecodable payload: its id and type, when it is a JSON object. */
static void readable_attrs(const char *payload, size_t len, size_t max_bytes, ew_arena *a,
                           const char **id, const char **type)
{
    ew_json *root;
    ew_json_limits lim = {.max_bytes = max_bytes, .max_depth = 32};
    if (len > max_bytes || ew_json_parse(&root, payload, len, &lim, a, NULL)) return;
    const ew_json *v = ew_json_get(root, "id");
    if (v && v->kind == EW_JSON_STRING) *id = v->str;
    v = ew_json_get(root, "type");
    if (v && v->kind == EW_JSON_STRING) *type = v->str;
}

/* Keeps a message that could not be decoded in the bus's dead letter sink. true when it is
 * kept (the message may then be acknowledged). */
static bool dead_letter(rconsumer *c, const char *type, const char *what, const char *name,
                        const char *payload, size_t len, int code, const char *msg)
{
    redis_bus *rb = c->rb;
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    const char *id = NULL, *etype = NULL;
    readable_attrs(payload, len, rb->max_bytes, &a, &id, &etype);
    char error[400];
    snprintf(error, sizeof error, "%s: %s", ew_err_name(code), msg);
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = NULL,
        .payload = payload,
        .payload_len = len,
        .event_id = id,
        .event_type = etype ? etype : type,
        .group = c->group,
        .handler = "<decode>",
        .error = error,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
    };
    ew_error e = {0};
    int rc = ew__bus_dead_letter(rb->bus, &dl, &e);
    if (rc)
        ew__bus_log(rb->bus, EW_LOG_ERROR,
                    "redis: %s %s (%s) could not be decoded (%s) nor dead-lettered: %s; left "
                    "pending",
                    what, name, type ? type : "?", error, e.msg);
    else
        ew__bus_log(rb->bus, EW_LOG_WARN, "redis: %s %s (%s) dead-lettered for group %s: %s", what,
                    name, type ? type : "?", c->group, error);
    ew_arena_release(&a);
    return rc == 0;
}

/* Decodes a payload into an event, or dead-letters it (*kept tells whether the sink has it). */
static ew_event *decode_or_dead_letter(rconsumer *c, const char *type, const char *what,
                                       const char *name, const char *payload, size_t len,
                                       bool *kept)
{
    redis_bus *rb = c->rb;
    *kept = false;
    ew_error e = {0};
    int code;
    if (len > rb->max_bytes) {
        code = ew_error_set(&e, EW_ETOOBIG, "%zu bytes, more than EVENT_MAX_BYTES (%zu)", len,
                            rb->max_bytes);
    } else {
        ew_event *ev = NULL;
        ew_decode_opts o = {.max_bytes = rb->max_bytes};
        if (!(code = ew_event_decode(&ev, payload, len, &o, &e))) return ev;
    }
    *kept = dead_letter(c, type, what, name, payload, len, code, e.msg);
    return NULL;
}

/* ---- the streams consumer ---------------------------------------------------------------- */

/* A batch of entries taken from one XREADGROUP / XAUTOCLAIM reply, ready to deliver. */
typedef struct rbatch {
    rmsg **v;
    size_t n, cap;
    size_t bytes; /* of the events in it */
} rbatch;

/* Turns one entry [id, [field, value, ...] | nil] of stream s into a delivery in batch, or
 * acknowledges it (deleted, or dead-lettered). skip_known: drop entries we already hold. */
static void take_entry(rconsumer *c, uint32_t s, const redisReply *e, rbatch *batch,
                       bool skip_known)
{
    redis_bus *rb = c->rb;
    if (!reply_is(e, REDIS_REPLY_ARRAY) || e->elements < 2 ||
        !reply_is(e->element[0], REDIS_REPLY_STRING) || e->element[0]->len >= ID_MAX) {
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: unexpected entry shape in %s: skipped",
                    c->streams[s].key);
        return;
    }
    const char *id = e->element[0]->str;
    const redisReply *f = e->element[1];
    if (skip_known) {
        pthread_mutex_lock(&c->mu);
        bool known = known_locked(c, s, id);
        pthread_mutex_unlock(&c->mu);
        if (known) return;
    }
    if (!reply_is(f, REDIS_REPLY_ARRAY)) { /* deleted (trimmed) while pending */
        pthread_mutex_lock(&c->mu);
        ack_push_locked(c, s, id);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    const redisReply *val = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (f->element[i]->type == REDIS_REPLY_STRING && f->element[i]->len == 5 &&
            memcmp(f->element[i]->str, "event", 5) == 0) {
            val = f->element[i + 1];
            break;
        }
    bool kept = false;
    ew_event *ev = NULL;
    if (!val || val->type != REDIS_REPLY_STRING) {
        const redisReply *first = f->elements >= 2 ? f->element[1] : NULL;
        const char *p = first && first->type == REDIS_REPLY_STRING ? first->str : "";
        size_t pl = first && first->type == REDIS_REPLY_STRING ? first->len : 0;
        char msg[200];
        snprintf(msg, sizeof msg, "stream entry %s of %s has no 'event' field", id,
                 c->streams[s].key);
        kept = dead_letter(c, c->streams[s].type, "entry", id, p, pl, EW_EMISSING, msg);
    } else {
        ev = decode_or_dead_letter(c, c->streams[s].type, "entry", id, val->str, val->len, &kept);
        batch->bytes += val->len;
    }
    if (!ev) {
        if (kept) {
            pthread_mutex_lock(&c->mu);
            ack_push_locked(c, s, id);
            pthread_mutex_unlock(&c->mu);
        }
        return;
    }
    rmsg *m = malloc(sizeof *m);
    if (!m || (batch->n == batch->cap &&
               !(batch->v = realloc(batch->v, (batch->cap = batch->cap ? batch->cap * 2 : 256) *
                                                  sizeof *batch->v)))) {
        free(m);
        ew_event_unref(ev);
        ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: out of memory: %s left pending", id);
        return;
    }
    *m = (rmsg){.c = c, .stream = s};
    memcpy(m->id, id, e->element[0]->len + 1);
    m->dl.event = ev;
    m->dl.group = c->group;
    m->dl.done = msg_done;
    m->dl.token = m;
    batch->v[batch->n++] = m;
}

/* Hands a batch to the dispatcher, in order. Every entry counts as in flight first (done() may
 * run before ew__dispatch_deliver() returns). */
static void deliver_batch(rconsumer *c, rbatch *batch)
{
    if (!batch->n) return;
    int64_t now = ew_mono_ns();
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < batch->n; i++) {
        batch->v[i]->since_ns = now;
        list_append(c, batch->v[i]);
    }
    c->inflight += batch->n;
    pthread_mutex_unlock(&c->mu);
    ew_dispatcher *d = c->rb->disp;
    for (size_t i = 0; i < batch->n; i++) {
        rmsg *m = batch->v[i];
        const ew_event *ev = m->dl.event;
        ew_error e = {0};
        if (ew__dispatch_deliver(d, &m->dl, &e)) {
            /* done() will never be called: the entry stays pending and is claimed again */
            ew__bus_log(c->rb->bus, EW_LOG_ERROR,
                        "redis: entry %s of %s (event %s) not handed to the handlers: %s; left "
                        "pending",
                        m->id, c->streams[m->stream].key, ew_event_id(ev), e.msg);
            pthread_mutex_lock(&c->mu);
            list_unlink(c, m);
            c->inflight--;
            pthread_mutex_unlock(&c->mu);
            free(m);
        }
        ew_event_unref(ev);
    }
    batch->n = 0;
}

static uint32_t stream_index(rconsumer *c, const redisReply *key, const uint32_t *sel, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const rstream *s = &c->streams[sel[i]];
        if (key->len == s->key_len && memcmp(key->str, s->key, key->len) == 0) return sel[i];
    }
    return UINT32_MAX;
}

/* Reads one XREADGROUP reply ([[key, [entry...]], ...] or nil) into batch. Stores the last id
 * per stream and whether the stream gave a full page in last/full when given. */
static void take_read_reply(rconsumer *c, const redisReply *r, const uint32_t *sel, size_t nsel,
                            rbatch *batch, bool skip_known, char (*last)[ID_MAX], bool *full,
                            size_t page)
{
    if (!reply_is(r, REDIS_REPLY_ARRAY)) return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sr = r->element[i];
        if (!reply_is(sr, REDIS_REPLY_ARRAY) || sr->elements != 2 ||
            !reply_is(sr->element[0], REDIS_REPLY_STRING) ||
            !reply_is(sr->element[1], REDIS_REPLY_ARRAY))
            continue;
        uint32_t s = stream_index(c, sr->element[0], sel, nsel);
        if (s == UINT32_MAX) continue;
        const redisReply *entries = sr->element[1];
        for (size_t j = 0; j < entries->elements; j++)
            take_entry(c, s, entries->element[j], batch, skip_known);
        if (last) {
            size_t k = 0;
            while (k < nsel && sel[k] != s)
                k++;
            if (k < nsel && entries->elements) {
                const redisReply *le = entries->element[entries->elements - 1];
                if (reply_is(le, REDIS_REPLY_ARRAY) && le->elements >= 1 &&
                    reply_is(le->element[0], REDIS_REPLY_STRING) && le->element[0]->len < ID_MAX)
                    memcpy(last[k], le->element[0]->str, le->element[0]->len + 1);
            }
            if (k < nsel) full[k] = entries->elements >= page;
        }
    }
}

/* Creates the group on streams[from..to) of c (XGROUP CREATE key group ID MKSTREAM), pipelined;
 * an existing group is left as it is. */
static int create_groups(redis_bus *rb, redisContext *conn, rconsumer *c, rstream *const *ss,
                         size_t n, const char *start_id, ew_error *err)
{
    if (!n) return 0;
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XGROUP", "CREATE", ss[i]->key, c->group, start_id, "MKSTREAM"};
        put_cmd(&b, 6, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    int rc = 0;
    if (!r) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else if (!rexchange(conn, &b, r, n)) {
        rc = ew_error_set(err, EW_EIO, "creating consumer group %s on Redis at %s: %s", c->group,
                          rb->addr, conn->errstr);
    } else {
        for (size_t i = 0; i < n && !rc; i++)
            if (r[i]->type == REDIS_REPLY_ERROR && !reply_err_starts(r[i], "BUSYGROUP"))
                rc = ew_error_set(err, EW_EIO, "XGROUP CREATE %s %s: %.150s", ss[i]->key, c->group,
                                  r[i]->str);
    }
    if (r) free_replies(r, n);
    free(r);
    ew_buf_release(&b);
    return rc;
}

/* The group vanished (the broker lost its data, or someone deleted the stream): create it
 * again from the start of what the stream holds now. */
static int recreate_groups(rconsumer *c, redisContext *conn)
{
    rstream *ss[MAX_STREAMS];
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    for (size_t i = 0; i < n; i++)
        ss[i] = &c->streams[i];
    pthread_mutex_unlock(&c->mu);
    ew_error e = {0};
    int rc = create_groups(c->rb, conn, c, ss, n, "0", &e);
    if (rc)
        ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: group %s: %s", c->group, e.msg);
    else
        ew__bus_log(c->rb->bus, EW_LOG_WARN,
                    "redis: consumer group %s was missing on %s: created again from the "
                    "oldest entry",
                    c->group, c->rb->addr);
    return rc;
}

/* Re-reads this consumer's own pending entries (XREADGROUP ... 0): what the broker handed us
 * on a connection that failed before we received it. Entries we hold are skipped. */
static int read_own_pending(rconsumer *c, redisContext *conn, rbatch *batch)
{
    uint32_t sel[MAX_STREAMS];
    char last[MAX_STREAMS][ID_MAX];
    bool full[MAX_STREAMS];
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        sel[i] = (uint32_t)i;
        strcpy(last[i], "0");
    }
    char count[16];
    snprintf(count, sizeof count, "%d", PENDING_PAGE);
    while (n > 0) {
        const char *argv[6 + 2 * MAX_STREAMS];
        int argc = 0;
        argv[argc++] = "XREADGROUP";
        argv[argc++] = "GROUP";
        argv[argc++] = c->group;
        argv[argc++] = c->name;
        argv[argc++] = "COUNT";
        argv[argc++] = count;
        argv[argc++] = "STREAMS";
        for (size_t i = 0; i < n; i++)
            argv[argc++] = c->streams[sel[i]].key;
        for (size_t i = 0; i < n; i++)
            argv[argc++] = last[i];
        redisReply *r = rcmd(conn, argc, argv);
        if (!r) return -1;
        if (r->type == REDIS_REPLY_ERROR) {
            bool nogroup = reply_err_starts(r, "NOGROUP");
            if (!nogroup)
                ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: reading pending entries of %s: %s",
                            c->group, r->str);
            freeReplyObject(r);
            return nogroup ? recreate_groups(c, conn) : 0;
        }
        for (size_t i = 0; i < n; i++)
            full[i] = false;
        take_read_reply(c, r, sel, n, batch, true, last, full, PENDING_PAGE);
        freeReplyObject(r);
        if (batch->n)
            ew__bus_log(c->rb->bus, EW_LOG_INFO,
                        "redis: group %s: %zu entries the broker gave us before the connection "
                        "failed are delivered now",
                        c->group, batch->n);
        deliver_batch(c, batch);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (full[i]) {
                sel[k] = sel[i];
                memmove(last[k], last[i], ID_MAX);
                k++;
            }
        n = k;
    }
    return 0;
}

/* Takes over entries that other (dead) consumers of the group left pending longer than
 * REDIS_CLAIM_IDLE_MS. */
static int autoclaim(rconsumer *c, redisContext *conn, rbatch *batch, size_t avail)
{
    redis_bus *rb = c->rb;
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    char idle[24], count[16];
    snprintf(idle, sizeof idle, "%" PRId64, rb->claim_idle_ms);
    for (size_t s = 0; s < n && avail > 0; s++) {
        rstream *st = &c->streams[s];
        size_t claimed = 0;
        for (int page = 0; page < 16 && avail > 0; page++) {
            size_t want = avail < CLAIM_PAGE ? avail : (size_t)CLAIM_PAGE;
            snprintf(count, sizeof count, "%zu", want);
            const char *argv[] = {"XAUTOCLAIM", st->key,    c->group, c->name,
                                  idle,         st->cursor, "COUNT",  count};
            redisReply *r = rcmd(conn, 8, argv);
            if (!r) return -1;
            if (r->type == REDIS_REPLY_ERROR) {
                bool nogroup = reply_err_starts(r, "NOGROUP");
                if (!nogroup)
                    ew__bus_log(rb->bus, EW_LOG_ERROR, "redis: XAUTOCLAIM %s %s: %s", st->key,
                                c->group, r->str);
                freeReplyObject(r);
                if (nogroup && recreate_groups(c, conn)) return -1;
                break;
            }
            bool more = false;
            if (reply_is(r, REDIS_REPLY_ARRAY) && r->elements >= 2 &&
                reply_is(r->element[0], REDIS_REPLY_STRING) && r->element[0]->len < ID_MAX &&
                reply_is(r->element[1], REDIS_REPLY_ARRAY)) {
                memcpy(st->cursor, r->element[0]->str, r->element[0]->len + 1);
                const redisReply *entries = r->element[1];
                for (size_t j = 0; j < entries->elements; j++)
                    take_entry(c, (uint32_t)s, entries->element[j], batch, true);
                claimed += batch->n;
                avail = batch->n < avail ? avail - batch->n : 0;
                deliver_batch(c, batch);
                more = strcmp(st->cursor, "0-0") != 0;
            }
            freeReplyObject(r);
            if (!more) break;
        }
        if (claimed)
            ew__bus_log(rb->bus, EW_LOG_INFO,
                        "redis: group %s took over %zu entries of %s pending for more than "
                        "%" PRId64 " ms",
                        c->group, claimed, st->key, rb->claim_idle_ms);
    }
    return 0;
}

/* One XREADGROUP for new entries of the streams sel[0..nsel), COUNT each; BLOCK when block_ms
 * > 0. Returns -1 when the connection failed, else 0 and *got = the entries delivered. */
static int read_group(rconsumer *c, redisContext *conn, rbatch *batch, const uint32_t *sel,
                      size_t nsel, size_t count, int block_ms, size_t *got)
{
    char counts[24], block[16];
    snprintf(counts, sizeof counts, "%zu", count);
    snprintf(block, sizeof block, "%d", block_ms);
    const char *argv[10 + 2 * MAX_STREAMS];
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = c->group;
    argv[argc++] = c->name;
    argv[argc++] = "COUNT";
    argv[argc++] = counts;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    }
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < nsel; i++)
        argv[argc++] = c->streams[sel[i]].key;
    for (size_t i = 0; i < nsel; i++)
        argv[argc++] = ">";
    *got = 0;
    redisReply *r = rcmd(conn, argc, argv);
    if (!r) return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (reply_err_starts(r, "NOGROUP")) {
            rc = recreate_groups(c, conn);
        } else if (!reply_err_starts(r, "UNBLOCKED")) {
            ew__bus_log(c->rb->bus, EW_LOG_ERROR, "redis: XREADGROUP for group %s: %s", c->group,
                        r->str);
            wait_stop(c, BACKOFF_MAX_MS);
        }
    } else {
        batch->bytes = 0;
        take_read_reply(c, r, sel, nsel, batch, false, NULL, NULL, 0);
        if (batch->n) c->entry_bytes = (c->entry_bytes + batch->bytes / batch->n) / 2 + 1;
    }
    freeReplyObject(r);
    *got = batch->n;
    deliver_batch(c, batch);
    return rc;
}

/* Reads new entries, at most avail of them in all. COUNT is per stream, so with room for fewer
 * entries than there are streams, the streams are read `avail` at a time without blocking,
 * in turn, and when none has anything the reader waits for the next XADD on any of them with a
 * plain XREAD (which takes nothing), so that the bound holds. */
static int read_new(rconsumer *c, redisContext *conn, rbatch *batch, size_t avail, size_t *rot)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nstreams;
    if (n == 0) {
        struct timespec ts = mono_deadline(BLOCK_MS);
        if (!c->stop) pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    pthread_mutex_unlock(&c->mu);
    uint32_t sel[MAX_STREAMS];
    size_t got = 0;
    if (avail >= n) {
        for (size_t i = 0; i < n; i++)
            sel[i] = (uint32_t)i;
        /* large events: keep one reply within READ_BYTES */
        size_t count = avail / n, fit = READ_BYTES / n / (c->entry_bytes ? c->entry_bytes : 1);
        return read_group(c, conn, batch, sel, n,
                          count < fit ? count
                          : fit       ? fit
                                      : 1,
                          BLOCK_MS, &got);
    }
    for (size_t tried = 0; tried < n; tried += avail) {
        for (size_t i = 0; i < avail; i++)
            sel[i] = (uint32_t)((*rot + i) % n);
        *rot = (*rot + avail) % n;
        if (read_group(c, conn, batch, sel, avail, 1, 0, &got)) return -1;
        if (got) return 0;
    }
    char block[16];
    snprintf(block, sizeof block, "%d", BLOCK_MS);
    const char *argv[6 + 2 * MAX_STREAMS];
    int argc = 0;
    argv[argc++] = "XREAD";
    argv[argc++] = "COUNT";
    argv[argc++] = "1";
    argv[argc++] = "BLOCK";
    argv[argc++] = block;
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < n; i++)
        argv[argc++] = c->streams[i].key;
    for (size_t i = 0; i < n; i++)
        argv[argc++] = "$";
    redisReply *r = rcmd(conn, argc, argv);
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

static redisContext *consumer_connect(rconsumer *c, int io_ms, int *backoff, bool *was_down,
                                      const char *role)
{
    redis_bus *rb = c->rb;
    if (*backoff && wait_stop(c, *backoff)) return NULL;
    ew_error e = {0};
    redisContext *conn = rconnect(rb, io_ms, false, &e);
    if (!conn) {
        if (!*was_down)
            ew__bus_log(rb->bus, EW_LOG_WARN, "redis: %s of group %s: %s; retrying", role, c->group,
                        e.msg);
        *was_down = true;
        *backoff = next_backoff(*backoff);
        return NULL;
    }
    if (*was_down)
        ew__bus_log(rb->bus, EW_LOG_INFO, "redis: %s of group %s reconnected to %s", role, c->group,
                    rb->addr);
    *was_down = false;
    *backoff = 0;
    return conn;
}

static void consumer_drop(rconsumer *c, redisContext **conn, bool *was_down, const char *role)
{
    if (!*conn) return;
    if (!stopping(c)) {
        ew__bus_log(c->rb->bus, EW_LOG_WARN, "redis: %s of group %s lost its connection: %s", role,
                    c->group, (*conn)->errstr);
        *was_down = true;
    }
    atomic_store(&c->client_id, 0);
    redisFree(*conn);
    *conn = NULL;
}

static void *stream_reader_main(void *arg)
{
    rconsumer *c = arg;
    redis_bus *rb = c->rb;
    redisContext *conn = NULL;
    int backoff = 0;
    bool was_down = false, need_pending = true;
    rbatch batch = {0};
    size_t rot = 0;
    int64_t claim_period_ns = (rb->claim_idle_ms / 4 < 100    ? 100
                               : rb->claim_idle_ms / 4 > 5000 ? 5000
                                                              : rb->claim_idle_ms / 4) *
                              1000000;
    int64_t next_claim = 0;
    while (!stopping(c)) {
        if (!conn) {
            if (!(conn =
                      consumer_connect(c, BLOCK_MS + rb->io_ms, &backoff, &was_down, "the reader")))
                continue;
            conn->reader->maxbuf = 0; /* keep the read buffer: replies are large */
            const char *argv[] = {"CLIENT", "ID"};
            redisReply *r = rcmd(conn, 2, argv);
            if (r && r->type == REDIS_REPLY_INTEGER) atomic_store(&c->client_id, r->integer);
            if (r) freeReplyObject(r);
            need_pending = true;
        }
        int rc = 0;
        if (need_pending) {
            rc = read_own_pending(c, conn, &batch);
            need_pending = rc != 0;
        }
        int64_t now = ew_mono_ns();
        if (!rc && now >= next_claim) {
            size_t avail = wait_room(c);
            if (!avail) break;
            rc = autoclaim(c, conn, &batch, avail);
            next_claim = now + claim_period_ns;
        }
        if (!rc) {
            size_t avail = wait_room(c);
            if (!avail) break;
            rc = read_new(c, conn, &batch, avail, &rot);
        }
        if (rc) {
            consumer_drop(c, &conn, &was_down, "the reader");
            backoff = next_backoff(backoff);
        }
    }
    consumer_drop(c, &conn, &was_down, "the reader");
    free(batch.v);
    pthread_mutex_lock(&c->mu);
    c->exited = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
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
                    put_num(b, '*', 3 + k);
                    put_str(b, "XACK");
                    put_arg(b, c->streams[s].key, c->streams[s].key_len);
                    put_str(b, c->group);
                } else {
                    put_num(b, '*', 6 + k);
                    put_str(b, "XCLAIM");
                    put_arg(b, c->streams[s].key, c->streams[s].key_len);
                    put_str(b, c->group);
                    put_str(b, c->name);
                    put_str(b, "0");
                }
                for (size_t put = 0; put < k; j++)
                    if (v->v[j].stream == s) {
                        put_str(b, v->v[j].id);
                        put++;
                    }
                if (pass == 1) put_str(b, "JUSTID");
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
        list_unlink(c, m);
        list_append(c, m);
    }
}

/* Sleeps ms on the acker's condition variable (mu held). */
static void acker_sleep_locked(rconsumer *c, int ms)
{
    struct timespec ts = mono_deadline(ms);
    while (pthread_cond_timedwait(&c->ack_cv, &c->mu, &ts) != ETIMEDOUT)
        if (c->ack_stop) break;
}

/* Sends the acknowledgements the dispatcher's done() calls queue, as they come: while one batch
 * is on the wire the next one gathers, so batches grow with the load. Also refreshes entries
 * held long. Runs until close(), after the reader stopped, so that the drain is acknowledged. */
static void *acker_main(void *arg)
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
                struct timespec ts = mono_deadline((next_hb - ew_mono_ns()) / 1000000 + 1);
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
            if (!(conn = rconnect(rb, rb->io_ms, false, &e))) {
                if (!was_down)
                    ew__bus_log(rb->bus, EW_LOG_WARN,
                                "redis: acknowledgements of group %s wait: %s; retrying", c->group,
                                e.msg);
                was_down = true;
                backoff = next_backoff(backoff);
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
                backoff = next_backoff(backoff);
            } else if (!rexchange(conn, &b, r, ncmd)) {
                ew__bus_log(rb->bus, EW_LOG_WARN,
                            "redis: acknowledgements of group %s: connection lost: %s", c->group,
                            conn->errstr);
                redisFree(conn);
                conn = NULL;
                was_down = true;
                backoff = next_backoff(backoff);
            } else {
                ok = true;
                for (size_t i = 0; i < ncmd; i++)
                    if (r[i]->type == REDIS_REPLY_ERROR && !reply_err_starts(r[i], "NOGROUP"))
                        ew__bus_log(rb->bus, EW_LOG_ERROR,
                                    "redis: acknowledging entries of group %s: %s", c->group,
                                    r[i]->str);
            }
            if (r) free_replies(r, ncmd);
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
    if (conn) redisFree(conn);
    free(hb.v);
    ew_buf_release(&b);
    return NULL;
}

/* ---- the Pub/Sub consumer ---------------------------------------------------------------- */

/* "user.*" -> "PREFIX:user.*"; "user.#" -> "PREFIX:user*"; "*.x", "#" -> "PREFIX:*". The glob may
 * be wider than the pattern: the dispatcher routes by the exact pattern. */
static char *pattern_glob(const redis_bus *rb, const char *pattern)
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
    room_freed(c);
    pthread_mutex_unlock(&c->mu);
    free(m);
}

static void pubsub_message(rconsumer *c, const redisReply *r)
{
    redis_bus *rb = c->rb;
    if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 3 ||
        !reply_is(r->element[0], REDIS_REPLY_STRING))
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
        !reply_is(r->element[2], REDIS_REPLY_STRING) ||
        !reply_is(r->element[3], REDIS_REPLY_STRING))
        return;
    const char *channel = r->element[2]->str;
    size_t pl = strlen(rb->prefix);
    const char *type = strlen(channel) > pl + 1 ? channel + pl + 1 : channel;
    bool kept;
    ew_event *ev = decode_or_dead_letter(c, type, "message on", channel, r->element[3]->str,
                                         r->element[3]->len, &kept);
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
        put_num(&b, '*', 1 + (to - from));
        put_str(&b, "PSUBSCRIBE");
        for (size_t i = from; i < to; i++)
            put_str(&b, c->globs[i]);
    }
    pthread_mutex_unlock(&c->mu);
    int rc = 0;
    if (to > from) {
        rc = b.oom ? -1 : rsend(conn, b.data, b.len);
        if (!rc) {
            pthread_mutex_lock(&c->mu);
            c->nglobs_sent = to;
            pthread_mutex_unlock(&c->mu);
        }
    }
    ew_buf_release(&b);
    return rc;
}

static void *pubsub_reader_main(void *arg)
{
    rconsumer *c = arg;
    redis_bus *rb = c->rb;
    redisContext *conn = NULL;
    int backoff = 0;
    bool was_down = false;
    while (!stopping(c)) {
        if (!conn) {
            if (!(conn = consumer_connect(c, rb->io_ms, &backoff, &was_down, "the subscriber")))
                continue;
            pthread_mutex_lock(&c->mu);
            c->nglobs_sent = c->nglobs_confirmed = 0;
            pthread_mutex_unlock(&c->mu);
        }
        if (pubsub_send_globs(c, conn) || !wait_room(c)) goto drop;
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
            if (redisBufferRead(conn) != REDIS_OK) goto drop;
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
        consumer_drop(c, &conn, &was_down, "the subscriber");
        backoff = next_backoff(backoff);
    }
    consumer_drop(c, &conn, &was_down, "the subscriber");
    pthread_mutex_lock(&c->mu);
    c->exited = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Waits until every glob of c is confirmed by Redis, up to the connect time-out. */
static int pubsub_wait_confirmed(rconsumer *c, ew_error *err)
{
    redis_bus *rb = c->rb;
    struct timespec ts = mono_deadline(rb->connect_ms);
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

static void pubsub_wake(rconsumer *c)
{
    uint64_t one = 1;
    if (c->efd >= 0 && write(c->efd, &one, sizeof one) < 0) { /* the poll times out anyway */
    }
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static void consumer_free(rconsumer *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->nstreams; i++)
        free(c->streams[i].key);
    for (size_t i = 0; i < c->nglobs; i++)
        free(c->globs[i]);
    free(c->globs);
    free(c->acks.v);
    free(c->sending.v);
    if (c->efd >= 0) close(c->efd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->ack_cv);
    pthread_cond_destroy(&c->sub_cv);
    free(c->group);
    free(c);
}

static rconsumer *consumer_get(redis_bus *rb, const char *group, ew_error *err)
{
    for (size_t i = 0; i < rb->ncons; i++)
        if (strcmp(rb->cons[i]->group, group) == 0) return rb->cons[i];
    if (rb->ncons == rb->cons_cap) {
        size_t cap = rb->cons_cap ? rb->cons_cap * 2 : 4;
        rconsumer **v = realloc(rb->cons, cap * sizeof *v);
        if (!v) goto oom;
        rb->cons = v;
        rb->cons_cap = cap;
    }
    rconsumer *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->rb = rb;
    c->efd = -1;
    c->group = strdup(group);
    pthread_mutex_init(&c->mu, NULL);
    cond_init_mono(&c->cv);
    cond_init_mono(&c->ack_cv);
    cond_init_mono(&c->sub_cv);
    if (!c->group || (rb->pubsub && (c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)) {
        consumer_free(c);
        goto oom;
    }
    snprintf(c->name, sizeof c->name, "%s-%zu", rb->consumer_base, rb->ncons);
    rb->cons[rb->ncons++] = c;
    return c;
oom:
    ew_error_set(err, EW_ENOMEM, "out of memory adding group %s", group);
    return NULL;
}

static int consumer_start(rconsumer *c, ew_error *err)
{
    redis_bus *rb = c->rb;
    if (!c->running) {
        if (!rb->pubsub) {
            if (pthread_create(&c->acker, NULL, acker_main, c))
                return ew_error_set(err, EW_ENOMEM, "cannot start a thread for group %s", c->group);
            c->acker_started = true;
        }
        if (pthread_create(&c->reader, NULL, rb->pubsub ? pubsub_reader_main : stream_reader_main,
                           c)) {
            return ew_error_set(err, EW_ENOMEM, "cannot start a thread for group %s", c->group);
        }
        c->running = true;
    }
    return rb->pubsub ? pubsub_wait_confirmed(c, err) : 0;
}

static int rd_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    redis_bus *rb = self;
    rconsumer *c = consumer_get(rb, group, err);
    if (!c) return EW_ENOMEM;
    if (bsub->ephemeral) c->ephemeral = true;
    if (rb->pubsub) {
        /* Pub/Sub keeps nothing: bsub->from_beginning has nothing to replay and is ignored. */
        char *g = pattern_glob(rb, pattern);
        if (!g) return ew_error_set(err, EW_ENOMEM, "out of memory");
        pthread_mutex_lock(&c->mu);
        bool have = false;
        for (size_t i = 0; i < c->nglobs && !have; i++)
            have = strcmp(c->globs[i], g) == 0;
        if (!have && c->nglobs == c->globs_cap) {
            size_t cap = c->globs_cap ? c->globs_cap * 2 : 8;
            char **v = realloc(c->globs, cap * sizeof *v);
            if (!v) {
                pthread_mutex_unlock(&c->mu);
                free(g);
                return ew_error_set(err, EW_ENOMEM, "out of memory");
            }
            c->globs = v;
            c->globs_cap = cap;
        }
        if (!have)
            c->globs[c->nglobs++] = g;
        else
            free(g);
        pthread_mutex_unlock(&c->mu);
        if (have || !rb->started) return 0;
        pubsub_wake(c);
        return consumer_start(c, err);
    }

    /* Streams: every catalog type the pattern matches, each a stream of its own. */
    rstream *added[MAX_STREAMS];
    size_t nadded = 0;
    pthread_mutex_lock(&c->mu);
    size_t have = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const ew_type_info *t = ew_catalog_at(i);
        if (!t->latest || !ew_pattern_match(pattern, t->type)) continue;
        size_t kl = strlen(rb->prefix) + 1 + strlen(t->type);
        bool dup = false;
        for (size_t j = 0; j < have + nadded && !dup; j++) {
            const rstream *s = &c->streams[j];
            dup = s->key_len == kl && strcmp(s->key + strlen(rb->prefix) + 1, t->type) == 0;
        }
        if (dup || have + nadded >= MAX_STREAMS) continue;
        rstream *s = &c->streams[have + nadded];
        if (!(s->key = malloc(kl + 1))) {
            for (size_t j = 0; j < nadded; j++) {
                free(added[j]->key);
                added[j]->key = NULL;
            }
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        snprintf(s->key, kl + 1, "%s:%s", rb->prefix, t->type);
        s->key_len = kl;
        s->type = s->key + kl - strlen(t->type);
        strcpy(s->cursor, "0-0");
        added[nadded++] = s;
    }
    if (have + nadded == 0)
        ew__bus_log(rb->bus, EW_LOG_WARN,
                    "redis: pattern %s of group %s matches no event type of the catalog: it will "
                    "receive nothing",
                    pattern, group);
    int rc = 0;
    if (nadded) {
        pthread_mutex_lock(&rb->pub_mu);
        bool fresh;
        for (int attempt = 0; attempt < 2; attempt++) {
            if ((rc = pub_conn(rb, &fresh, err))) break;
            /* A group new on a stream starts at its end ($), or at its first entry (0) with
             * from_beginning; on a stream where it exists (BUSYGROUP) it stays where it is. */
            rc =
                create_groups(rb, rb->pub, c, added, nadded, bsub->from_beginning ? "0" : "$", err);
            if (!rc || rb->pub->err == 0) break;
            pub_drop(rb); /* a dead idle connection: one more try on a new one */
            if (fresh) break;
        }
        pthread_mutex_unlock(&rb->pub_mu);
        if (rc) {
            for (size_t j = 0; j < nadded; j++) {
                free(added[j]->key);
                added[j]->key = NULL;
            }
            return rc;
        }
        pthread_mutex_lock(&c->mu);
        c->nstreams = have + nadded;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    if (rb->started) return consumer_start(c, err);
    return 0;
}

static int rd_start(void *self, ew_error *err)
{
    redis_bus *rb = self;
    rb->started = true;
    for (size_t i = 0; i < rb->ncons; i++) {
        int rc = consumer_start(rb->cons[i], err);
        if (rc) return rc;
    }
    return 0;
}

/* Cuts short the readers' blocked XREADGROUP (CLIENT UNBLOCK on the publishing connection). */
static void unblock_readers(redis_bus *rb)
{
    ew_buf b;
    ew_buf_init(&b);
    size_t n = 0;
    for (size_t i = 0; i < rb->ncons; i++) {
        long long id = atomic_load(&rb->cons[i]->client_id);
        if (!id) continue;
        char ids[24];
        snprintf(ids, sizeof ids, "%lld", id);
        const char *argv[] = {"CLIENT", "UNBLOCK", ids};
        put_cmd(&b, 3, argv);
        n++;
    }
    if (n) {
        redisReply *stack[16];
        redisReply **r = n <= 16 ? stack : calloc(n, sizeof *r);
        pthread_mutex_lock(&rb->pub_mu);
        size_t got = 0;
        if (r && rb->pub) {
            pub_exchange(rb, &b, r, n, &got, NULL);
            free_replies(r, got);
        }
        pthread_mutex_unlock(&rb->pub_mu);
        if (r != stack) free(r);
    }
    ew_buf_release(&b);
}

static void rd_stop(void *self)
{
    redis_bus *rb = self;
    for (size_t i = 0; i < rb->ncons; i++) {
        rconsumer *c = rb->cons[i];
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        if (rb->pubsub) pubsub_wake(c);
    }
    /* A reader may be between commands when the unblock arrives: ask again until it is out. */
    for (int round = 0; round < 100; round++) {
        bool all = true;
        if (!rb->pubsub) unblock_readers(rb);
        for (size_t i = 0; i < rb->ncons; i++) {
            rconsumer *c = rb->cons[i];
            if (!c->running) continue;
            struct timespec ts = mono_deadline(20);
            pthread_mutex_lock(&c->mu);
            while (!c->exited)
                if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT) break;
            all = all && c->exited;
            pthread_mutex_unlock(&c->mu);
        }
        if (all) break;
    }
    for (size_t i = 0; i < rb->ncons; i++) {
        rconsumer *c = rb->cons[i];
        if (c->running) pthread_join(c->reader, NULL);
        c->running = false;
    }
}

/* An ephemeral group goes from every stream (XGROUP DESTROY), pending entries and all. */
static void destroy_group(redis_bus *rb, rconsumer *c)
{
    size_t n = c->nstreams;
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XGROUP", "DESTROY", c->streams[i].key, c->group};
        put_cmd(&b, 4, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    size_t got = 0;
    pthread_mutex_lock(&rb->pub_mu);
    if (r && pub_exchange(rb, &b, r, n, &got, NULL))
        ew__bus_log(rb->bus, EW_LOG_WARN, "redis: group %s was not removed from its streams",
                    c->group);
    if (r) free_replies(r, got);
    pthread_mutex_unlock(&rb->pub_mu);
    free(r);
    ew_buf_release(&b);
}

/* Removes this bus's consumer from its group on every stream where it holds nothing pending
 * (where it does, it stays, so that its entries can be taken over), so that closed buses do not
 * pile up in XINFO CONSUMERS; an ephemeral group goes altogether. Best effort. */
static void forget_consumer(redis_bus *rb, rconsumer *c)
{
    size_t n = c->nstreams;
    if (!n || !rb->pub) return; /* nothing, or Redis is away: no new connection to close */
    if (c->ephemeral) {
        destroy_group(rb, c);
        return;
    }
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XPENDING", c->streams[i].key, c->group, "-", "+", "1", c->name};
        put_cmd(&b, 7, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    size_t got = 0;
    pthread_mutex_lock(&rb->pub_mu);
    if (r && !pub_exchange(rb, &b, r, n, &got, NULL)) {
        ew_buf_reset(&b);
        size_t ndel = 0;
        for (size_t i = 0; i < n; i++)
            if (reply_is(r[i], REDIS_REPLY_ARRAY) && r[i]->elements == 0) {
                const char *argv[] = {"XGROUP", "DELCONSUMER", c->streams[i].key, c->group,
                                      c->name};
                put_cmd(&b, 5, argv);
                ndel++;
            }
        free_replies(r, got);
        got = 0;
        if (ndel && !pub_exchange(rb, &b, r, ndel, &got, NULL)) { /* done */
        }
    }
    if (r) free_replies(r, got);
    pthread_mutex_unlock(&rb->pub_mu);
    free(r);
    ew_buf_release(&b);
}

static void rd_close(void *self)
{
    redis_bus *rb = self;
    for (size_t i = 0; i < rb->ncons; i++) {
        rconsumer *c = rb->cons[i];
        if (c->acker_started) {
            pthread_mutex_lock(&c->mu);
            c->ack_stop = true;
            pthread_cond_broadcast(&c->ack_cv);
            pthread_mutex_unlock(&c->mu);
            pthread_join(c->acker, NULL);
            forget_consumer(rb, c);
        }
        consumer_free(c);
    }
    free(rb->cons);
    if (rb->pub) redisFree(rb->pub);
    pthread_mutex_destroy(&rb->pub_mu);
    free(rb->prefix);
    free(rb);
}

static int rd_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    redis_bus *rb = calloc(1, sizeof *rb);
    if (!rb) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = ew__redis_url_parse(&rb->url, ew_config_get(cfg, URL_VAR), err);
    if (rc) {
        free(rb);
        return rc;
    }
    rb->bus = bus;
    rb->disp = ew__bus_dispatcher(bus);
    if (strchr(rb->url.host, ':'))
        snprintf(rb->addr, sizeof rb->addr, "[%s]:%d", rb->url.host, rb->url.port);
    else
        snprintf(rb->addr, sizeof rb->addr, "%s:%d", rb->url.host, rb->url.port);
    rb->pubsub = strcmp(ew_config_get(cfg, "REDIS_MODE"), "pubsub") == 0;
    rb->maxlen = (long long)ew_config_get_int(cfg, "REDIS_STREAM_MAXLEN");
    rb->claim_idle_ms = ew_config_get_int(cfg, "REDIS_CLAIM_IDLE_MS");
    rb->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    rb->io_ms = rb->connect_ms < 5000 ? 5000 : rb->connect_ms;
    rb->max_inflight = (size_t)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    rb->low_water = rb->max_inflight - (rb->max_inflight / 4 ? rb->max_inflight / 4 : 1);
    rb->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    rb->prefix = strdup(ew_config_get(cfg, "REDIS_CHANNEL_PREFIX"));
    pthread_mutex_init(&rb->pub_mu, NULL);
    if (!rb->prefix) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    /* XADD key [MAXLEN ~ N] * event JSON: what follows the key, formatted once */
    ew_buf mid;
    ew_buf_init(&mid);
    if (rb->maxlen > 0) {
        char n[24];
        snprintf(n, sizeof n, "%lld", rb->maxlen);
        put_str(&mid, "MAXLEN");
        put_str(&mid, "~");
        put_str(&mid, n);
    }
    put_str(&mid, "*");
    put_str(&mid, "event");
    snprintf(rb->xadd_mid, sizeof rb->xadd_mid, "%s", mid.data);
    rb->xadd_mid_len = strlen(rb->xadd_mid);
    rb->xadd_argc = rb->maxlen > 0 ? 8 : 5;
    ew_buf_release(&mid);
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    char uuid[EW_UUID_LEN + 1];
    ew_uuid7(uuid);
    snprintf(rb->consumer_base, sizeof rb->consumer_base, "%.40s-%ld-%.8s", host, (long)getpid(),
             uuid + 28);

    ew_error e = {0};
    if (!(rb->pub = rconnect(rb, rb->io_ms, !rb->pubsub, &e))) {
        rc = e.code;
        if (err) *err = e;
        goto fail;
    }
    ew__bus_log(bus, EW_LOG_DEBUG, "redis: connected to %s (%s, prefix %s, consumer %s)", rb->addr,
                rb->pubsub ? "pubsub" : "streams", rb->prefix, rb->consumer_base);
    *self = rb;
    return 0;
fail:
    if (rb->pub) redisFree(rb->pub);
    pthread_mutex_destroy(&rb->pub_mu);
    free(rb->prefix);
    free(rb);
    return rc;
}

const ew_bus_ops ew__bus_redis_ops = {
    .version = EW_BUS_OPS_VERSION,
    .name = "redis",
    .open = rd_open,
    .publish = rd_publish,
    .subscribed = rd_subscribed,
    .start = rd_start,
    .stop = rd_stop,
    .close = rd_close,
};

#else
typedef int ew__redis_unused;
#endif
