/* eventwire — which blocks SQLite allocates, as LeakSanitizer would count them: a tool for the
 * open report of docs/fuzzing.md (5,312 bytes "inside SQLite"), built in the sanitizer builds as
 * fuzz-sqlite-blocks (not a CTest entry).
 *
 *   fuzz-sqlite-blocks [FOLDER]      (FOLDER: where its scratch database goes; default /tmp)
 *
 * Through the sanitizer's allocation hooks it prints, for each statement, the size of every block
 * SQLite asked malloc for while the statement ran, in order: an ATTACH as the SQLite store opens
 * its file, statements that open an ephemeral table (an IN list or subquery, DISTINCT, ORDER BY
 * with LIMIT, export-service's sweeper query) and ones that do not; then the size malloc gets for
 * sqlite3_malloc(289) to sqlite3_malloc(296). It ends with "ephemeral b-tree: ..." naming the
 * blocks that open an ephemeral table's B-tree before its first page and their sum, and exits 1
 * when a statement that should open one did not show them.
 *
 *   fuzz-sqlite-blocks --threads SECONDS [FOLDER]
 *
 * asks LeakSanitizer whether it takes such a B-tree for a leak while a thread opens it: for
 * SECONDS, two slots run threads one after the other (each started, running the sweeper query for
 * 0 to 20 ms, joined), on a connection of the slot's that the main thread holds as the service
 * holds the sweeper's, while another thread asks for leak checks without a
 * pause (__lsan_do_recoverable_leak_check; each report goes to stderr with its stacks). Nothing
 * here leaks: a report is LeakSanitizer's mistake. Prints "threads: N checks, K with a report, T
 * threads, Q queries". */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* sanitizer_common's (declared here: gcc has no header for it) */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

#define MAXSEQ 4096
static atomic_int recording;
static size_t seq[MAXSEQ];
static atomic_int nseq;
static pthread_t recorder;

static void on_malloc(const volatile void *p, size_t size)
{
    (void)p;
    if (!atomic_load(&recording) || !pthread_equal(pthread_self(), recorder)) return;
    int i = atomic_fetch_add(&nseq, 1);
    if (i < MAXSEQ) seq[i] = size;
}

static void on_free(const volatile void *p)
{
    (void)p;
}

static void start(void)
{
    atomic_store(&nseq, 0);
    recorder = pthread_self();
    atomic_store(&recording, 1);
}

static int stop(void)
{
    atomic_store(&recording, 0);
    int n = atomic_load(&nseq);
    return n < MAXSEQ ? n : MAXSEQ;
}

/* The index in seq[0..n) where the blocks of an ephemeral B-tree's opening start (the B-tree, its
 * shared part, the pager, its scratch page, the page cache, then the page cache's hash table at the
 * first page), or -1. */
static const size_t ephemeral[] = {80, 160, 784, 4112, 176, 2056};
#define NEPHEMERAL (sizeof ephemeral / sizeof ephemeral[0])

static int find_ephemeral(int n)
{
    for (int i = 0; i + (int)NEPHEMERAL <= n; i++)
        if (!memcmp(seq + i, ephemeral, sizeof ephemeral)) return i;
    return -1;
}

/* Runs sql, prints the sizes of what SQLite allocated; returns whether an ephemeral B-tree's
 * opening was among them. */
