/* Benchmark of the Redis bus (streams) beside hiredis used directly on the same server, in the
 * same run, doing the same durable work:
 *
 *   raw_publish             pre-encoded user.registered events (~430 bytes), XADD ... MAXLEN ~
 *                           1000000 pipelined in batches of 100, every reply read
 *   publish                 the same events as ew_event objects (built beforehand), published with
 *                           ew_bus_publish_batch() in batches of 100: encoding is part of it
 *   raw_publish_to_handled  one thread publishes as raw_publish does while another reads with
 *                           XREADGROUP COUNT 1000 BLOCK and XACKs every batch it read
 *   publish_to_handled      the same through the bus: decode, dispatcher, a counting handler,
 *                           batched XACK; from the first publish to the last event handled
 *   latency                 1,000 events/s for 3 s through the bus, published one at a time;
 *                           from building the event to its handler (p50, p99)
 *   publish_to_handled.metrics_on / .metrics_off
 *                           publish_to_handled with metrics and tracing on (ENABLE_METRICS=true,
 *                           the default, and a span callback: every handler call is timed,
 *                           counted by type and reported as a span) and with them off
 *                           (ENABLE_METRICS=false, no span callback), taking turns
 *   publish_to_handled_mac, publish_to_handled_ed25519
 *                           publish_to_handled with authenticated events (EVENT_AUTH=mac, =ed25519:
 *                           each event tagged or signed when published and checked when
 *                           received, docs/bus-auth.md), beside publish_to_handled without
 *                           (EVENT_AUTH=off) in the same rounds
 *
 * Every bus figure but .shipped runs with field encryption off (EVENT_ENCRYPTION=off): the raw
 * loop carries the same events in clear, and with it on each event about a new user makes its
 * data key (a key-store commit on the publishing side, a key-store read on the receiving side),
 * which held every figure here at ~12-15 k/s whatever the bus did. The cost of encryption is
 * .shipped's (below) and bench_codec's.
 *
 * Each throughput figure is the best of four rounds (raw and bus take turns going first), since
 * the machine is shared. The server: $EW_REDIS_URL, or one started here with scripts/test-servers
 * (found from $EW_SOURCE_DIR, the working folder or beside this executable) and stopped at the
 * end. `bench_redis e2e [bus|raw|both [N]]` runs only the end-to-end loops, five times (for
 * profiling; N events a bus run), with the CPU time of the whole process per event of each.
 * `bench_redis shipped [ROUNDS]` runs publish_to_handled as shipped — authenticated events
 * (EVENT_AUTH=mac), personal fields encrypted (EVENT_ENCRYPTION=on, a data key per subject),
 * metrics on and a span callback — against raw_publish_to_handled, taking turns; its events are
 * about SHIPPED_USERS users, as a deployment's mostly are about users it knows (a new user's data
 * key is a key-store commit: test_keyring and flow.registration measure that). */
#ifdef EW_HAVE_REDIS
#include <hiredis/hiredis.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/evauth.h"
#include "eventwire/id.h"

#define N_EVENTS 100000
#define BATCH 100
#define ROUNDS 4
#define MAXLEN "1000000"

static char url[256], host[128], srv_dir[PATH_MAX], script[PATH_MAX];
static int port;
static char prefix[64];

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_redis: %s: %s\n", what, msg);
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
    snprintf(cmd, sizeof cmd, "'%s' stop redis '%s' >/dev/null 2>&1; rm -rf '%s'", script, srv_dir,
             srv_dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_redis: stopping the server failed\n");
}

static void server_start(void)
{
    const char *env = getenv("EW_REDIS_URL");
    if (env && *env) {
        snprintf(url, sizeof url, "%s", env);
    } else {
        if (!find_script())
            die("server", "EW_REDIS_URL is unset and scripts/test-servers not found");
        snprintf(srv_dir, sizeof srv_dir, "/tmp/ew-bench-redis-%ld", (long)getpid());
        char cmd[4 * PATH_MAX];
        snprintf(cmd, sizeof cmd, "'%s' start redis '%s' >/dev/null", script, srv_dir);
        if (system(cmd) != 0) die("server", "scripts/test-servers start redis failed");
        atexit(server_stop);
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/redis.url", srv_dir);
        FILE *f = fopen(path, "r");
        if (!f || !fgets(url, sizeof url, f)) die("server", "no redis.url");
        fclose(f);
        url[strcspn(url, "\r\n")] = '\0';
    }
    if (sscanf(url, "redis://%127[^:/]:%d", host, &port) != 2) die("EW_REDIS_URL", url);
}

