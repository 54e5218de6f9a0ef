/* Benchmark of the SQLite bus beside SQLite used directly, in the same run, on the same disk.
 * Every figure runs across processes on one database file, as services on one machine do:
 *
 *   raw_append_read     one process inserts pre-encoded user.registered rows (~480 bytes) into a
 *                       table identical to event_store.events, in transactions of the size the
 *                       bus's group commit reached (below), each synced (synchronous=FULL), as
 *                       the bus syncs each of its commits before publish returns;
 *                       another reads them by position (SELECT ... WHERE position > ? LIMIT 1000)
 *                       as they come; from the first insert to the last row read
 *   publish_to_handled  one process publishes the same events from PUB_THREADS threads, one
 *                       ew_bus_publish() each at a time (group commit gathers them), another
 *                       consumes them with a counting handler; first publish to last handled
 *   latency             1,000 events/s offered for 5 s (a pacer hands each event, built at its
 *                       time, to a pool of publishing threads); handled time minus event time
 *   pickup              an idle consumer: 200 events published 20 ms apart, from the call of
 *                       ew_bus_publish() in one process (so the commit and its sync count) to
 *                       the handler in another
 *   idle_cpu            a consumer process with nothing to do, over 5 s (getrusage)
 *
 * The bus runs with EVENT_ENCRYPTION=off, as the raw loop carries its events in clear (with it on,
 * each event, about a new user, would make a data key: a key-store commit per event, measuring
 * the key store; encryption's cost is in bench_codec and bench_redis's `.shipped`).
 *
 * Throughput figures are the best of ROUNDS rounds (raw and bus take turns going first): the
 * machine is shared. Files live in a temporary folder under $TMPDIR (default /tmp), removed at
 * the end. */
#ifdef EW_HAVE_SQLITE_BUS
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "eventwire/bus.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define N_EVENTS 50000
#define PUB_THREADS 64
#define ROUNDS 3
#define RATE 1000 /* events/s offered for the latency */
#define RATE_SECONDS 5
#define RATE_THREADS 16
#define PICKUPS 200
#define PICKUP_GAP_US 20000
#define IDLE_SECONDS 5

static char dir[256];
static int file_no;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_sqlite_bus: %s: %s\n", what, msg);
    exit(1);
}

static double rate(long n, int64_t us)
{
    return (double)n / ((double)us / 1e6);
}

static void write_full(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die("write", strerror(errno));
        c += k;
        n -= (size_t)k;
    }
}

static void read_full(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die("read", k ? strerror(errno) : "the other process ended early");
        c += k;
        n -= (size_t)k;
    }
}

static void new_file(char *path, size_t n)
{
    snprintf(path, n, "%s/f%d.db", dir, file_no++);
}

/* Removes a finished round's files: their pages, not yet written back, would otherwise be
 * written while the next figure runs (and slow its syncs). */
static void drop_file(const char *path)
{
    static const char *const tails[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[320];
        snprintf(p, sizeof p, "%s%s", path, tails[i]);
        unlink(p);
    }
}

static void wait_child(pid_t pid, const char *what)
{
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die(what, "the child process failed");
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(int64_t *v, size_t n, double q)
{
    qsort(v, n, sizeof *v, cmp_i64);
    size_t i = (size_t)ceil(q * (double)n);
    if (i < 1) i = 1;
    return (double)v[i - 1] / 1000.0;
}

/* ---- events ------------------------------------------------------------------------------- */

static ew_event *user_registered(void)
{
    char uuid[EW_UUID_LEN + 1];
    ew_uuid7(uuid);
    const char *roles[] = {"user"};
    ew_user_registered d = {.user_id = uuid,
                            .email = "ann.example@example.com",
                            .username = "ann",
                            .roles = {roles, 1}};
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew_user_registered_new(&ev, &d,
                               &(ew_event_attrs){.source = "auth-service", .subject = uuid}, &err))
        die("event", err.msg);
    return ev;
}

/* ---- the bus ------------------------------------------------------------------------------ */

typedef struct logbuf {
    pthread_mutex_t mu;
    unsigned long long events, commits;
} logbuf;

