/* Benchmark of the Redis bus over TLS (rediss://) beside a raw TLS loop on the same server, in
 * the same run, doing the same work (the fixture's server keeps no append-only file):
 *
 *   tls.raw_publish_to_handled  OpenSSL and hiredis's reply parser used directly, no bus: one
 *                               thread pipelines pre-encoded user.registered events (XADD ...
 *                               MAXLEN ~ 1000000, batches of 100, every reply read) while another
 *                               reads with XREADGROUP COUNT 1000 BLOCK and XACKs every batch
 *   tls.publish_to_handled      the same through the bus: ew_bus_publish_batch() of ew_event
 *                               objects in batches of 100, decode, dispatcher, a counting
 *                               handler, batched XACK; from the first publish to the last handled
 *
 * Each figure is the best of ROUNDS rounds (raw and bus take turns going first). The servers:
 * $EW_REDIS_TLS_URL with $EW_REDIS_TLS_CA (make bench), or the TLS-only server of
 * `scripts/test-servers start redis_tls` started here and stopped at the end. */
#ifdef EW_HAVE_REDIS
#include <hiredis/hiredis.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define N_EVENTS 100000
#define BATCH 100
#define ROUNDS 3
#define MAXLEN "1000000"

static char url[256], host[128], ca[PATH_MAX + 32], srv_dir[PATH_MAX], script[PATH_MAX];
static int port;
static char prefix[64];
static SSL_CTX *ctx;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_redis_tls: %s: %s\n", what, msg);
    exit(1);
}

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

/* ---- the server -------------------------------------------------------------------------- */

static bool find_script(void)
{
    const char *src = getenv("EW_SOURCE_DIR");
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    const char *cands[3] = {src, ".", exe};
    for (int i = 0; i < 3; i++) {
        if (!cands[i] || !*cands[i]) continue;
        snprintf(script, sizeof script, "%s/%sscripts/test-servers", cands[i], i == 2 ? "../" : "");
        if (access(script, X_OK) == 0) return true;
    }
    return false;
}

static void server_stop(void)
{
    if (!srv_dir[0]) return;
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' stop redis_tls '%s' >/dev/null 2>&1; rm -rf '%s'", script,
             srv_dir, srv_dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_redis_tls: stopping the server failed\n");
}

static void server_start(void)
{
    const char *env = getenv("EW_REDIS_TLS_URL"), *env_ca = getenv("EW_REDIS_TLS_CA");
    if (env && *env && env_ca && *env_ca) {
        snprintf(url, sizeof url, "%s", env);
        snprintf(ca, sizeof ca, "%s", env_ca);
    } else {
        if (!find_script())
            die("server", "EW_REDIS_TLS_URL is unset and scripts/test-servers not found");
        snprintf(srv_dir, sizeof srv_dir, "/tmp/ew-bench-redis-tls-%ld", (long)getpid());
        char cmd[4 * PATH_MAX];
        snprintf(cmd, sizeof cmd, "'%s' start redis_tls '%s' >/dev/null", script, srv_dir);
        if (system(cmd) != 0) die("server", "scripts/test-servers start redis_tls failed");
        atexit(server_stop);
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/redis-tls.url", srv_dir);
        FILE *f = fopen(path, "r");
        if (!f || !fgets(url, sizeof url, f)) die("server", "no redis-tls.url");
        fclose(f);
        url[strcspn(url, "\r\n")] = '\0';
        snprintf(ca, sizeof ca, "%s/redis-tls/ca.pem", srv_dir);
    }
    if (sscanf(url, "rediss://%127[^:/]:%d", host, &port) != 2) die("EW_REDIS_TLS_URL", url);
}

/* ---- raw: OpenSSL on a socket, RESP written by hand, hiredis's reader -------------------- */

typedef struct tconn {
    int fd;
    SSL *ssl;
    redisReader *rd;
    char *out; /* commands waiting to be sent */
    size_t len, cap;
} tconn;

static void ssl_die(const char *what)
{
    unsigned long e = ERR_get_error();
    die(what, e ? ERR_reason_error_string(e) : "connection failed");
}

static tconn *t_connect(void)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    if (getaddrinfo(host, p, &hints, &res)) die("resolve", host);
    tconn *t = calloc(1, sizeof *t);
    t->fd = socket(res->ai_family, res->ai_socktype, 0);
    if (t->fd < 0 || connect(t->fd, res->ai_addr, res->ai_addrlen)) die("connect", url);
    freeaddrinfo(res);
    int on = 1;
    setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    t->ssl = SSL_new(ctx);
    SSL_set_fd(t->ssl, t->fd);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
    if (SSL_connect(t->ssl) != 1) ssl_die("TLS handshake");
    t->rd = redisReaderCreate();
    return t;
}

