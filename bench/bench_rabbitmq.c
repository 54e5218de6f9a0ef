/* Benchmark of the RabbitMQ bus against rabbitmq-c used directly on the same broker, in the same
 * run, doing the same durable work: persistent user.registered CloudEvents (the same bytes) to a
 * durable topic exchange with a durable queue bound, published in batches of BATCH with
 * publisher confirms (all of a batch's confirms awaited before the next batch); and consumed
 * with manual acknowledgements under the same prefetch window.
 *
 *   publish               ew_bus_publish_batch() of pre-built events (the bus encodes them)
 *   publish_to_handled    the same while a subscription of the bus handles them, from the first
 *                         publish to the last event handled
 *   latency               one event at a time at 1,000 events/s: handler time minus event time
 *
 * Raw and bus runs alternate, three rounds, and each figure is its best round.
 *
 * The broker: EW_RABBITMQ_URL, or a server of its own started with scripts/test-servers. */
#ifndef EW_HAVE_RABBITMQ
#include <stdio.h>

int main(void)
{
    printf("# rabbitmq: not built (librabbitmq was not found)\n");
    return 0;
}
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define N_EVENTS 10000
#define ROUNDS 3
#define BATCH 100
#define PREFETCH 64 /* what the bus asks for with one worker (64 per worker) */
#define LAT_RATE 1000
#define LAT_SECONDS 3
#define GROUP "bench"

static char url[256], exchange[64], queue[128];

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_rabbitmq: %s: %s\n", what, why);
    exit(1);
}

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

/* ---- the broker ---------------------------------------------------------------------------- */

static char own_dir[128], script[1024];

static void find_script(void)
{
    const char *src = getenv("EW_SOURCE_DIR");
    char exe[900];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    const char *cands[3] = {src, ".", exe};
    for (int i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        snprintf(script, sizeof script, "%s/scripts/test-servers", cands[i]);
        if (access(script, X_OK) == 0) return;
        snprintf(script, sizeof script, "%s/../scripts/test-servers", cands[i]);
        if (access(script, X_OK) == 0) return;
    }
    die("starting a broker",
        "scripts/test-servers not found: set EW_RABBITMQ_URL or EW_SOURCE_DIR");
}

static void broker_up(void)
{
    const char *u = getenv("EW_RABBITMQ_URL");
    if (u && *u) {
        snprintf(url, sizeof url, "%s", u);
        return;
    }
    find_script();
    snprintf(own_dir, sizeof own_dir, "/tmp/ew-bench-rabbitmq-%d", (int)getpid());
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "'%s' start rabbitmq '%s' >/dev/null", script, own_dir);
    if (system(cmd) != 0) die("starting a broker", cmd);
    char path[256];
    snprintf(path, sizeof path, "%s/rabbitmq.url", own_dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(url, sizeof url, f)) die("starting a broker", "no rabbitmq.url");
    fclose(f);
    url[strcspn(url, "\n")] = '\0';
}

static void broker_down(void)
{
    if (!*own_dir) return;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "'%s' stop rabbitmq '%s' >/dev/null 2>&1; rm -rf '%s'", script,
             own_dir, own_dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_rabbitmq: stopping the broker failed\n");
}

/* ---- rabbitmq-c, directly ---------------------------------------------------------------- */

static void check(amqp_connection_state_t st, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(st);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) die(what, "the broker refused it");
}

static amqp_connection_state_t raw_connect(void)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", url);
    struct amqp_connection_info ci;
    if (amqp_parse_url(buf, &ci) != AMQP_STATUS_OK) die("url", url);
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK) die("connect", url);
    if (amqp_login(st, *ci.vhost ? ci.vhost : "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                   ci.password)
            .reply_type != AMQP_RESPONSE_NORMAL)
        die("login", url);
    amqp_channel_open(st, 1);
    check(st, "channel.open");
    return st;
}

static void raw_close(amqp_connection_state_t st)
{
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
}