static redisContext *raw_connect(void)
{
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) die("connect", c ? c->errstr : "out of memory");
    return c;
}

static void raw_del(const char *key)
{
    redisContext *c = raw_connect();
    redisReply *r = redisCommand(c, "DEL %s", key);
    if (r) freeReplyObject(r);
    redisFree(c);
}

/* Redis rewrites its append-only file when it has grown enough (a fork and a rewrite, hundreds of
 * milliseconds of a busy server), which would land in whichever phase happens to cross the
 * threshold. So the automatic rewrite is off while this runs (the setting is restored at the
 * end), and the file is rewritten between phases, outside the timed parts. Every phase still
 * appends each command to the file, as a server with appendonly yes does. */
static char aof_pct[32];
static bool aof_on;

static bool info_has(redisContext *c, const char *needle)
{
    redisReply *r = redisCommand(c, "INFO persistence");
    bool has = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle);
    if (r) freeReplyObject(r);
    return has;
}

static void aof_restore(void)
{
    redisContext *c = raw_connect();
    redisReply *r = redisCommand(c, "CONFIG SET auto-aof-rewrite-percentage %s", aof_pct);
    if (r) freeReplyObject(r);
    redisFree(c);
}

static void aof_setup(void)
{
    redisContext *c = raw_connect();
    redisReply *r = redisCommand(c, "CONFIG GET appendonly");
    aof_on = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
             strcmp(r->element[1]->str, "yes") == 0;
    if (r) freeReplyObject(r);
    r = redisCommand(c, "CONFIG GET auto-aof-rewrite-percentage");
    if (aof_on && r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        snprintf(aof_pct, sizeof aof_pct, "%s", r->element[1]->str);
        freeReplyObject(r);
        r = redisCommand(c, "CONFIG SET auto-aof-rewrite-percentage 0");
        if (r && r->type != REDIS_REPLY_ERROR) atexit(aof_restore);
    }
    if (r) freeReplyObject(r);
    redisFree(c);
}

/* Compacts the append-only file and waits until Redis is done with it. */
static void quiesce(void)
{
    if (!aof_on) return;
    redisContext *c = raw_connect();
    int64_t end = ew_mono_ns() + 60 * 1000000000LL;
    while (!info_has(c, "aof_rewrite_in_progress:0") || !info_has(c, "aof_rewrite_scheduled:0")) {
        if (ew_mono_ns() > end) die("quiesce", "an append-only file rewrite takes over 60 s");
        usleep(10000);
    }
    redisReply *r = redisCommand(c, "BGREWRITEAOF");
    if (r) freeReplyObject(r);
    usleep(10000);
    while (!info_has(c, "aof_rewrite_in_progress:0") || !info_has(c, "aof_rewrite_scheduled:0")) {
        if (ew_mono_ns() > end) die("quiesce", "an append-only file rewrite takes over 60 s");
        usleep(10000);
    }
    redisFree(c);
}

/* ---- events ------------------------------------------------------------------------------ */

/* A user.registered of the user id, or of a new user when id is NULL. */
static ew_event *user_registered_of(const char *user)
{
    char id[EW_UUID_LEN + 1];
    if (user)
        snprintf(id, sizeof id, "%s", user);
    else
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

static ew_event *user_registered(void)
{
    return user_registered_of(NULL);
}

/* ---- raw hiredis ------------------------------------------------------------------------- */

static char *payloads[N_EVENTS];
static size_t payload_len[N_EVENTS];

static void raw_publish_range(redisContext *c, const char *key, long from, long to)
{
    for (long i = from; i < to; i += BATCH) {
        long n = to - i < BATCH ? to - i : BATCH;
        for (long j = 0; j < n; j++) {
            const char *argv[] = {"XADD", key, "MAXLEN", "~",
                                  MAXLEN, "*", "event",  payloads[i + j]};
            size_t lens[] = {4, strlen(key), 6, 1, strlen(MAXLEN), 1, 5, payload_len[i + j]};
            redisAppendCommandArgv(c, 8, argv, lens);
        }
        for (long j = 0; j < n; j++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) die("XADD", c->errstr);
            if (r->type == REDIS_REPLY_ERROR) die("XADD", r->str);
            freeReplyObject(r);
        }
    }
}