static void t_close(tconn *t)
{
    SSL_shutdown(t->ssl);
    SSL_free(t->ssl);
    close(t->fd);
    redisReaderFree(t->rd);
    free(t->out);
    free(t);
}

static void t_put(tconn *t, const void *s, size_t n)
{
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2;
        t->out = realloc(t->out, t->cap);
    }
    memcpy(t->out + t->len, s, n);
    t->len += n;
}

static void t_cmd(tconn *t, int argc, const char *const *argv, const size_t *lens)
{
    char hdr[32];
    t_put(t, hdr, (size_t)snprintf(hdr, sizeof hdr, "*%d\r\n", argc));
    for (int i = 0; i < argc; i++) {
        t_put(t, hdr, (size_t)snprintf(hdr, sizeof hdr, "$%zu\r\n", lens[i]));
        t_put(t, argv[i], lens[i]);
        t_put(t, "\r\n", 2);
    }
}

static void t_flush(tconn *t)
{
    size_t off = 0;
    while (off < t->len) {
        int w = SSL_write(t->ssl, t->out + off, (int)(t->len - off));
        if (w <= 0) ssl_die("write");
        off += (size_t)w;
    }
    t->len = 0;
}

static redisReply *t_reply(tconn *t)
{
    char buf[16384];
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(t->rd, &r) != REDIS_OK) die("reply", t->rd->errstr);
        if (r) return r;
        int n = SSL_read(t->ssl, buf, sizeof buf);
        if (n <= 0) ssl_die("read");
        redisReaderFeed(t->rd, buf, (size_t)n);
    }
}

static redisReply *t_call(tconn *t, int argc, const char *const *argv)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    t_cmd(t, argc, argv, lens);
    t_flush(t);
    return t_reply(t);
}

static char *payloads[N_EVENTS];
static size_t payload_len[N_EVENTS];

static void raw_publish_all(tconn *t, const char *key)
{
    for (long i = 0; i < N_EVENTS; i += BATCH) {
        long n = N_EVENTS - i < BATCH ? N_EVENTS - i : BATCH;
        for (long j = 0; j < n; j++) {
            const char *argv[] = {"XADD", key, "MAXLEN", "~",
                                  MAXLEN, "*", "event",  payloads[i + j]};
            size_t lens[] = {4, strlen(key), 6, 1, strlen(MAXLEN), 1, 5, payload_len[i + j]};
            t_cmd(t, 8, argv, lens);
        }
        t_flush(t);
        for (long j = 0; j < n; j++) {
            redisReply *r = t_reply(t);
            if (r->type == REDIS_REPLY_ERROR) die("XADD", r->str);
            freeReplyObject(r);
        }
    }
}

static void raw_del(const char *key)
{
    tconn *t = t_connect();
    const char *argv[] = {"DEL", key};
    freeReplyObject(t_call(t, 2, argv));
    t_close(t);
}

typedef struct raw_reader {
    const char *key;
    long got;
    int64_t t_end;
} raw_reader;

static void *raw_reader_main(void *arg)
{
    raw_reader *rr = arg;
    tconn *t = t_connect();
    const char **argv = malloc(1003 * sizeof *argv);
    size_t *lens = malloc(1003 * sizeof *lens);
    while (rr->got < N_EVENTS) {
        const char *rd[] = {"XREADGROUP", "GROUP", "bench",   "c1",    "COUNT", "1000",
                            "BLOCK",      "1000",  "STREAMS", rr->key, ">"};
        size_t rl[11];
        for (int i = 0; i < 11; i++)
            rl[i] = strlen(rd[i]);
        t_cmd(t, 11, rd, rl);
        t_flush(t);
        redisReply *r = t_reply(t);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            redisReply *entries = r->element[0]->element[1];
            size_t n = entries->elements;
            argv[0] = "XACK";
            argv[1] = rr->key;
            argv[2] = "bench";
            lens[0] = 4;
            lens[1] = strlen(rr->key);
            lens[2] = 5;
            for (size_t i = 0; i < n; i++) {
                redisReply *id = entries->element[i]->element[0];
                argv[3 + i] = id->str;
                lens[3 + i] = id->len;
            }
            t_cmd(t, (int)(3 + n), argv, lens);
            t_flush(t);
            redisReply *a = t_reply(t);
            if (a->type != REDIS_REPLY_INTEGER) die("XACK", a->str);
            freeReplyObject(a);
            rr->got += (long)n;
        }
        freeReplyObject(r);
    }
    rr->t_end = ew_mono_ns();
    free(argv);
    free(lens);
    t_close(t);
    return NULL;
}

