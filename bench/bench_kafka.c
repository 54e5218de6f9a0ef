/* Benchmark of the Kafka bus against librdkafka used directly, on the same cluster in the same
 * run (EW_KAFKA_URL, or a mock cluster of its own started with scripts/test-servers):
 *   publish             ew_bus_publish_batch() of pre-built user.registered events, 100 a call;
 *                       baseline: an idempotent acks=all producer sending the same bytes (key,
 *                       header) 100 at a time and waiting for their delivery reports.
 *   publish_to_handled  the same publishing, until a subscriber of the bus has handled them all;
 *                       baseline: the same producer and a group consumer committing manually.
 *   latency             publish (one event a call) to handler at 1,000 events/s for 3 s.
 * Raw and bus take turns (raw, bus, bus, raw, ...) in several pairs of client instances, and
 * each side's figure is the median of its turns: on the mock cluster and a shared two-core
 * machine single turns, and single producer instances, vary by ±40 %. The latency line of raw
 * librdkafka, same settings, is printed as a comment: the floor the mock cluster sets.
 * EW_BENCH_VERBOSE=1 prints every turn and the CPU each side spends per event (stderr).
 * `bench_kafka e2e [raw|bus|both]` runs only publish_to_handled, for profiling: raw or bus runs
 * that side alone (its turns, no ratio). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define BATCH 100
/* Pairs (raw and bus side by side), turns a pair and side, events a turn. The mock cluster
 * keeps ~5 MiB (10,000 of these events) a partition. */
#define PUB_PAIRS 4
#define PUB_TURNS 5
#define PUB_CHUNK 5000
#define E2E_PAIRS 3
#define E2E_TURNS 4
#define E2E_CHUNK 12500
#define LAT_RATE 1000
#define LAT_SECONDS 3
#define CT "application/cloudevents+json; charset=UTF-8"

static char servers[1024];
static char own_dir[256]; /* the mock cluster this run started, if any */
static char source_dir[PATH_MAX + 8];

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_kafka: %s: %s\n", what, why);
    exit(1);
}

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t process_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* ---- the cluster -------------------------------------------------------------------------- */

static void find_source_dir(const char *exe_dir) /* exe_dir: shorter than PATH_MAX */
{
    const char *env = getenv("EW_SOURCE_DIR");
    char path[PATH_MAX + 64];
    if (env) {
        snprintf(source_dir, sizeof source_dir, "%s", env);
        return;
    }
    /* a build folder inside the source tree: build-x/bench_kafka */
    snprintf(path, sizeof path, "%s/../scripts/test-servers", exe_dir);
    if (access(path, X_OK) == 0) {
        snprintf(source_dir, sizeof source_dir, "%.*s/..", PATH_MAX - 1, exe_dir);
        return;
    }
    die("EW_KAFKA_URL is not set", "and scripts/test-servers was not found (set EW_SOURCE_DIR)");
}

static void start_own_cluster(void)
{
    char exe[PATH_MAX], cmd[4 * PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) die("readlink /proc/self/exe", strerror(errno));
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    find_source_dir(exe);
    snprintf(own_dir, sizeof own_dir, "/tmp/ew-bench-kafka-XXXXXX");
    if (!mkdtemp(own_dir)) die("mkdtemp", strerror(errno));
    char link[512], target[PATH_MAX + 32];
    snprintf(link, sizeof link, "%s/ew-kafka-mock", own_dir);
    snprintf(target, sizeof target, "%s/ew-kafka-mock", exe);
    if (symlink(target, link)) die("symlink", strerror(errno));
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' start kafka '%s/servers' >/dev/null",
             source_dir, own_dir);
    if (system(cmd) != 0) die("scripts/test-servers start kafka", "failed");
    char path[600];
    snprintf(path, sizeof path, "%s/servers/kafka.url", own_dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(servers, sizeof servers, f)) die(path, "cannot read");
    fclose(f);
    servers[strcspn(servers, "\r\n")] = '\0';
}