static void raw_purge(void)
{
    amqp_connection_state_t st = raw_connect();
    amqp_queue_purge(st, 1, amqp_cstring_bytes(queue));
    check(st, "queue.purge");
    raw_close(st);
}

typedef struct encoded {
    char *body;
    size_t len;
    char id[EW_UUID_LEN + 1];
    int64_t time_us;
    char source[32];
} encoded;

/* Publishes n pre-encoded events in batches with confirms, as the bus does: the same properties,
 * each batch's confirms awaited. */
static void raw_publish_all(amqp_connection_state_t st, const encoded *e, long n)
{
    uint64_t seq = 0;
    for (long i = 0; i < n; i += BATCH) {
        long b = n - i < BATCH ? n - i : BATCH;
        for (long j = 0; j < b; j++) {
            const encoded *x = &e[i + j];
            amqp_basic_properties_t p = {
                ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                          AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                          AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG |
                          AMQP_BASIC_CORRELATION_ID_FLAG,
                .content_type = amqp_cstring_bytes("application/cloudevents+json"),
                .delivery_mode = 2,
                .message_id = amqp_cstring_bytes(x->id),
                .correlation_id = amqp_cstring_bytes(x->id),
                .timestamp = (uint64_t)(x->time_us / 1000000),
                .type = amqp_cstring_bytes("user.registered"),
                .app_id = amqp_cstring_bytes(x->source),
            };
            if (amqp_basic_publish(st, 1, amqp_cstring_bytes(exchange),
                                   amqp_cstring_bytes("user.registered"), 0, 0, &p,
                                   (amqp_bytes_t){.len = x->len, .bytes = x->body}))
                die("raw publish", "basic.publish failed");
        }
        uint64_t last = seq + (uint64_t)b, acked = seq;
        while (acked < last) {
            amqp_frame_t f;
            if (amqp_simple_wait_frame(st, &f) != AMQP_STATUS_OK) die("raw publish", "confirms");
            if (f.frame_type != AMQP_FRAME_METHOD) continue;
            if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) die("raw publish", "nack");
            if (f.payload.method.id != AMQP_BASIC_ACK_METHOD) continue;
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->multiple)
                acked = a->delivery_tag;
            else
                acked++;
        }
        seq = last;
        amqp_maybe_release_buffers(st);
    }
}

static double bench_raw_publish(const encoded *e, long n)
{
    amqp_connection_state_t st = raw_connect();
    amqp_confirm_select(st, 1);
    check(st, "confirm.select");
    int64_t t0 = ew_mono_ns();
    raw_publish_all(st, e, n);
    double r = rate(n, ew_mono_ns() - t0);
    raw_close(st);
    return r;
}

typedef struct raw_consumer {
    long n;
    atomic_bool ready;
    int64_t done_ns;
} raw_consumer;

/* Consumes n messages from the group's queue with manual acks, one basic.ack each. */
static void *raw_consume(void *arg)
{
    raw_consumer *c = arg;
    amqp_connection_state_t st = raw_connect();
    amqp_basic_qos(st, 1, 0, PREFETCH, 0);
    check(st, "basic.qos");
    amqp_basic_consume(st, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check(st, "basic.consume");
    atomic_store(&c->ready, true);
    long sum = 0;
    for (long got = 0; got < c->n; got++) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(st);
        if (amqp_consume_message(st, &env, NULL, 0).reply_type != AMQP_RESPONSE_NORMAL)
            die("raw consume", "consume_message");
        sum += ((const char *)env.message.body.bytes)[0];
        if (amqp_basic_ack(st, 1, env.delivery_tag, 0)) die("raw consume", "basic.ack");
        amqp_destroy_envelope(&env);
    }
    c->done_ns = ew_mono_ns();
    if (sum != c->n * '{') die("raw consume", "bodies differ");
    raw_close(st);
    return NULL;
}