static void bus_log(void *ud, const ew_log_record *rec)
{
    logbuf *l = ud;
    const char *msg = rec->msg;
    unsigned long long e, c;
    if (l && sscanf(msg, "sqlite bus: %llu events published in %llu commits", &e, &c) == 2) {
        pthread_mutex_lock(&l->mu);
        l->events += e;
        l->commits += c;
        pthread_mutex_unlock(&l->mu);
    }
    if (rec->level >= EW_LOG_ERROR) fprintf(stderr, "bench_sqlite_bus: %s\n", msg);
}

static ew_bus *open_bus(const char *path, const char *service, logbuf *l)
{
    ew_config *cfg;
    ew_error err = {0};
    char url[300];
    snprintf(url, sizeof url, "sqlite:%s", path);
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "sqlite", &err) ||
        ew_config_set(cfg, "EVENT_STORE_URL", url, &err) ||
        ew_config_set(cfg, "SERVICE_NAME", service, &err) ||
        ew_config_set(cfg, "EVENT_STORE_TTL_DAYS", "0", &err) ||
        ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err))
        die("config", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .log = bus_log, .log_ud = l}, &err))
        die("ew_bus_open", err.msg);
    ew_config_free(cfg);
    return bus;
}

/* ---- consumer processes -------------------------------------------------------------------- */

typedef struct counter {
    atomic_long n;
    long want;
    int64_t last_us; /* realtime when the want-th event was handled */
    int64_t *lat;    /* per event: handled - event time (latency) or handled time (pickup) */
    int latency;     /* 1: lat = handled - event time; 2: lat = handled time */
} counter;

static ew_handler_result count_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    counter *c = ud;
    int64_t now = ew_now_us();
    long i = atomic_fetch_add(&c->n, 1);
    if (c->lat && i < c->want) c->lat[i] = c->latency == 1 ? now - ew_event_time_us(ev) : now;
    if (i + 1 == c->want) c->last_us = now;
    return EW_HANDLER_OK;
}

/* Forks a consumer of path that handles `want` events and then writes to out: its last handled
 * time, and with lat the per-event figures. Returns once it has subscribed. */
static pid_t spawn_consumer(const char *path, long want, int latency, int *out)
{
    int ready[2], res[2];
    if (pipe(ready) || pipe(res)) die("pipe", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        close(res[0]);
        ew_bus *bus = open_bus(path, "consumer", NULL);
        static counter c;
        c.want = want;
        c.latency = latency;
        if (latency) c.lat = calloc((size_t)want, sizeof *c.lat);
        ew_error err = {0};
        if (ew_bus_subscribe(bus, "user.registered", count_fn, &c, NULL, &err) ||
            ew_bus_start(bus, &err))
            die("subscribe", err.msg);
        char b = 1;
        write_full(ready[1], &b, 1);
        while (atomic_load(&c.n) < want)
            usleep(1000);
        write_full(res[1], &c.last_us, sizeof c.last_us);
        if (latency) write_full(res[1], c.lat, (size_t)want * sizeof *c.lat);
        ew_bus_close(bus);
        _exit(0);
    }
    close(ready[1]);
    close(res[1]);
    char b;
    read_full(ready[0], &b, 1);
    close(ready[0]);
    *out = res[0];
    return pid;
}

/* ---- publisher processes ------------------------------------------------------------------- */

/* Thread k of T publishes events k, k + T, k + 2T, ...: all threads go through the events in
 * the order they were made, as publishers that make an event and publish it do. (Ids and
 * subjects are UUIDv7, ordered by time: giving each thread a block of its own would make the
 * threads insert keys from T distant places of the indexes at once, which no real publisher
 * does.) */
typedef struct pubthread {
    pthread_t t;
    ew_bus *bus;
    ew_event **evs;
    long n, first, stride;
    pthread_barrier_t *go;
} pubthread;

static void *publish_loop(void *arg)
{
    pubthread *p = arg;
    pthread_barrier_wait(p->go);
    for (long i = p->first; i < p->n; i += p->stride) {
        ew_error err = {0};
        if (ew_bus_publish(p->bus, p->evs[i], &err)) die("publish", err.msg);
        ew_event_unref(p->evs[i]);
    }
    return NULL;
}