static int run(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    start();
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    int n = stop();
    printf("%.72s%s\n  ", sql, strlen(sql) > 72 ? "..." : "");
    for (int i = 0; i < n; i++)
        printf("%zu%s", seq[i], i + 1 < n ? " " : "");
    if (rc) printf("\n  error: %s", msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    int at = find_ephemeral(n);
    printf("\n  ephemeral b-tree opened: %s\n", at >= 0 ? "yes" : "no");
    return at >= 0;
}

/* ---- --threads ---------------------------------------------------------------------------- */

int __lsan_do_recoverable_leak_check(void);
static atomic_int stopping;
static atomic_long checks, reported, nthreads, queries;

static void *query_thread(void *conn)
{
    sqlite3 *db = conn;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT export_id FROM export_requests WHERE status = 'pending'"
                           " AND deadline_at <= ?1 ORDER BY deadline_at LIMIT 100",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite-blocks: %s\n", sqlite3_errmsg(db));
        exit(2);
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long ms = rand() % 20;
    do {
        sqlite3_bind_text(st, 1, "9999", -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW)
            continue;
        sqlite3_reset(st);
        atomic_fetch_add(&queries, 1);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (!atomic_load(&stopping) &&
             (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
    sqlite3_finalize(st);
    return NULL;
}

static void *checker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        atomic_fetch_add(&checks, 1);
        if (__lsan_do_recoverable_leak_check()) atomic_fetch_add(&reported, 1);
    }
    return NULL;
}

static int threads(int seconds, const char *folder)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/sqlite-blocks-%ld.db", folder, (long)getpid());
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) ||
        sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; CREATE TABLE export_requests (export_id TEXT"
                     " PRIMARY KEY, status TEXT NOT NULL, deadline_at TEXT NOT NULL);"
                     " INSERT INTO export_requests VALUES ('a', 'pending', '2026'),"
                     " ('b', 'pending', '2025'), ('c', 'failed', '2024')",
                     NULL, NULL, NULL)) {
        fprintf(stderr, "sqlite-blocks: %s: %s\n", path, sqlite3_errmsg(db));
        return 2;
    }
    sqlite3 *slot[2];
    for (int i = 0; i < 2; i++)
        if (sqlite3_open_v2(path, &slot[i], SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) return 2;
    pthread_t ck;
    if (pthread_create(&ck, NULL, checker, NULL)) return 2;
    time_t end = time(NULL) + seconds;
    while (time(NULL) < end) {
        pthread_t a, b;
        if (pthread_create(&a, NULL, query_thread, slot[0])) return 2;
        if (pthread_create(&b, NULL, query_thread, slot[1])) return 2;
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        atomic_fetch_add(&nthreads, 2);
    }
    atomic_store(&stopping, 1);
    pthread_join(ck, NULL);
    sqlite3_close(slot[0]);
    sqlite3_close(slot[1]);
    sqlite3_close(db);
    unlink(path);
    printf("threads: %ld checks, %ld with a report, %ld threads, %ld queries\n",
           atomic_load(&checks), atomic_load(&reported), atomic_load(&nthreads),
           atomic_load(&queries));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--threads"))
        return threads(atoi(argv[2]), argc > 3 ? argv[3] : "/tmp");
    char path[4096];
    snprintf(path, sizeof path, "%s/sqlite-blocks-%ld.db", argc > 1 ? argv[1] : "/tmp",
             (long)getpid());
    sqlite3_initialize();
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    sqlite3 *db;
    if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL)) {
        fprintf(stderr, "sqlite-blocks: cannot open\n");
        return 2;
    }
    char attach[4200];
    snprintf(attach, sizeof attach, "ATTACH DATABASE '%s' AS event_store", path);
    int bad = 0;
    run(db, attach);
    run(db, "CREATE TABLE event_store.export_requests (export_id TEXT PRIMARY KEY,"
            " status TEXT NOT NULL, deadline_at TEXT NOT NULL, expires_at TEXT, file_name TEXT)");
    run(db, "INSERT INTO event_store.export_requests VALUES ('a', 'pending', '2026', NULL, NULL),"
            " ('b', 'completed', '2025', '2025', 'f'), ('c', 'pending', '2024', NULL, NULL)");
    /* export-service's sweeper, every EXPORT_SWEEP_MS (no index on deadline_at) */
    bad |= !run(db, "SELECT export_id FROM event_store.export_requests WHERE status = 'pending'"
                    " AND deadline_at <= '2027' ORDER BY deadline_at LIMIT 100");
    bad |= !run(db, "SELECT DISTINCT status FROM event_store.export_requests");
    bad |= !run(db, "SELECT * FROM event_store.export_requests WHERE status IN ('a', 'b', 'c')");
    bad |= !run(db, "DELETE FROM event_store.export_requests WHERE export_id IN (SELECT export_id"
                    " FROM event_store.export_requests WHERE deadline_at < '2025' ORDER BY"
                    " export_id LIMIT 10)");
    /* none: a lookup by the primary key */
    bad |= run(db, "SELECT * FROM event_store.export_requests WHERE export_id = 'b'");
    sqlite3_close(db);
    unlink(path);
    for (int n = 289; n <= 296; n++) {
        start();
        void *p = sqlite3_malloc(n);
        int k = stop();
        printf("sqlite3_malloc(%d): malloc(%zu)\n", n, k ? seq[0] : (size_t)0);
        sqlite3_free(p);
    }
    size_t sum = 0;
    printf("ephemeral b-tree: ");
    for (size_t i = 0; i + 1 < NEPHEMERAL; i++) {
        printf("%s%zu", i ? " + " : "", ephemeral[i]);
        sum += ephemeral[i];
    }
    printf(" = %zu bytes before its first page (then %zu for the page cache's hash table)\n", sum,
           ephemeral[NEPHEMERAL - 1]);
    return bad;
}