static double bench_raw_publish(void)
{
    quiesce();
    char key[128];
    snprintf(key, sizeof key, "%s-raw:user.registered", prefix);
    redisContext *c = raw_connect();
    int64_t t0 = ew_mono_ns();
    raw_publish_range(c, key, 0, N_EVENTS);
    double r = rate(N_EVENTS, ew_mono_ns() - t0);
    redisFree(c);
    raw_del(key);
    return r;
}

typedef struct raw_reader {
    const char *key;
    long got;
    int64_t t_end;
} raw_reader;

static void *raw_reader_main(void *arg)
{
    raw_reader *rr = arg;
    redisContext *c = raw_connect();
    const char **ids = malloc(1000 * sizeof *ids);
    size_t *lens = malloc(1000 * sizeof *lens);
    const char *argv[1003];
    size_t argl[1003];
    while (rr->got < N_EVENTS) {
        redisReply *r = redisCommand(
            c, "XREADGROUP GROUP bench c1 COUNT 1000 BLOCK 1000 STREAMS %s >", rr->key);
        if (!r) die("XREADGROUP", c->errstr);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            redisReply *entries = r->element[0]->element[1];
            size_t n = entries->elements;
            argv[0] = "XACK";
            argv[1] = rr->key;
            argv[2] = "bench";
            argl[0] = 4;
            argl[1] = strlen(rr->key);
            argl[2] = 5;
            for (size_t i = 0; i < n; i++) {
                redisReply *id = entries->element[i]->element[0];
                argv[3 + i] = id->str;
                argl[3 + i] = id->len;
            }
            redisReply *a = redisCommandArgv(c, (int)(3 + n), argv, argl);
            if (!a || a->type != REDIS_REPLY_INTEGER) die("XACK", a ? a->str : c->errstr);
            freeReplyObject(a);
            rr->got += (long)n;
        }
        freeReplyObject(r);
    }
    rr->t_end = ew_mono_ns();
    free(ids);
    free(lens);
    redisFree(c);
    return NULL;
}

static double bench_raw_publish_to_handled(void)
{
    quiesce();
    char key[128];
    snprintf(key, sizeof key, "%s-rawh:user.registered", prefix);
    redisContext *c = raw_connect();
    redisReply *r = redisCommand(c, "XGROUP CREATE %s bench $ MKSTREAM", key);
    if (!r || r->type == REDIS_REPLY_ERROR) die("XGROUP", r ? r->str : c->errstr);
    freeReplyObject(r);
    raw_reader rr = {.key = key};
    pthread_t th;
    int64_t t0 = ew_mono_ns();
    if (pthread_create(&th, NULL, raw_reader_main, &rr)) die("thread", "create");
    raw_publish_range(c, key, 0, N_EVENTS);
    pthread_join(th, NULL);
    double res = rate(N_EVENTS, rr.t_end - t0);
    redisFree(c);
    raw_del(key);
    return res;
}

/* ---- the bus ----------------------------------------------------------------------------- */

static ew_event *events[N_EVENTS];

#define SHIPPED_USERS 1000

enum { OBS_DEFAULT, OBS_ON, OBS_OFF }; /* metrics and tracing: as configured, on, off */

static atomic_long spans;

/* What an exporter is handed: here only counted. */
static void span_fn(void *ud, const ew_span *sp)
{
    atomic_fetch_add_explicit(&spans, 1, memory_order_relaxed);
}

static ew_evauth *auth_mac, *auth_ed; /* auth-service's keys, in a key store of the run's */
static char keys_dir[64];