static double bench_raw_publish_to_handled(int round)
{
    char key[128];
    snprintf(key, sizeof key, "%s-rawh%d:user.registered", prefix, round);
    tconn *t = t_connect();
    const char *argv[] = {"XGROUP", "CREATE", key, "bench", "$", "MKSTREAM"};
    redisReply *r = t_call(t, 6, argv);
    if (r->type == REDIS_REPLY_ERROR) die("XGROUP", r->str);
    freeReplyObject(r);
    raw_reader rr = {.key = key};
    pthread_t th;
    int64_t t0 = ew_mono_ns();
    if (pthread_create(&th, NULL, raw_reader_main, &rr)) die("thread", "create");
    raw_publish_all(t, key);
    pthread_join(th, NULL);
    double res = rate(N_EVENTS, rr.t_end - t0);
    t_close(t);
    raw_del(key);
    return res;
}

/* ---- the bus ----------------------------------------------------------------------------- */

static ew_event *events[N_EVENTS];

static ew_event *user_registered(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "ada.lovelace@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "auth-service", .subject = id},
                               &err))
        die("event", err.msg);
    return ev;
}

typedef struct counter {
    _Alignas(64) atomic_long n;
} counter;

static ew_handler_result count_fn(const ew_event *ev, ew_handler_ctx *hctx, void *ud)
{
    atomic_fetch_add_explicit(&((counter *)ud)->n, 1, memory_order_relaxed);
    return EW_HANDLER_OK;
}

static double bench_bus_publish_to_handled(int round)
{
    char pfx[96], key[160];
    snprintf(pfx, sizeof pfx, "%s-bush%d", prefix, round);
    snprintf(key, sizeof key, "%s:user.registered", pfx);
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "redis", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "bench", &err) ||
        ew_config_set(cfg, "REDIS_EVENT_URL", url, &err) ||
        ew_config_set(cfg, "REDIS_TLS_CA_FILE", ca, &err) ||
        ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", pfx, &err) ||
        /* the raw loop carries the events in clear; with encryption each event's new user
         * makes a data key (a key-store commit), which would be what this measures */
        ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err))
        die("config", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) die("open", err.msg);
    ew_config_free(cfg);
    counter cnt = {0};
    if (ew_bus_subscribe(bus, "user.registered", count_fn, &cnt, NULL, &err) ||
        ew_bus_start(bus, &err))
        die("subscribe", err.msg);
    int64_t t0 = ew_mono_ns();
    for (long i = 0; i < N_EVENTS; i += BATCH) {
        long n = N_EVENTS - i < BATCH ? N_EVENTS - i : BATCH;
        if (ew_bus_publish_batch(bus, (const ew_event *const *)events + i, (size_t)n, &err))
            die("publish", err.msg);
    }
    int64_t end = ew_mono_ns() + 120 * 1000000000LL;
    while (atomic_load(&cnt.n) < N_EVENTS) {
        if (ew_mono_ns() > end) die("handled", "events missing after 120 s");
        usleep(200);
    }
    double r = rate(N_EVENTS, ew_mono_ns() - t0);
    ew_bus_close(bus);
    raw_del(key);
    return r;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    server_start();
    if (!(ctx = SSL_CTX_new(TLS_client_method()))) ssl_die("TLS");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) ssl_die(ca);
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(prefix, sizeof prefix, "bench-tls-%.8s", id + 28);
    size_t total = 0;
    for (long i = 0; i < N_EVENTS; i++) {
        events[i] = user_registered();
        ew_error err = {0};
        if (ew_event_encode(events[i], &payloads[i], &payload_len[i], &err)) die("encode", err.msg);
        total += payload_len[i];
    }
    double raw = 0, bus = 0, v;
    for (int round = 0; round < ROUNDS; round++)
        for (int k = 0; k < 2; k++) {
            if ((k + round) % 2 == 0) {
                if ((v = bench_raw_publish_to_handled(round)) > raw) raw = v;
            } else if ((v = bench_bus_publish_to_handled(round)) > bus) {
                bus = v;
            }
        }
    printf("bench: bus.redis.tls.raw_publish_to_handled %.0f events/s\n", raw);
    printf("bench: bus.redis.tls.publish_to_handled %.0f events/s ratio=%.2f "
           "baseline=bus.redis.tls.raw_publish_to_handled\n",
           bus, bus / raw);
    printf("# redis over TLS (%s): %d events of %.0f bytes on average, batches of %d, best of %d "
           "rounds\n",
           OpenSSL_version(OPENSSL_VERSION), N_EVENTS, (double)total / N_EVENTS, BATCH, ROUNDS);
    for (long i = 0; i < N_EVENTS; i++) {
        ew_event_unref(events[i]);
        free(payloads[i]);
    }
    SSL_CTX_free(ctx);
    return 0;
}

#else /* a build without hiredis */
#include <stdio.h>

int main(void)
{
    printf("# redis over TLS: this build has no redis backend (hiredis missing)\n");
    return 0;
}
#endif