static void stop_own_cluster(void)
{
    if (!own_dir[0]) return;
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof cmd,
             "'%s/scripts/test-servers' stop kafka '%s/servers' >/dev/null 2>&1; rm -rf '%s'",
             source_dir, own_dir, own_dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_kafka: stopping the mock cluster failed\n");
}

/* ---- events ------------------------------------------------------------------------------- */

static ew_event *new_event(void)
{
    static const char *const roles[] = {"user"};
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_registered d = {
        .user_id = id, .email = "ada.lovelace@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "auth-service", .subject = id},
                               &err))
        die("event", err.msg);
    return ev;
}

typedef struct events {
    ew_event **evs;
    char **json; /* encoded, for the raw loops: the same bytes */
    size_t *len;
    long n;
} events;

static void events_make(events *e, long n)
{
    e->n = n;
    e->evs = calloc((size_t)n, sizeof *e->evs);
    e->json = calloc((size_t)n, sizeof *e->json);
    e->len = calloc((size_t)n, sizeof *e->len);
    if (!e->evs || !e->json || !e->len) die("events", "out of memory");
    for (long i = 0; i < n; i++) {
        e->evs[i] = new_event();
        if (ew_event_encode(e->evs[i], &e->json[i], &e->len[i], NULL)) die("encode", "failed");
    }
}

static void events_free(events *e)
{
    for (long i = 0; i < e->n; i++) {
        ew_event_unref(e->evs[i]);
        free(e->json[i]);
    }
    free(e->evs);
    free(e->json);
    free(e->len);
}

/* ---- raw librdkafka ------------------------------------------------------------------------ */

static void quiet(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {}

static void conf(rd_kafka_conf_t *c, const char *name, const char *value)
{
    char errstr[256];
    if (rd_kafka_conf_set(c, name, value, errstr, sizeof errstr)) die(name, errstr);
}

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err) die("raw delivery", rd_kafka_err2str(m->err));
    (*(long *)opaque)++;
}

/* The producer as the bus configures its own: idempotent, acks=all, no linger, no Nagle, Java's
 * partitioner. */
static rd_kafka_t *raw_producer(long *delivered)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    conf(c, "bootstrap.servers", servers);
    conf(c, "enable.idempotence", "true");
    conf(c, "acks", "all");
    conf(c, "linger.ms", "0");
    conf(c, "partitioner", "murmur2_random");
    conf(c, "socket.nagle.disable", "true");
    rd_kafka_conf_set_log_cb(c, quiet);
    rd_kafka_conf_set_dr_msg_cb(c, raw_dr);
    rd_kafka_conf_set_opaque(c, delivered);
    char errstr[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof errstr);
    if (!rk) die("raw producer", errstr);
    return rk;
}

/* Produces the same bytes as the bus, BATCH at a time, each batch waited for. */
static void raw_produce_all(rd_kafka_t *rk, long *delivered, const char *topic, const events *e)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    for (long i = 0; i < e->n; i += BATCH) {
        long end = i + BATCH < e->n ? i + BATCH : e->n;
        long want = *delivered + (end - i);
        for (long j = i; j < end; j++) {
            const char *key = ew_event_subject(e->evs[j]);
            rd_kafka_resp_err_t err;
            while ((err = rd_kafka_producev(
                        rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_VALUE(e->json[j], e->len[j]), RD_KAFKA_V_KEY(key, strlen(key)),
                        RD_KAFKA_V_HEADER("content-type", CT, -1), RD_KAFKA_V_END)) ==
                   RD_KAFKA_RESP_ERR__QUEUE_FULL)
                rd_kafka_poll(rk, 10);
            if (err) die("raw produce", rd_kafka_err2str(err));
        }
        while (*delivered < want)
            rd_kafka_poll(rk, 100);
    }
    rd_kafka_topic_destroy(rkt);
}

/* The shape of a topic's partition leadership, e.g. "ABAA" for leaders 3,1,3,3: which of its
 * partitions share a broker. Two topics of one shape, fed the same keys, load the cluster the
 * same way; topics auto-created by the mock cluster get leaders at random. Asking for the
 * metadata creates the topic. */