static ew_evauth *auth_open(const char *mode)
{
    char store[128], key_file[128];
    snprintf(store, sizeof store, "sqlite:%s/keys.db", keys_dir);
    snprintf(key_file, sizeof key_file, "%s/auth-service.%s.key", keys_dir, mode);
    ew_config *cfg;
    ew_evauth *a;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "KEY_STORE_URL", store, &err) ||
        ew_config_set(cfg, "EVENT_AUTH", mode, &err) ||
        ew_evauth_open(
            &a,
            &(ew_evauth_options){.config = cfg, .service = "auth-service", .key_file = key_file},
            &err))
        die("auth", err.msg);
    ew_config_free(cfg);
    return a;
}

static ew_bus *bus_open_with(const char *pfx, ew_evauth *auth, int obs, bool sealed)
{
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "redis", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", auth ? "auth-service" : "bench", &err) ||
        ew_config_set(cfg, "REDIS_EVENT_URL", url, &err) ||
        ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", pfx, &err) ||
        (obs == OBS_OFF && ew_config_set(cfg, "ENABLE_METRICS", "false", &err)) ||
        (!sealed && ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err)))
        die("config", err.msg);
    ew_bus *bus;
    ew_bus_options o = {.config = cfg, .auth = auth, .span = obs == OBS_ON ? span_fn : NULL};
    if (ew_bus_open(&bus, &o, &err)) die("open", err.msg);
    ew_config_free(cfg);
    return bus;
}

static ew_bus *bus_open(const char *pfx)
{
    return bus_open_with(pfx, NULL, OBS_DEFAULT, false);
}

/* How many of the events a bus run publishes: N_EVENTS, or fewer (bench_redis auth ... N). */
static long n_bus_events = N_EVENTS;

static void bus_publish_all(ew_bus *bus)
{
    ew_error err = {0};
    for (long i = 0; i < n_bus_events; i += BATCH) {
        long n = n_bus_events - i < BATCH ? n_bus_events - i : BATCH;
        if (ew_bus_publish_batch(bus, (const ew_event *const *)events + i, (size_t)n, &err))
            die("publish", err.msg);
    }
}

static double bench_bus_publish(int round)
{
    quiesce();
    char pfx[96], key[160];
    snprintf(pfx, sizeof pfx, "%s-bus%d", prefix, round);
    snprintf(key, sizeof key, "%s:user.registered", pfx);
    ew_bus *bus = bus_open(pfx);
    int64_t t0 = ew_mono_ns();
    bus_publish_all(bus);
    double r = rate(N_EVENTS, ew_mono_ns() - t0);
    ew_bus_close(bus);
    raw_del(key);
    return r;
}

typedef struct counter {
    _Alignas(64) atomic_long n;
    int64_t *lat_us; /* latency run: one slot per event */
    long cap;
} counter;

static ew_handler_result count_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    counter *c = ud;
    long i = atomic_fetch_add_explicit(&c->n, 1, memory_order_relaxed);
    if (c->lat_us && i < c->cap) c->lat_us[i] = ew_now_us() - ew_event_time_us(ev);
    return EW_HANDLER_OK;
}

static void wait_count(counter *c, long n)
{
    int64_t end = ew_mono_ns() + 120 * 1000000000LL;
    while (atomic_load(&c->n) < n) {
        if (ew_mono_ns() > end) die("handled", "events missing after 120 s");
        usleep(200);
    }
}

static double bench_bus_publish_to_handled_with(int round, ew_evauth *auth, int obs, bool sealed)
{
    quiesce();
    char pfx[96], key[160];
    snprintf(pfx, sizeof pfx, "%s-bush%d%s-%d", prefix, round,
             !auth              ? ""
             : auth == auth_mac ? "m"
                                : "e",
             obs);
    snprintf(key, sizeof key, "%s:user.registered", pfx);
    ew_bus *bus = bus_open_with(pfx, auth, obs, sealed);
    counter cnt = {0};
    ew_error err = {0};
    if (ew_bus_subscribe(bus, "user.registered", count_fn, &cnt, NULL, &err) ||
        ew_bus_start(bus, &err))
        die("subscribe", err.msg);
    int64_t t0 = ew_mono_ns();
    bus_publish_all(bus);
    wait_count(&cnt, n_bus_events);
    double r = rate(n_bus_events, ew_mono_ns() - t0);
    ew_bus_close(bus);
    raw_del(key);
    return r;
}

static double bench_bus_publish_to_handled(int round)
{
    return bench_bus_publish_to_handled_with(round, NULL, OBS_DEFAULT, false);
}