static double bench_raw_publish_to_handled(const encoded *e, long n)
{
    raw_consumer c = {.n = n};
    pthread_t th;
    if (pthread_create(&th, NULL, raw_consume, &c)) die("thread", "create");
    while (!atomic_load(&c.ready))
        usleep(1000);
    amqp_connection_state_t st = raw_connect();
    amqp_confirm_select(st, 1);
    check(st, "confirm.select");
    int64_t t0 = ew_mono_ns();
    raw_publish_all(st, e, n);
    pthread_join(th, NULL);
    double r = rate(n, c.done_ns - t0);
    raw_close(st);
    return r;
}

/* ---- the bus ----------------------------------------------------------------------------- */

static ew_bus *bus_open(void)
{
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "rabbitmq", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err) ||
        ew_config_set(cfg, "RABBITMQ_URL", url, &err) ||
        ew_config_set(cfg, "RABBITMQ_EXCHANGE", exchange, &err) ||
        /* the raw loop carries the events in clear; with encryption each event's new user
         * makes a data key (a key-store commit), which would be what this measures */
        ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err))
        die("config", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) die("open", err.msg);
    ew_config_free(cfg);
    return bus;
}

typedef struct counter {
    atomic_long n;
    int64_t *lat_us; /* when measuring latency: one per event */
    long cap;
} counter;

static ew_handler_result handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    counter *c = ud;
    long i = atomic_fetch_add(&c->n, 1);
    if (c->lat_us && i < c->cap) c->lat_us[i] = ew_now_us() - ew_event_time_us(ev);
    return EW_HANDLER_OK;
}

static void subscribe(ew_bus *bus, counter *c)
{
    ew_error err = {0};
    if (ew_bus_subscribe(bus, "user.registered", handle, c,
                         &(ew_subscribe_opts){.group = GROUP, .name = "count"}, &err))
        die("subscribe", err.msg);
}

static void bus_publish_all(ew_bus *bus, ew_event **evs, long n)
{
    ew_error err = {0};
    for (long i = 0; i < n; i += BATCH) {
        size_t b = (size_t)(n - i < BATCH ? n - i : BATCH);
        if (ew_bus_publish_batch(bus, (const ew_event *const *)evs + i, b, &err))
            die("publish", err.msg);
    }
}

/* The bus subscribed but not started: the group's queue keeps what is published. */
static double bench_bus_publish(ew_event **evs, long n)
{
    ew_bus *bus = bus_open();
    counter c = {0};
    subscribe(bus, &c);
    int64_t t0 = ew_mono_ns();
    bus_publish_all(bus, evs, n);
    double r = rate(n, ew_mono_ns() - t0);
    ew_bus_close(bus);
    return r;
}

static double bench_bus_publish_to_handled(ew_event **evs, long n)
{
    ew_bus *bus = bus_open();
    counter c = {0};
    subscribe(bus, &c);
    ew_error err = {0};
    if (ew_bus_start(bus, &err)) die("start", err.msg);
    int64_t t0 = ew_mono_ns();
    bus_publish_all(bus, evs, n);
    while (atomic_load(&c.n) < n)
        usleep(200);
    double r = rate(n, ew_mono_ns() - t0);
    ew_bus_close(bus);
    return r;
}

static ew_event *new_event(void)
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

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* One event at a time at LAT_RATE events/s: the time from building the event to its handler. */
static void bench_latency(double *p50, double *p99)
{
    long n = (long)LAT_RATE * LAT_SECONDS;
    ew_bus *bus = bus_open();
    counter c = {.lat_us = calloc((size_t)n, sizeof(int64_t)), .cap = n};
    subscribe(bus, &c);
    ew_error err = {0};
    if (ew_bus_start(bus, &err)) die("start", err.msg);
    int64_t t0 = ew_mono_ns(), period = 1000000000 / LAT_RATE;
    for (long i = 0; i < n; i++) {
        int64_t due = t0 + i * period, now = ew_mono_ns();
        if (due > now) usleep((useconds_t)((due - now) / 1000));
        ew_event *ev = new_event();
        if (ew_bus_publish(bus, ev, &err)) die("publish", err.msg);
        ew_event_unref(ev);
    }
    while (atomic_load(&c.n) < n)
        usleep(1000);
    ew_bus_close(bus);
    qsort(c.lat_us, (size_t)n, sizeof(int64_t), cmp_i64);
    *p50 = (double)c.lat_us[n / 2] / 1000.0;
    *p99 = (double)c.lat_us[n * 99 / 100] / 1000.0;
    free(c.lat_us);
}