static void topic_shape(rd_kafka_t *rk, const char *topic, char *shape, size_t cap)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    shape[0] = '\0';
    for (int attempt = 0; attempt < 50 && !shape[0]; attempt++) {
        const struct rd_kafka_metadata *md;
        if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == 0) {
            if (md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0) {
                int32_t seen[64];
                int nseen = 0, np = md->topics[0].partition_cnt;
                for (int i = 0; i < np && (size_t)i + 1 < cap; i++) {
                    int32_t leader = -1;
                    for (int j = 0; j < np; j++)
                        if (md->topics[0].partitions[j].id == i)
                            leader = md->topics[0].partitions[j].leader;
                    int k = 0;
                    while (k < nseen && seen[k] != leader)
                        k++;
                    if (k == nseen && nseen < 64) seen[nseen++] = leader;
                    shape[i] = (char)('A' + k);
                    shape[i + 1] = '\0';
                }
            }
            rd_kafka_metadata_destroy(md);
        }
        if (!shape[0]) sleep_ms(20);
    }
    rd_kafka_topic_destroy(rkt);
    if (!shape[0]) die(topic, "no metadata");
}

/* Two prefixes whose user.registered topics have the same shape (the raw side's and the
 * bus's), out of up to 30 candidates. */
static void twin_prefixes(rd_kafka_t *rk, const char *ns, char *a, char *b, size_t cap)
{
    enum { CANDIDATES = 30 };
    char shapes[CANDIDATES][64], topic[160];
    for (int i = 0; i < CANDIDATES; i++) {
        snprintf(topic, sizeof topic, "%s.c%d.user.registered", ns, i);
        topic_shape(rk, topic, shapes[i], sizeof shapes[i]);
        for (int j = 0; j < i; j++) {
            if (strcmp(shapes[i], shapes[j]) == 0) {
                snprintf(a, cap, "%s.c%d", ns, j);
                snprintf(b, cap, "%s.c%d", ns, i);
                return;
            }
        }
    }
    die("twin topics", "no two candidate topics with the same partition leadership");
}

/* A slice of the pre-built events. */
static events slice(const events *e, long from, long n)
{
    return (events){.evs = e->evs + from, .json = e->json + from, .len = e->len + from, .n = n};
}

typedef struct raw_consumer {
    rd_kafka_t *rk;
    atomic_long consumed;
    atomic_bool stop, lat; /* lat: record each message's age (its create time, in ms) */
    bool commit_inflight;
    pthread_t th;
    double *ms;
    long n, cap;
} raw_consumer;

static void raw_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *offs, void *opaque)
{
    ((raw_consumer *)opaque)->commit_inflight = false;
}

/* A group consumer committing manually, as the bus does: the consumed positions, one commit in
 * flight at a time, at most every 20 ms. */
static void *raw_consume_main(void *arg)
{
    raw_consumer *c = arg;
    bool dirty = false;
    int64_t next_commit = 0;
    while (!atomic_load(&c->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, dirty ? 20 : 100);
        if (m) {
            if (!m->err) {
                if (atomic_load_explicit(&c->lat, memory_order_relaxed) && c->n < c->cap)
                    c->ms[c->n++] =
                        (double)(ew_now_us() / 1000 - rd_kafka_message_timestamp(m, NULL));
                atomic_fetch_add(&c->consumed, 1);
                dirty = true;
            }
            rd_kafka_message_destroy(m);
        }
        if (dirty && !c->commit_inflight && ew_mono_ns() >= next_commit) {
            c->commit_inflight = true;
            dirty = false;
            next_commit = ew_mono_ns() + 20000000;
            if (rd_kafka_commit(c->rk, NULL, 1)) c->commit_inflight = false;
        }
    }
    return NULL;
}