/* Publishes n events from `threads` threads; writes its start time and the mean commit size. */
static pid_t spawn_publisher(const char *path, long n, int threads, int *out)
{
    int res[2];
    if (pipe(res)) die("pipe", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) die("fork", strerror(errno));
    if (pid == 0) {
        close(res[0]);
        static logbuf l = {.mu = PTHREAD_MUTEX_INITIALIZER};
        ew_bus *bus = open_bus(path, "publisher", &l);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
        pubthread *pt = calloc((size_t)threads, sizeof *pt);
        ew_event **evs = malloc((size_t)n * sizeof *evs);
        for (long k = 0; k < n; k++)
            evs[k] = user_registered();
        for (int i = 0; i < threads; i++) {
            pt[i] = (pubthread){
                .bus = bus, .evs = evs, .n = n, .first = i, .stride = threads, .go = &go};
            pthread_create(&pt[i].t, NULL, publish_loop, &pt[i]);
        }
        int64_t start = ew_now_us();
        pthread_barrier_wait(&go);
        for (int i = 0; i < threads; i++)
            pthread_join(pt[i].t, NULL);
        free(evs);
        ew_bus_close(bus);
        double per_commit = l.commits ? (double)l.events / (double)l.commits : 0;
        write_full(res[1], &start, sizeof start);
        write_full(res[1], &per_commit, sizeof per_commit);
        _exit(0);
    }
    close(res[1]);
    *out = res[0];
    return pid;
}

/* One round of publish_to_handled: events/s, and the mean events per commit in *per_commit. */
static double bus_round(double *per_commit)
{
    char path[300];
    new_file(path, sizeof path);
    int cfd, pfd;
    pid_t c = spawn_consumer(path, N_EVENTS, 0, &cfd);
    pid_t p = spawn_publisher(path, N_EVENTS, PUB_THREADS, &pfd);
    int64_t start, last;
    read_full(pfd, &start, sizeof start);
    read_full(pfd, per_commit, sizeof *per_commit);
    read_full(cfd, &last, sizeof last);
    close(pfd);
    close(cfd);
    wait_child(p, "publisher");
    wait_child(c, "consumer");
    drop_file(path);
    return rate(N_EVENTS, last - start);
}

/* ---- the raw baseline ---------------------------------------------------------------------- */

static sqlite3 *raw_open(const char *path, int sync_full)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) die("sqlite3_open", sqlite3_errmsg(db));
    sqlite3_busy_timeout(db, 10000);
    char *msg = NULL;
    const char *sql = sync_full ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL"
                                : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL";
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) die("pragma", msg);
    return db;
}

/* The table of 001_init.sql, with its indexes. */
static const char *const raw_schema =
    "CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY, event_id TEXT NOT NULL "
    "UNIQUE, stream_id TEXT NOT NULL, version INTEGER NOT NULL, event_type TEXT NOT NULL, "
    "event_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, recorded_at "
    "TEXT NOT NULL, expires_at TEXT, UNIQUE (stream_id, version)); CREATE INDEX IF NOT EXISTS "
    "events_expires_at ON events (expires_at) WHERE expires_at IS NOT NULL";

static void raw_writer(const char *path, long n, int batch, int sync_full)
{
    sqlite3 *db = raw_open(path, sync_full);
    /* the rows, encoded beforehand: metadata and data of real events */
    char **meta = malloc((size_t)n * sizeof *meta), **data = malloc((size_t)n * sizeof *data);
    char(*ids)[EW_UUID_LEN + 1] = malloc((size_t)n * sizeof *ids);
    for (long i = 0; i < n; i++) {
        ew_event *ev = user_registered();
        char *json;
        size_t len;
        if (ew_event_encode(ev, &json, &len, NULL)) die("encode", "failed");
        char *d = strstr(json, ",\"data\":");
        data[i] = strndup(d + 8, (size_t)(json + len - 1 - (d + 8)));
        d[0] = '}';
        d[1] = '\0';
        meta[i] = json;
        strcpy(ids[i], ew_event_id(ev));
        ew_event_unref(ev);
    }
    sqlite3_stmt *ins;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO events (position, event_id, stream_id, version, "
                           "event_type, event_version, data, metadata, recorded_at) VALUES "
                           "(?1, ?2, ?2, 1, 'user.registered', 1, ?3, ?4, ?5)",
                           -1, &ins, NULL) != SQLITE_OK)
        die("prepare", sqlite3_errmsg(db));
    char now[EW_TIME_LEN + 1];
    ew_time_format(ew_now_us(), now);
    for (long i = 0; i < n;) {
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        for (int k = 0; k < batch && i < n; k++, i++) {
            sqlite3_bind_int64(ins, 1, i + 1);
            sqlite3_bind_text(ins, 2, ids[i], -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 3, data[i], -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 4, meta[i], -1, SQLITE_STATIC);
            sqlite3_bind_text(ins, 5, now, -1, SQLITE_STATIC);
            if (sqlite3_step(ins) != SQLITE_DONE) die("insert", sqlite3_errmsg(db));
            sqlite3_reset(ins);
        }
        if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            die("commit", sqlite3_errmsg(db));
    }
    sqlite3_finalize(ins);
    sqlite3_close(db);
}