/* The CPU time of the whole process (every thread, user and system), in seconds. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void bench_latency(double *p50, double *p99)
{
    enum { RATE = 1000, SECONDS = 3, N = RATE * SECONDS };
    quiesce();
    char pfx[96], key[160];
    snprintf(pfx, sizeof pfx, "%s-lat", prefix);
    snprintf(key, sizeof key, "%s:user.registered", pfx);
    ew_bus *bus = bus_open(pfx);
    counter cnt = {.lat_us = calloc(N, sizeof(int64_t)), .cap = N};
    ew_error err = {0};
    if (ew_bus_subscribe(bus, "user.registered", count_fn, &cnt, NULL, &err) ||
        ew_bus_start(bus, &err))
        die("subscribe", err.msg);
    int64_t t0 = ew_mono_ns();
    for (long i = 0; i < N; i++) {
        int64_t due = t0 + i * (1000000000LL / RATE);
        int64_t now = ew_mono_ns();
        if (due > now) usleep((useconds_t)((due - now) / 1000));
        ew_event *ev = user_registered();
        if (ew_bus_publish(bus, ev, &err)) die("publish", err.msg);
        ew_event_unref(ev);
    }
    wait_count(&cnt, N);
    ew_bus_close(bus);
    raw_del(key);
    qsort(cnt.lat_us, N, sizeof(int64_t), cmp_i64);
    *p50 = (double)cnt.lat_us[N / 2] / 1000.0;
    *p99 = (double)cnt.lat_us[N * 99 / 100] / 1000.0;
    free(cnt.lat_us);
}

int main(int argc, char **argv)
{
    /* bench_redis e2e: only the bus's publish_to_handled, in a loop (for profiling) */
    bool only_e2e = argc > 1 && strcmp(argv[1], "e2e") == 0;
    signal(SIGPIPE, SIG_IGN);
    server_start();
    aof_setup();
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(prefix, sizeof prefix, "bench-%.8s", id + 28);
    size_t total = 0;
    for (long i = 0; i < N_EVENTS; i++) {
        events[i] = user_registered();
        ew_error err = {0};
        if (ew_event_encode(events[i], &payloads[i], &payload_len[i], &err)) die("encode", err.msg);
        total += payload_len[i];
    }
    double raw_pub = 0, pub = 0, raw_e2e = 0, e2e = 0, v;
    if (argc > 1 && strcmp(argv[1], "shipped") == 0) {
        int rounds = argc > 2 ? atoi(argv[2]) : ROUNDS;
        snprintf(keys_dir, sizeof keys_dir, "/tmp/ew-bench-keys-XXXXXX");
        if (rounds < 1 || !mkdtemp(keys_dir)) die("shipped", "usage: bench_redis shipped [ROUNDS]");
        auth_mac = auth_open("mac");
        /* As a deployment runs: events about users it knows. Each new user costs the key store
         * a commit (their data key); SHIPPED_USERS users, whose keys round 0 makes. */
        char(*users)[EW_UUID_LEN + 1] = calloc(SHIPPED_USERS, sizeof *users);
        if (!users) die("shipped", "out of memory");
        for (long i = 0; i < SHIPPED_USERS; i++)
            ew_uuid7(users[i]);
        for (long i = 0; i < N_EVENTS; i++) {
            ew_event_unref(events[i]);
            events[i] = user_registered_of(users[i % SHIPPED_USERS]);
        }
        free(users);
        printf("# shipped: %ld events over %d users\n", (long)N_EVENTS, SHIPPED_USERS);
        for (int round = 0; round < rounds; round++) {
            double r = 0, b = 0, rc = 0, bc = 0;
            for (int k = 0; k < 2; k++) {
                double c0 = cpu_s();
                if ((k + round) % 2 == 0) {
                    r = bench_raw_publish_to_handled();
                    rc = cpu_s() - c0;
                } else {
                    b = bench_bus_publish_to_handled_with(round, auth_mac, OBS_ON, true);
                    bc = cpu_s() - c0;
                }
            }
            if (r > raw_e2e) raw_e2e = r;
            if (b > e2e) e2e = b;
            /* the CPU time of this process per event (not the server's): less noisy than the
             * rates on a shared machine */
            printf("# round %d: raw %.0f events/s, shipped %.0f events/s, ratio %.2f; cpu per "
                   "event: raw %.2f us, shipped %.2f us\n",
                   round, r, b, b / r, rc * 1e6 / N_EVENTS, bc * 1e6 / N_EVENTS);
        }
        ew_evauth_close(auth_mac);
        char rm[128];
        snprintf(rm, sizeof rm, "rm -rf %s", keys_dir);
        if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", keys_dir);
        printf("bench: bus.redis.raw_publish_to_handled %.0f events/s\n", raw_e2e);
        printf("bench: bus.redis.publish_to_handled.shipped %.0f events/s ratio=%.2f "
               "baseline=bus.redis.raw_publish_to_handled\n",
               e2e, e2e / raw_e2e);
        return 0;
    }
    if (only_e2e) {
        bool raw = argc > 2 && strcmp(argv[2], "raw") == 0,
             bus = argc > 2 && strcmp(argv[2], "bus") == 0;
        if (argc > 3 && atol(argv[3]) > 0 && atol(argv[3]) < N_EVENTS) n_bus_events = atol(argv[3]);
        for (int round = 0; round < 5; round++) {
            double b = 0, r = 0, cpu0 = cpu_s(), cpu1;
            if (!raw) b = bench_bus_publish_to_handled(round);
            cpu1 = cpu_s();
            if (!bus) r = bench_raw_publish_to_handled();
            printf("bus e2e %.0f raw e2e %.0f (cpu per event: bus %.2f us, raw %.2f us)\n", b, r,
                   raw ? 0 : (cpu1 - cpu0) * 1e6 / (double)n_bus_events,
                   bus ? 0 : (cpu_s() - cpu1) * 1e6 / N_EVENTS);
        }
        return 0;
    }
    /* bench_redis auth [off|mac|both [N]]: only publish_to_handled without authentication and
     * with EVENT_AUTH=mac, taking turns, as in the full run (for profiling, and a loaded
     * machine: N events a run instead of N_EVENTS); with off or mac, only that one (its peak
     * memory, which the last line gives) */
    if (argc > 1 && strcmp(argv[1], "auth") == 0) {
        const char *only = argc > 2 && strcmp(argv[2], "both") != 0 ? argv[2] : NULL;
        if (argc > 3 && atol(argv[3]) > 0 && atol(argv[3]) < N_EVENTS) n_bus_events = atol(argv[3]);
        snprintf(keys_dir, sizeof keys_dir, "/tmp/ew-bench-keys-XXXXXX");
        if (!mkdtemp(keys_dir)) die("keys", "cannot make a folder");
        auth_mac = auth_open("mac");
        double off = 0, mac = 0;
        for (int round = 0; round < ROUNDS; round++) {
            for (int k = 0; k < 2; k++) {
                bool is_mac = (k + round) % 2 == 1;
                if (only && strcmp(only, is_mac ? "mac" : "off") != 0) continue;
                v = bench_bus_publish_to_handled_with(round, is_mac ? auth_mac : NULL, OBS_DEFAULT,
                                                      false);
                if (is_mac && v > mac) mac = v;
                if (!is_mac && v > off) off = v;
            }
        }
        ew_evauth_close(auth_mac);
        char rm[128];
        snprintf(rm, sizeof rm, "rm -rf %s", keys_dir);
        if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", keys_dir);
        if (only && !strcmp(only, "mac"))
            printf("bench: bus.redis.publish_to_handled_mac %.0f events/s\n", mac);
        else if (!only)
            printf("bench: bus.redis.publish_to_handled_mac %.0f events/s ratio=%.2f "
                   "baseline=bus.redis.publish_to_handled_off\n",
                   mac, mac / off);
        if (!only || !strcmp(only, "off"))
            printf("bench: bus.redis.publish_to_handled_off %.0f events/s\n", off);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("# peak resident memory %ld KiB\n", ru.ru_maxrss);
        return 0;
    }
    /* raw and bus alternate, each going first every other round */
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < 2; k++) {
            if ((k + round) % 2 == 0) {
                if ((v = bench_raw_publish()) > raw_pub) raw_pub = v;
            } else if ((v = bench_bus_publish(round)) > pub) {
                pub = v;
            }
        }
        for (int k = 0; k < 2; k++) {
            if ((k + round) % 2 == 0) {
                if ((v = bench_raw_publish_to_handled()) > raw_e2e) raw_e2e = v;
            } else if ((v = bench_bus_publish_to_handled(round)) > e2e) {
                e2e = v;
            }
        }
    }
    /* metrics and tracing on and off, taking turns */
    double m_on = 0, m_off = 0;
    long spans0 = atomic_load(&spans);
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < 2; k++) {
            if ((k + round) % 2 == 0) {
                if ((v = bench_bus_publish_to_handled_with(round, NULL, OBS_ON, false)) > m_on)
                    m_on = v;
            } else if ((v = bench_bus_publish_to_handled_with(round, NULL, OBS_OFF, false)) >
                       m_off) {
                m_off = v;
            }
        }
    }
    if (atomic_load(&spans) - spans0 != (long)ROUNDS * N_EVENTS)
        die("spans", "not one span per handler call with tracing on");
    /* authenticated: off (no ew_evauth), mac and ed25519 take turns in each round */
    snprintf(keys_dir, sizeof keys_dir, "/tmp/ew-bench-keys-XXXXXX");
    if (!mkdtemp(keys_dir)) die("keys", "cannot make a folder");
    auth_mac = auth_open("mac");
    auth_ed = auth_open("ed25519");
    double off = 0, mac = 0, ed = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < 3; k++) {
            int which = (k + round) % 3;
            if (which == 0 &&
                (v = bench_bus_publish_to_handled_with(round, NULL, OBS_DEFAULT, false)) > off)
                off = v;
            if (which == 1 &&
                (v = bench_bus_publish_to_handled_with(round, auth_mac, OBS_DEFAULT, false)) > mac)
                mac = v;
            if (which == 2 &&
                (v = bench_bus_publish_to_handled_with(round, auth_ed, OBS_DEFAULT, false)) > ed)
                ed = v;
        }
    }
    ew_evauth_close(auth_mac);
    ew_evauth_close(auth_ed);
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf %s", keys_dir);
    if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", keys_dir);

    double p50, p99;
    bench_latency(&p50, &p99);

    printf("bench: bus.redis.raw_publish %.0f events/s\n", raw_pub);
    printf("bench: bus.redis.publish %.0f events/s ratio=%.2f baseline=bus.redis.raw_publish\n",
           pub, pub / raw_pub);
    printf("bench: bus.redis.raw_publish_to_handled %.0f events/s\n", raw_e2e);
    printf("bench: bus.redis.publish_to_handled %.0f events/s ratio=%.2f "
           "baseline=bus.redis.raw_publish_to_handled\n",
           e2e, e2e / raw_e2e);
    printf("bench: bus.redis.publish_to_handled.metrics_off %.0f events/s\n", m_off);
    printf("bench: bus.redis.publish_to_handled.metrics_on %.0f events/s ratio=%.2f "
           "baseline=bus.redis.publish_to_handled.metrics_off\n",
           m_on, m_on / m_off);
    printf("bench: bus.redis.publish_to_handled_mac %.0f events/s ratio=%.2f "
           "baseline=bus.redis.publish_to_handled_off\n",
           mac, mac / off);
    printf("bench: bus.redis.publish_to_handled_ed25519 %.0f events/s ratio=%.2f "
           "baseline=bus.redis.publish_to_handled_off\n",
           ed, ed / off);
    printf("bench: bus.redis.publish_to_handled_off %.0f events/s\n", off);
    printf("bench: bus.redis.latency.p50 %.3f ms\n", p50);
    printf("bench: bus.redis.latency.p99 %.3f ms\n", p99);
    printf("# redis: %d events of %.0f bytes on average, batches of %d, best of %d rounds; latency "
           "at 1000 events/s for 3 s\n",
           N_EVENTS, (double)total / N_EVENTS, BATCH, ROUNDS);
    for (long i = 0; i < N_EVENTS; i++) {
        ew_event_unref(events[i]);
        free(payloads[i]);
    }
    return 0;
}

#else /* a build without hiredis */
#include <stdio.h>

int main(void)
{
    printf("# redis: this build has no redis backend (hiredis missing)\n");
    return 0;
}
#endif