static void raw_consumer_start(raw_consumer *c, const char *topic, const char *group)
{
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    conf(cc, "bootstrap.servers", servers);
    conf(cc, "group.id", group);
    conf(cc, "enable.auto.commit", "false");
    conf(cc, "auto.offset.reset", "earliest");
    conf(cc, "fetch.wait.max.ms", "100"); /* as the bus */
    conf(cc, "socket.nagle.disable", "true");
    rd_kafka_conf_set_log_cb(cc, quiet);
    rd_kafka_conf_set_offset_commit_cb(cc, raw_commit_cb);
    rd_kafka_conf_set_opaque(cc, c);
    char errstr[256];
    if (!(c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, cc, errstr, sizeof errstr)))
        die("raw consumer", errstr);
    rd_kafka_poll_set_consumer(c->rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    pthread_create(&c->th, NULL, raw_consume_main, c);
}

static void raw_consumer_stop(raw_consumer *c)
{
    atomic_store(&c->stop, true);
    pthread_join(c->th, NULL);
    rd_kafka_consumer_close(c->rk);
    rd_kafka_destroy(c->rk);
}

/* Paces n calls of one_publish at LAT_RATE a second. */
static void paced(long n, void (*one_publish)(void *), void *arg)
{
    int64_t t0 = ew_mono_ns(), step = 1000000000 / LAT_RATE;
    for (long i = 0; i < n; i++) {
        int64_t due = t0 + i * step, now = ew_mono_ns();
        if (due > now) {
            struct timespec ts = {0, (long)(due - now)};
            nanosleep(&ts, NULL);
        }
        one_publish(arg);
    }
}

typedef struct raw_one {
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    long *delivered;
    const events *e;
    long i;
} raw_one;

static void raw_publish_one(void *arg)
{
    raw_one *o = arg;
    long want = *o->delivered + 1, j = o->i++ % o->e->n;
    const char *key = ew_event_subject(o->e->evs[j]);
    if (rd_kafka_producev(o->rk, RD_KAFKA_V_RKT(o->rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_VALUE(o->e->json[j], o->e->len[j]),
                          RD_KAFKA_V_KEY(key, strlen(key)),
                          RD_KAFKA_V_HEADER("content-type", CT, -1), RD_KAFKA_V_END))
        die("raw produce", "failed");
    while (*o->delivered < want)
        rd_kafka_poll(o->rk, 100);
}

/* The floor under the bus's latency: the same cluster and settings, librdkafka alone, ages from
 * the messages' create times (milliseconds). */
static void raw_latency(raw_consumer *c, rd_kafka_t *rk, long *delivered, const char *topic,
                        const events *e, double *p50, double *p99)
{
    long total = (long)LAT_RATE * LAT_SECONDS, before = atomic_load(&c->consumed);
    c->ms = calloc((size_t)total, sizeof *c->ms);
    c->cap = total;
    atomic_store(&c->lat, true);
    raw_one o = {
        .rk = rk, .rkt = rd_kafka_topic_new(rk, topic, NULL), .delivered = delivered, .e = e};
    paced(total, raw_publish_one, &o);
    while (atomic_load(&c->consumed) < before + total)
        sleep_ms(1);
    atomic_store(&c->lat, false);
    rd_kafka_topic_destroy(o.rkt);
    qsort(c->ms, (size_t)c->n, sizeof *c->ms, cmp_double);
    *p50 = c->ms[c->n / 2];
    *p99 = c->ms[c->n * 99 / 100];
    free(c->ms);
}

/* ---- the bus ------------------------------------------------------------------------------ */

static ew_bus *open_bus(const char *prefix)
{
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "kafka", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "bench", &err) ||
        ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", servers, &err) ||
        ew_config_set(cfg, "KAFKA_TOPIC_PREFIX", prefix, &err) ||
        ew_config_set(cfg, "KAFKA_CONSUMER_GROUP", prefix, &err) ||
        /* the raw loop carries the events in clear; with encryption each event's new user
         * makes a data key (a key-store commit), which would be what this measures */
        ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err))
        die("config", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) die("open", err.msg);
    ew_config_free(cfg);
    return bus;
}

static void bus_publish_all(ew_bus *bus, const events *e)
{
    ew_error err = {0};
    for (long i = 0; i < e->n; i += BATCH) {
        size_t n = (size_t)(i + BATCH < e->n ? BATCH : e->n - i);
        if (ew_bus_publish_batch(bus, (const ew_event *const *)e->evs + i, n, &err))
            die("publish", err.msg);
    }
}