/* Reads rows by position until it has n, as a consumer would (every column fetched). */
static void raw_reader(const char *path, long n)
{
    sqlite3 *db = raw_open(path, 0);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT position, stream_id, version, event_type, metadata, data, "
                           "recorded_at, event_id FROM events WHERE position > ?1 "
                           "ORDER BY position LIMIT 1000",
                           -1, &st, NULL) != SQLITE_OK)
        die("prepare", sqlite3_errmsg(db));
    long got = 0;
    int64_t pos = 0;
    size_t bytes = 0;
    while (got < n) {
        sqlite3_bind_int64(st, 1, pos);
        int k = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            pos = sqlite3_column_int64(st, 0);
            for (int c = 1; c < 8; c++)
                bytes += (size_t)sqlite3_column_bytes(st, c) + (sqlite3_column_text(st, c) != 0);
            k++;
        }
        sqlite3_reset(st);
        got += k;
        if (!k) usleep(200);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (bytes == 0) die("reader", "read nothing");
}

static double raw_round(int batch, int sync_full)
{
    char path[300];
    new_file(path, sizeof path);
    sqlite3 *db = raw_open(path, sync_full);
    if (sqlite3_exec(db, raw_schema, NULL, NULL, NULL) != SQLITE_OK)
        die("schema", sqlite3_errmsg(db));
    sqlite3_close(db);
    int res[2];
    if (pipe(res)) die("pipe", strerror(errno));
    pid_t r = fork();
    if (r == 0) {
        raw_reader(path, N_EVENTS);
        int64_t last = ew_now_us();
        write_full(res[1], &last, sizeof last);
        _exit(0);
    }
    int go[2];
    if (pipe(go)) die("pipe", strerror(errno));
    pid_t w = fork();
    if (w == 0) {
        /* rows are prepared before the clock starts */
        char b;
        read_full(go[0], &b, 1);
        int64_t start = ew_now_us();
        write_full(res[1], &start, sizeof start);
        raw_writer(path, N_EVENTS, batch, sync_full);
        _exit(0);
    }
    char b = 1;
    write_full(go[1], &b, 1);
    int64_t t1, t2;
    read_full(res[0], &t1, sizeof t1);
    read_full(res[0], &t2, sizeof t2);
    close(res[0]);
    close(res[1]);
    close(go[0]);
    close(go[1]);
    wait_child(w, "raw writer");
    wait_child(r, "raw reader");
    drop_file(path);
    return rate(N_EVENTS, (t1 > t2 ? t1 - t2 : t2 - t1));
}

/* ---- latency at a steady rate -------------------------------------------------------------- */

typedef struct paced {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long next, due; /* events handed out, events due by now */
    long total;
    ew_bus *bus;
} paced;

static void *paced_worker(void *arg)
{
    paced *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->next >= p->due && p->next < p->total)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->next >= p->total) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        p->next++;
        pthread_mutex_unlock(&p->mu);
        ew_event *ev = user_registered(); /* its time is now: latency counts from here */
        ew_error err = {0};
        if (ew_bus_publish(p->bus, ev, &err)) die("publish", err.msg);
        ew_event_unref(ev);
    }
}

