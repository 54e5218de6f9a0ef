/* Benchmark of group commit (docs/store.md): small transactions — one row into a table and one
 * into another, as a handler and its inbox record do — on one store handle:
 *
 *   store.BACKEND.txn.1_thread      one thread, each transaction committed on its own: baseline
 *   store.BACKEND.txn.8_threads     eight threads sharing the handle: their commits chain
 *   store.BACKEND.txn.held_64       one thread holding the handle, released every 64 (as a bus
 *                                   worker does with a batch of deliveries)
 *
 * in transactions per second. SQLite in a folder under $TMPDIR; PostgreSQL when EW_PG_URL names
 * a database (`make bench` runs it durable: a commit waits for fsync). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/store.h"
#include "store/batch.h"

#define SECONDS 1.0
#define THREADS 8
#define HOLD 64

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_txn: %s: %s\n", what, msg);
    exit(1);
}

static void exec(ew_txn *t, const char *sql, const char *const *p, size_t n)
{
    ew_error err = {0};
    if (ew_txn_exec(t, sql, p, n, NULL, &err)) die(sql, err.msg);
}

/* One transaction: a row and its record, as a handler writing in the inbox's transaction. */
static void one(ew_store *s, const char *tag, long i)
{
    char id[EW_UUID_LEN + 1], seq[32];
    ew_uuid7(id);
    snprintf(seq, sizeof seq, "%s-%ld", tag, i);
    ew_txn *t;
    ew_error err = {0};
    if (ew_store_begin(s, &t, &err)) die("begin", err.msg);
    const char *p[] = {id, seq};
    exec(t, "INSERT INTO event_store.bench_rows (id, payload) VALUES ($1, $2)", p, 2);
    exec(t, "INSERT INTO event_store.bench_seen (id) VALUES ($1)", p, 1);
    if (ew_txn_commit(t, &err)) die("commit", err.msg);
}

typedef struct runner {
    pthread_t th;
    ew_store *s;
    int index, hold;
    int64_t until_ns;
    long n;
} runner;

static void *run(void *arg)
{
    runner *r = arg;
    char tag[16];
    snprintf(tag, sizeof tag, "t%d", r->index);
    ew_error err = {0};
    while (ew_mono_ns() < r->until_ns) {
        if (r->hold && ew__store_hold(r->s, &err)) die("hold", err.msg);
        int k = r->hold ? r->hold : 1;
        for (int i = 0; i < k; i++)
            one(r->s, tag, r->n++);
        if (r->hold && ew__store_release(r->s, &err)) die("release", err.msg);
    }
    return NULL;
}

static double measure(ew_store *s, int threads, int hold)
{
    runner r[THREADS];
    int64_t t0 = ew_mono_ns(), until = t0 + (int64_t)(SECONDS * 1e9);
    for (int i = 0; i < threads; i++) {
        r[i] = (runner){.s = s, .index = i, .hold = hold, .until_ns = until};
        if (pthread_create(&r[i].th, NULL, run, &r[i])) die("thread", "cannot start");
    }
    long n = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(r[i].th, NULL);
        n += r[i].n;
    }
    return n / ((ew_mono_ns() - t0) / 1e9);
}

static void bench(const char *backend, const char *url)
{
    ew_store *s;
    ew_error err = {0};
    ew_store_options o = {.url = url};
    if (ew_store_open(&s, &o, &err)) die("open", err.msg);
    ew_txn *t;
    if (ew_store_begin(s, &t, &err)) die("begin", err.msg);
    exec(t, "DROP TABLE IF EXISTS event_store.bench_rows", NULL, 0);
    exec(t, "DROP TABLE IF EXISTS event_store.bench_seen", NULL, 0);
    exec(t, "CREATE TABLE event_store.bench_rows (id TEXT PRIMARY KEY, payload TEXT NOT NULL)",
         NULL, 0);
    exec(t, "CREATE TABLE event_store.bench_seen (id TEXT PRIMARY KEY)", NULL, 0);
    if (ew_txn_commit(t, &err)) die("commit", err.msg);
    double base = measure(s, 1, 0), many = measure(s, THREADS, 0), held = measure(s, 1, HOLD);
    printf("bench: store.%s.txn.1_thread %.0f txn/s ratio=1.00 baseline=store.%s.txn.1_thread\n",
           backend, base, backend);
    printf("bench: store.%s.txn.%d_threads %.0f txn/s ratio=%.2f baseline=store.%s.txn.1_thread\n",
           backend, THREADS, many, many / base, backend);
    printf("bench: store.%s.txn.held_%d %.0f txn/s ratio=%.2f baseline=store.%s.txn.1_thread\n",
           backend, HOLD, held, held / base, backend);
    fflush(stdout);
    if (ew_store_begin(s, &t, &err)) die("begin", err.msg);
    exec(t, "DROP TABLE event_store.bench_rows", NULL, 0);
    exec(t, "DROP TABLE event_store.bench_seen", NULL, 0);
    if (ew_txn_commit(t, &err)) die("commit", err.msg);
    ew_store_close(s);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[512], url[600], cmd[700];
    snprintf(dir, sizeof dir, "%s/ew-bench-txn-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) die("mkdtemp", dir);
    snprintf(url, sizeof url, "sqlite:%s/txn.db", dir);
    bench("sqlite", url);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_txn: cannot remove %s\n", dir);
    const char *pg = getenv("EW_PG_URL");
    if (pg && *pg)
        bench("postgres", pg);
    else
        printf("# store.postgres.txn: skipped (EW_PG_URL unset)\n");
    return 0;
}