/* The subscriber: counts, and while `lat` is set records how long after its stamp (the event's
 * time, taken when it was built) each event is handled. */
typedef struct sink {
    atomic_long handled;
    pthread_mutex_t mu;
    double *ms;
    long n, cap;
    atomic_bool lat;
} sink;

static ew_handler_result on_event(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    sink *s = ud;
    if (atomic_load_explicit(&s->lat, memory_order_relaxed)) {
        double ms = (double)(ew_now_us() - ew_event_time_us(ev)) / 1000.0;
        pthread_mutex_lock(&s->mu);
        if (s->n < s->cap) s->ms[s->n++] = ms;
        pthread_mutex_unlock(&s->mu);
    }
    atomic_fetch_add(&s->handled, 1);
    return EW_HANDLER_OK;
}

static void wait_for(atomic_long *counter, long n)
{
    while (atomic_load(counter) < n)
        sleep_ms(1);
}

typedef struct bus_one {
    ew_bus *bus;
} bus_one;

static void bus_publish_one(void *arg)
{
    ew_event *ev = new_event();
    ew_error err = {0};
    if (ew_bus_publish(((bus_one *)arg)->bus, ev, &err)) die("publish", err.msg);
    ew_event_unref(ev);
}

/* Events built (stamped) just before their publish, one a call, at LAT_RATE a second. */
static void bus_latency(ew_bus *bus, sink *s, double *p50, double *p99)
{
    long total = (long)LAT_RATE * LAT_SECONDS;
    s->ms = calloc((size_t)total, sizeof *s->ms);
    s->cap = total;
    long before = atomic_load(&s->handled);
    atomic_store(&s->lat, true);
    paced(total, bus_publish_one, &(bus_one){bus});
    wait_for(&s->handled, before + total);
    atomic_store(&s->lat, false);
    qsort(s->ms, (size_t)s->n, sizeof *s->ms, cmp_double);
    *p50 = s->ms[s->n / 2];
    *p99 = s->ms[s->n * 99 / 100];
    free(s->ms);
}

/* ---- main --------------------------------------------------------------------------------- */

/* One side by side: a raw producer (and, to handled, a raw group consumer) and a bus. */
typedef struct pair {
    long delivered;
    rd_kafka_t *rk;
    char topic[160];
    raw_consumer c;
    ew_bus *bus;
    sink s;
} pair;