static void latency(double *p50, double *p99, double *max)
{
    char path[300];
    new_file(path, sizeof path);
    sync(); /* what earlier figures wrote is on disk: the syncs measured are the bus's own */
    long n = RATE * RATE_SECONDS;
    int cfd;
    pid_t c = spawn_consumer(path, n, 1, &cfd);
    pid_t p = fork();
    if (p == 0) {
        paced pc = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .total = n};
        pc.bus = open_bus(path, "publisher", NULL);
        pthread_t t[RATE_THREADS];
        for (int i = 0; i < RATE_THREADS; i++)
            pthread_create(&t[i], NULL, paced_worker, &pc);
        int64_t start = ew_mono_ns();
        for (long i = 1; i <= n; i++) {
            int64_t at = start + i * (1000000000 / RATE);
            int64_t wait = at - ew_mono_ns();
            if (wait > 0) usleep((useconds_t)(wait / 1000));
            pthread_mutex_lock(&pc.mu);
            pc.due = i;
            pthread_cond_signal(&pc.cv);
            pthread_mutex_unlock(&pc.mu);
        }
        pthread_mutex_lock(&pc.mu);
        pthread_cond_broadcast(&pc.cv);
        pthread_mutex_unlock(&pc.mu);
        for (int i = 0; i < RATE_THREADS; i++)
            pthread_join(t[i], NULL);
        ew_bus_close(pc.bus);
        _exit(0);
    }
    int64_t last;
    read_full(cfd, &last, sizeof last);
    int64_t *lat = malloc((size_t)n * sizeof *lat);
    read_full(cfd, lat, (size_t)n * sizeof *lat);
    close(cfd);
    wait_child(p, "publisher");
    wait_child(c, "consumer");
    *p50 = pct_ms(lat, (size_t)n, 0.50);
    *p99 = pct_ms(lat, (size_t)n, 0.99);
    *max = pct_ms(lat, (size_t)n, 1.0);
    if (getenv("EW_BENCH_VERBOSE"))
        printf("# latency p90 %.3f ms, p99.9 %.3f ms\n", pct_ms(lat, (size_t)n, 0.90),
               pct_ms(lat, (size_t)n, 0.999));
    free(lat);
    drop_file(path);
}

/* ---- pickup by an idle consumer in another process ----------------------------------------- */

static void pickup(double *p50, double *p99, double *max)
{
    char path[300];
    new_file(path, sizeof path);
    int cfd;
    pid_t c = spawn_consumer(path, PICKUPS, 2, &cfd);
    int res[2];
    if (pipe(res)) die("pipe", strerror(errno));
    pid_t p = fork();
    if (p == 0) {
        close(res[0]);
        ew_bus *bus = open_bus(path, "publisher", NULL);
        int64_t *ret = calloc(PICKUPS, sizeof *ret);
        for (int i = 0; i < PICKUPS; i++) {
            /* 20 ms apart, with a varying phase against the consumer's polling */
            usleep(PICKUP_GAP_US + (useconds_t)(i * 37 % 1000));
            ew_event *ev = user_registered();
            ew_error err = {0};
            ret[i] = ew_now_us();
            if (ew_bus_publish(bus, ev, &err)) die("publish", err.msg);
            ew_event_unref(ev);
        }
        write_full(res[1], ret, PICKUPS * sizeof *ret);
        ew_bus_close(bus);
        _exit(0);
    }
    close(res[1]);
    int64_t *ret = malloc(PICKUPS * sizeof *ret), *got = malloc(PICKUPS * sizeof *got), last;
    read_full(res[0], ret, PICKUPS * sizeof *ret);
    read_full(cfd, &last, sizeof last);
    read_full(cfd, got, PICKUPS * sizeof *got);
    close(res[0]);
    close(cfd);
    wait_child(p, "publisher");
    wait_child(c, "consumer");
    for (int i = 0; i < PICKUPS; i++)
        got[i] -= ret[i];
    *p50 = pct_ms(got, PICKUPS, 0.50);
    *p99 = pct_ms(got, PICKUPS, 0.99);
    *max = pct_ms(got, PICKUPS, 1.0);
    free(ret);
    free(got);
}

/* ---- an idle consumer's CPU ---------------------------------------------------------------- */