int main(void)
{
    broker_up();
    snprintf(exchange, sizeof exchange, "bench%d", (int)getpid());
    snprintf(queue, sizeof queue, "%s.%s", exchange, GROUP);
    const long n = N_EVENTS;
    ew_event **evs = malloc((size_t)n * sizeof *evs);
    encoded *enc = malloc((size_t)n * sizeof *enc);
    if (!evs || !enc) die("memory", "out of memory");
    size_t bytes = 0;
    for (long i = 0; i < n; i++) {
        evs[i] = new_event();
        if (ew_event_encode(evs[i], &enc[i].body, &enc[i].len, NULL)) die("encode", "failed");
        snprintf(enc[i].id, sizeof enc[i].id, "%s", ew_event_id(evs[i]));
        snprintf(enc[i].source, sizeof enc[i].source, "%s", ew_event_source(evs[i]));
        enc[i].time_us = ew_event_time_us(evs[i]);
        bytes += enc[i].len;
    }

    /* The exchange, the dead-letter exchange and the group's queue, declared by the bus. */
    ew_bus *setup = bus_open();
    counter none = {0};
    subscribe(setup, &none);
    ew_bus_close(setup);

    /* Warm-up: connections, the broker's queue process, page cache. */
    bench_raw_publish(enc, n / 10);
    bench_bus_publish(evs, n / 10);
    raw_purge();

    /* Rounds alternate raw and bus so that both see the same broker weather (the machine is
     * shared); each figure is its best round. */
    double raw_pub = 0, bus_pub = 0, raw_p2h = 0, bus_p2h = 0;
    for (int round = 0; round < ROUNDS; round++) {
        raw_pub = fmax(raw_pub, bench_raw_publish(enc, n));
        raw_purge();
        bus_pub = fmax(bus_pub, bench_bus_publish(evs, n));
        raw_purge();
        raw_p2h = fmax(raw_p2h, bench_raw_publish_to_handled(enc, n));
        bus_p2h = fmax(bus_p2h, bench_bus_publish_to_handled(evs, n));
    }
    double p50, p99;
    bench_latency(&p50, &p99);

    printf("bench: bus.rabbitmq.raw_publish %.0f events/s\n", raw_pub);
    printf("bench: bus.rabbitmq.raw_publish_to_handled %.0f events/s\n", raw_p2h);
    printf(
        "bench: bus.rabbitmq.publish %.0f events/s ratio=%.2f baseline=bus.rabbitmq.raw_publish\n",
        bus_pub, bus_pub / raw_pub);
    printf("bench: bus.rabbitmq.publish_to_handled %.0f events/s ratio=%.2f "
           "baseline=bus.rabbitmq.raw_publish_to_handled\n",
           bus_p2h, bus_p2h / raw_p2h);
    printf("bench: bus.rabbitmq.latency.p50 %.3f ms\n", p50);
    printf("bench: bus.rabbitmq.latency.p99 %.3f ms\n", p99);
    printf("# rabbitmq: %ld events of %zu bytes on average, batches of %d with publisher confirms, "
           "persistent, prefetch %d, best of %d rounds; latency at %d events/s for %d s\n",
           n, bytes / (size_t)n, BATCH, PREFETCH, ROUNDS, LAT_RATE, LAT_SECONDS);

    for (long i = 0; i < n; i++) {
        ew_event_unref(evs[i]);
        free(enc[i].body);
    }
    free(evs);
    free(enc);
    broker_down();
    return 0;
}
#endif