int main(int argc, char **argv)
{
    bool only_e2e = argc > 1 && strcmp(argv[1], "e2e") == 0;
    bool run_raw = !(only_e2e && argc > 2 && strcmp(argv[2], "bus") == 0),
         run_bus = !(only_e2e && argc > 2 && strcmp(argv[2], "raw") == 0);
    const char *url = getenv("EW_KAFKA_URL");
    if (url && *url)
        snprintf(servers, sizeof servers, "%s", url);
    else
        start_own_cluster();

    char ns[32], id[EW_UUID_LEN + 1], prefix[96], sub_ns[64], group[200];
    ew_uuid7(id);
    snprintf(ns, sizeof ns, "bench%.8s", id + 24);
    events e;
    events_make(&e, E2E_CHUNK);
    events pe = slice(&e, 0, PUB_CHUNK), one = slice(&e, 0, 1);
    bool verbose = getenv("EW_BENCH_VERBOSE") != NULL;
    enum { NRATES = PUB_PAIRS * PUB_TURNS + E2E_PAIRS * E2E_TURNS };
    double raw_rates[NRATES] = {0}, bus_rates[NRATES] = {0};
    int n = 0;
    int64_t raw_cpu = 0, bus_cpu = 0;

    /* publish: pairs of a raw producer and a bus, warmed up (connections, producer ids,
     * topics), taking turns into one topic. Producer instances differ by ±20 % on the mock
     * cluster, hence several pairs. */
    for (int k = 0; k < PUB_PAIRS && !only_e2e; k++) {
        pair p = {0};
        p.rk = raw_producer(&p.delivered);
        snprintf(prefix, sizeof prefix, "%s.pub%d", ns, k);
        snprintf(p.topic, sizeof p.topic, "%s.user.registered", prefix);
        p.bus = open_bus(prefix);
        raw_produce_all(p.rk, &p.delivered, p.topic, &one);
        bus_publish_all(p.bus, &one);
        for (int r = 0; r < 2 * PUB_TURNS; r++) { /* raw, bus, bus, raw, raw, bus, ... */
            int64_t t0 = ew_mono_ns(), c0 = thread_cpu_ns();
            if ((r & 1) == (r >> 1 & 1)) {
                raw_produce_all(p.rk, &p.delivered, p.topic, &pe);
                raw_rates[n + r / 2] = rate(PUB_CHUNK, ew_mono_ns() - t0);
                raw_cpu += thread_cpu_ns() - c0;
            } else {
                bus_publish_all(p.bus, &pe);
                bus_rates[n + r / 2] = rate(PUB_CHUNK, ew_mono_ns() - t0);
                bus_cpu += thread_cpu_ns() - c0;
            }
        }
        n += PUB_TURNS;
        ew_bus_close(p.bus);
        rd_kafka_destroy(p.rk);
    }
    if (verbose && !only_e2e)
        for (int r = 0; r < n; r++)
            fprintf(stderr, "# publish turn %d: raw %.0f bus %.0f\n", r, raw_rates[r],
                    bus_rates[r]);
    if (verbose && !only_e2e)
        fprintf(stderr,
                "# publish: the publishing thread's CPU per event: raw %.2f us, bus %.2f us\n",
                (double)raw_cpu / 1e3 / n / PUB_CHUNK, (double)bus_cpu / 1e3 / n / PUB_CHUNK);
    double raw_pub = only_e2e ? 0 : median(raw_rates, n),
           bus_pub = only_e2e ? 0 : median(bus_rates, n);

    /* publish to handled: pairs of a raw producer with a raw group consumer and a bus
     * subscribed to what it publishes, each side with a topic of its own (of the same shape),
     * all past their group's first join, taking turns. */
    static pair ps[E2E_PAIRS];
    for (int k = 0; k < E2E_PAIRS; k++) {
        pair *p = &ps[k];
        p->rk = raw_producer(&p->delivered);
        char raw_prefix[96];
        snprintf(sub_ns, sizeof sub_ns, "%s.e%d", ns, k);
        twin_prefixes(p->rk, sub_ns, raw_prefix, prefix, sizeof prefix);
        snprintf(p->topic, sizeof p->topic, "%s.user.registered", raw_prefix);
        snprintf(group, sizeof group, "%s.raw", raw_prefix);
        raw_consumer_start(&p->c, p->topic, group);
        p->bus = open_bus(prefix);
        pthread_mutex_init(&p->s.mu, NULL);
        ew_error err = {0};
        if (ew_bus_subscribe(p->bus, "user.registered", on_event, &p->s, NULL, &err) ||
            ew_bus_start(p->bus, &err))
            die("subscribe", err.msg);
        raw_produce_all(p->rk, &p->delivered, p->topic, &one);
        bus_publish_all(p->bus, &one);
    }
    for (int k = 0; k < E2E_PAIRS; k++) {
        wait_for(&ps[k].c.consumed, 1);
        wait_for(&ps[k].s.handled, 1);
    }
    n = 0;
    raw_cpu = bus_cpu = 0;
    int64_t pub_ns[2] = {0, 0}; /* publishing's share of the turns */
    for (int t = 0; t < E2E_TURNS; t++) {
        for (int k = 0; k < E2E_PAIRS; k++, n++) {
            pair *p = &ps[k];
            for (int side = 0; side < 2; side++) {
                int64_t t0 = ew_mono_ns(), c0 = process_cpu_ns();
                if (side == (t + k) % 2) {
                    if (!run_raw) continue;
                    raw_produce_all(p->rk, &p->delivered, p->topic, &e);
                    pub_ns[0] += ew_mono_ns() - t0;
                    wait_for(&p->c.consumed, 1 + (t + 1) * (long)E2E_CHUNK);
                    raw_rates[n] = rate(E2E_CHUNK, ew_mono_ns() - t0);
                    raw_cpu += process_cpu_ns() - c0;
                } else {
                    if (!run_bus) continue;
                    bus_publish_all(p->bus, &e);
                    pub_ns[1] += ew_mono_ns() - t0;
                    wait_for(&p->s.handled, 1 + (t + 1) * (long)E2E_CHUNK);
                    bus_rates[n] = rate(E2E_CHUNK, ew_mono_ns() - t0);
                    bus_cpu += process_cpu_ns() - c0;
                }
            }
        }
    }
    if (verbose)
        for (int r = 0; r < n; r++)
            fprintf(stderr, "# e2e turn %d: raw %.0f bus %.0f\n", r, raw_rates[r], bus_rates[r]);
    if (verbose)
        fprintf(stderr,
                "# to handled: this process's CPU per event: raw %.2f us, bus %.2f us; "
                "publishing alone: raw %.0f, bus %.0f events/s\n",
                (double)raw_cpu / 1e3 / n / E2E_CHUNK, (double)bus_cpu / 1e3 / n / E2E_CHUNK,
                rate((long)n * E2E_CHUNK, pub_ns[0]), rate((long)n * E2E_CHUNK, pub_ns[1]));
    double raw_e2e = median(raw_rates, n), bus_e2e = median(bus_rates, n);
    if (only_e2e) {
        for (int k = 0; k < E2E_PAIRS; k++) {
            raw_consumer_stop(&ps[k].c);
            rd_kafka_destroy(ps[k].rk);
            ew_bus_close(ps[k].bus);
        }
        if (run_raw) printf("bench: bus.kafka.raw_publish_to_handled %.0f events/s\n", raw_e2e);
        if (run_bus) printf("bench: bus.kafka.publish_to_handled %.0f events/s\n", bus_e2e);
        if (run_raw && run_bus) printf("# ratio %.2f\n", bus_e2e / raw_e2e);
        events_free(&e);
        stop_own_cluster();
        return 0;
    }

    double p50, p99, raw_p50, raw_p99;
    bus_latency(ps[0].bus, &ps[0].s, &p50, &p99);
    raw_latency(&ps[0].c, ps[0].rk, &ps[0].delivered, ps[0].topic, &e, &raw_p50, &raw_p99);
    for (int k = 0; k < E2E_PAIRS; k++) {
        raw_consumer_stop(&ps[k].c);
        rd_kafka_destroy(ps[k].rk);
        ew_bus_close(ps[k].bus);
    }

    printf("bench: bus.kafka.raw_publish %.0f events/s\n", raw_pub);
    printf("bench: bus.kafka.publish %.0f events/s ratio=%.2f baseline=bus.kafka.raw_publish\n",
           bus_pub, bus_pub / raw_pub);
    printf("bench: bus.kafka.raw_publish_to_handled %.0f events/s\n", raw_e2e);
    printf("bench: bus.kafka.publish_to_handled %.0f events/s ratio=%.2f "
           "baseline=bus.kafka.raw_publish_to_handled\n",
           bus_e2e, bus_e2e / raw_e2e);
    printf("bench: bus.kafka.latency.p50 %.3f ms\n", p50);
    printf("bench: bus.kafka.latency.p99 %.3f ms\n", p99);
    printf("# kafka: user.registered events of %zu bytes, batches of %d; medians of %d turns of "
           "%d events a side in %d pairs (publish), of %d turns of %d in %d pairs (to handled); "
           "latency at %d events/s for %d s (librdkafka alone: p50 %.0f ms, p99 %.0f ms); %s%s\n",
           e.len[0], BATCH, PUB_PAIRS * PUB_TURNS, PUB_CHUNK, PUB_PAIRS, E2E_PAIRS * E2E_TURNS,
           E2E_CHUNK, E2E_PAIRS, LAT_RATE, LAT_SECONDS, raw_p50, raw_p99,
           own_dir[0] ? "librdkafka's mock cluster (3 brokers) at " : "cluster at ", servers);
    events_free(&e);
    stop_own_cluster();
    return 0;
}