static double idle_cpu(void)
{
    char path[300];
    new_file(path, sizeof path);
    int res[2];
    if (pipe(res)) die("pipe", strerror(errno));
    pid_t c = fork();
    if (c == 0) {
        close(res[0]);
        ew_bus *bus = open_bus(path, "consumer", NULL);
        static counter cn;
        ew_error err = {0};
        if (ew_bus_subscribe(bus, "user.registered", count_fn, &cn, NULL, &err) ||
            ew_bus_start(bus, &err))
            die("subscribe", err.msg);
        usleep(500000); /* settled: the lease taken, the log read */
        struct rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        int64_t t0 = ew_mono_ns();
        usleep(IDLE_SECONDS * 1000000);
        getrusage(RUSAGE_SELF, &b);
        int64_t t1 = ew_mono_ns();
        double cpu = (double)(b.ru_utime.tv_sec - a.ru_utime.tv_sec) +
                     (double)(b.ru_stime.tv_sec - a.ru_stime.tv_sec) +
                     (double)(b.ru_utime.tv_usec - a.ru_utime.tv_usec) / 1e6 +
                     (double)(b.ru_stime.tv_usec - a.ru_stime.tv_usec) / 1e6;
        double pct = 100.0 * cpu / ((double)(t1 - t0) / 1e9);
        write_full(res[1], &pct, sizeof pct);
        ew_bus_close(bus);
        _exit(0);
    }
    close(res[1]);
    double pct;
    read_full(res[0], &pct, sizeof pct);
    close(res[0]);
    wait_child(c, "idle consumer");
    return pct;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void cleanup(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (dir[0] && system(cmd) != 0) fprintf(stderr, "bench_sqlite_bus: could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ew-bench-sqlite-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) die("mkdtemp", strerror(errno));
    atexit(cleanup);
    bool only_idle = argc > 1 && strcmp(argv[1], "idle") == 0;
    bool only_pickup = argc > 1 && strcmp(argv[1], "pickup") == 0;
    bool only_latency = argc > 1 && strcmp(argv[1], "latency") == 0;
    if (argc > 1 && strcmp(argv[1], "e2e") == 0) { /* for profiling: the bus's rounds only */
        for (int r = 0; r < ROUNDS; r++) {
            double pc = 0, b = bus_round(&pc);
            printf("publish_to_handled %.0f events/s, %.1f per commit\n", b, pc);
        }
        return 0;
    }
    if (!only_idle && !only_pickup && !only_latency) {
        double bus_best = 0, raw_best = 0, per_commit = 0;
        for (int r = 0; r < ROUNDS; r++) {
            double pc = 0, b = bus_round(&pc);
            if (b > bus_best) bus_best = b;
            per_commit = per_commit > pc ? per_commit : pc;
            double w = raw_round(pc >= 1 ? (int)(pc + 0.5) : 1, 1);
            if (w > raw_best) raw_best = w;
        }
        printf("# %d publishing threads, %.1f events per commit (group commit), every commit "
               "synced\n",
               PUB_THREADS, per_commit);
        printf("bench: bus.sqlite.raw_append_read %.0f events/s\n", raw_best);
        printf("bench: bus.sqlite.publish_to_handled %.0f events/s ratio=%.2f "
               "baseline=bus.sqlite.raw_append_read\n",
               bus_best, bus_best / raw_best);
    }
    if (!only_idle && !only_pickup) {
        double p50, p99, max;
        latency(&p50, &p99, &max);
        printf("bench: bus.sqlite.latency.p50 %.3f ms\n", p50);
        printf("bench: bus.sqlite.latency.p99 %.3f ms\n", p99);
        printf("bench: bus.sqlite.latency.max %.3f ms\n", max);
    }
    if (!only_idle && !only_latency) {
        double p50, p99, max;
        pickup(&p50, &p99, &max);
        printf("bench: bus.sqlite.pickup.p50 %.3f ms\n", p50);
        printf("bench: bus.sqlite.pickup.p99 %.3f ms\n", p99);
        printf("bench: bus.sqlite.pickup.max %.3f ms\n", max);
    }
    if (!only_pickup && !only_latency) printf("bench: bus.sqlite.idle_cpu %.2f %%\n", idle_cpu());
    return 0;
}

#else
#include <stdio.h>

int main(void)
{
    printf("# bus.sqlite: skipped (this build has no sqlite bus)\n");
    return 0;
}
#endif
