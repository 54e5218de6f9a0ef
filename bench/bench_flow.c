/* Benchmark of the whole system: the registration flow through the five services as processes
 * (started with `ewctl up`, as a user does), from the HTTP request to the UserRegistration saga's
 * completion (profile, preferences, welcome email, analytics), on the SQLite bus, Redis, Kafka
 * and RabbitMQ:
 *
 *   flow.registration.BACKEND          registrations completed per second: N_USERS registered by
 *                                      CLIENTS keep-alive HTTP clients at once, from the first
 *                                      request to the last saga finished
 *   flow.registration.BACKEND.p50/p99  at 100 registrations/s offered for 3 s: from sending the
 *                                      request to the saga's finished_at
 *
 * Passwords are hashed with AUTH_PASSWORD_HASH=min here: the interactive limits cost about 0.1 s
 * of a core per registration by design and would measure libsodium, not the flow (the first
 * figure below says what they cost on this machine). There is no raw baseline for a flow of five
 * processes; the figures stand alone. The brokers come from $EW_REDIS_URL, $EW_KAFKA_URL and
 * $EW_RABBITMQ_URL (`make bench` starts them); a broker without its variable is skipped. An
 * argument runs that backend alone. The services and ewctl are found beside this executable; each
 * run's state goes into a folder under $TMPDIR (default /tmp), all removed at the end. */
#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define N_USERS 2000
#define CLIENTS 8
#define RATE 100
#define RATE_SECONDS 3
#define WAIT_S 120

static char bindir[PATH_MAX], workdir[PATH_MAX], auth_url[256];
/* Every run's folders, removed when the benchmark ends: removed between runs, their files would
 * slow the next run's file creation (ext4 without a journal skips inodes freed in the last
 * minutes, one by one), which is the file system's cost, not the flow's. */
static char workdirs[16][PATH_MAX / 16];
static int nworkdirs;

static void keep_for_cleanup(const char *dir)
{
    if (nworkdirs < 16 && strlen(dir) < sizeof workdirs[0]) strcpy(workdirs[nworkdirs++], dir);
}

static void die(const char *what)
{
    fprintf(stderr, "bench_flow: %s\n", what);
    exit(1);
}

static size_t discard(char *p, size_t sz, size_t n, void *ud)
{
    return sz * n;
}

/* One registration on the client's connection; 0 when it was answered 201. */
static int register_one(CURL *c, long seq, const char *tag)
{
    char body[256], url[300];
    snprintf(body, sizeof body,
             "{\"username\":\"u%s%ld\",\"email\":\"u%s%ld@example.com\",\"password\":\"bench "
             "password\"}",
             tag, seq, tag, seq);
    snprintf(url, sizeof url, "%s/auth/register", auth_url);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    long code = 0;
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    return code == 201 ? 0 : -1;
}

/* ---- the system ------------------------------------------------------------------------------ */

static void up(const char *backend, const char *ns)
{
    char cmd[PATH_MAX * 2];
    const char *tmp = getenv("TMPDIR");
    snprintf(workdir, sizeof workdir, "%s/ew-bench-flow-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(workdir) || chdir(workdir) != 0) die("no work folder");
    keep_for_cleanup(workdir);
    /* The mail folder stands in for an SMTP server (what a deployment uses): in memory where
     * there is /dev/shm, so that a file system busy freeing inodes does not decide the figure
     * (notification-service writes an .eml per message; bench/README.md). */
    char maildir[64] = "/dev/shm/ew-bench-mail-XXXXXX";
    if (mkdtemp(maildir)) {
        keep_for_cleanup(maildir);
        setenv("MAIL_DIR", maildir, 1);
    } else {
        unsetenv("MAIL_DIR");
    }
    setenv("EVENT_BUS_TYPE", backend, 1);
    setenv("REDIS_CHANNEL_PREFIX", ns, 1); /* each run in a namespace of its own */
    setenv("KAFKA_TOPIC_PREFIX", ns, 1);
    setenv("KAFKA_CONSUMER_GROUP", ns, 1);
    setenv("RABBITMQ_EXCHANGE", ns, 1);
    setenv("HTTP_PORT", "0", 1);
    setenv("AUTH_PASSWORD_HASH", "min", 1);
    /* N_USERS registrations from one address: a load test raises the abuse limit explicitly */
    setenv("AUTH_REGISTRATIONS_PER_ADDRESS", "1000000", 1);
    setenv("EW_SERVICES_DIR", bindir, 1);
    snprintf(cmd, sizeof cmd, "%s/ewctl up --timeout 60", bindir);
    FILE *p = popen(cmd, "r");
    if (!p) die("cannot run ewctl up");
    char line[512];
    auth_url[0] = '\0';
    while (fgets(line, sizeof line, p))
        if (strncmp(line, "auth-service ", 13) == 0)
            snprintf(auth_url, sizeof auth_url, "%.*s", (int)strcspn(line + 13, "\n"), line + 13);
    if (pclose(p) != 0 || !auth_url[0]) die("ewctl up failed");
}

static void down(void)
{
    char cmd[PATH_MAX * 2];
    snprintf(cmd, sizeof cmd, "%s/ewctl down >/dev/null", bindir);
    if (system(cmd) != 0) fprintf(stderr, "bench_flow: ewctl down failed\n");
    if (chdir("/") != 0) die("cannot leave the work folder");
}

static void cleanup(void)
{
    for (int i = 0; i < nworkdirs; i++) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf %s", workdirs[i]);
        if (system(cmd) != 0) fprintf(stderr, "bench_flow: cleanup failed\n");
    }
}

/* The saga state, read-only, beside the engine (no write lock taken). */
static sqlite3 *open_sagas(void)
{
    sqlite3 *db;
    if (sqlite3_open_v2("var/eventwire.db", &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        die("cannot open var/eventwire.db");
    sqlite3_busy_timeout(db, 5000);
    return db;
}

/* Completed registrations so far, and when the last one finished. */
static long completed(sqlite3 *db, int64_t *last_us)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*), max(finished_at) FROM sagas WHERE saga_type = "
                           "'UserRegistration' AND status = 'completed'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    long n = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int64(st, 0);
        const unsigned char *t = sqlite3_column_text(st, 1);
        if (last_us && t) ew_time_parse((const char *)t, last_us);
    }
    sqlite3_finalize(st);
    return n;
}

static long await_completed(sqlite3 *db, long want, int64_t *last_us)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_S * 1000000000;
    long n;
    while ((n = completed(db, last_us)) < want && ew_mono_ns() < end)
        usleep(20000);
    return n;
}

/* ---- throughput ------------------------------------------------------------------------------ */

typedef struct client {
    pthread_t th;
    int index;
    atomic_long *next;
    long errors;
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    CURL *h = curl_easy_init();
    for (;;) {
        long seq = atomic_fetch_add(c->next, 1);
        if (seq >= N_USERS) break;
        if (register_one(h, seq, "t")) c->errors++;
    }
    curl_easy_cleanup(h);
    return NULL;
}

static double throughput(const char *backend)
{
    sqlite3 *db = open_sagas();
    atomic_long next = 0;
    client cl[CLIENTS];
    int64_t t0 = ew_now_us();
    for (int i = 0; i < CLIENTS; i++) {
        cl[i] = (client){.index = i, .next = &next};
        pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    }
    long errors = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(cl[i].th, NULL);
        errors += cl[i].errors;
    }
    int64_t sent_us = ew_now_us() - t0, last = 0;
    long n = await_completed(db, N_USERS - errors, &last);
    sqlite3_close(db);
    if (errors) printf("# flow.registration.%s: %ld registrations refused\n", backend, errors);
    if (n < N_USERS - errors) {
        printf("# flow.registration.%s: only %ld of %ld sagas completed\n", backend, n,
               N_USERS - errors);
        return 0;
    }
    printf("# flow.registration.%s: %d requests answered at %.0f/s\n", backend, N_USERS,
           N_USERS / (sent_us / 1e6));
    return (double)n / ((last - t0) / 1e6);
}

/* ---- latency at a moderate load -------------------------------------------------------------- */

typedef struct sent {
    char user[64];
    int64_t at_us;
} sent;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void latency(const char *backend, double *p50, double *p99)
{
    const int n = RATE * RATE_SECONDS;
    sent *s = calloc((size_t)n, sizeof *s);
    CURL *h = curl_easy_init();
    int64_t start = ew_mono_ns();
    long before = 0;
    sqlite3 *db = open_sagas();
    before = completed(db, NULL);
    for (int i = 0; i < n; i++) {
        int64_t due = start + (int64_t)i * (1000000000 / RATE), now = ew_mono_ns();
        if (due > now) usleep((useconds_t)((due - now) / 1000));
        s[i].at_us = ew_now_us();
        if (register_one(h, i, "l")) die("a registration was refused");
    }
    curl_easy_cleanup(h);
    if (await_completed(db, before + n, NULL) < before + n) die("sagas did not complete");
    /* each user's saga: its key is the user id, which the answer gave; match by start order */
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT started_at, finished_at FROM sagas WHERE saga_type = "
                           "'UserRegistration' ORDER BY started_at DESC LIMIT ?1",
                           -1, &st, NULL) != SQLITE_OK)
        die("query");
    sqlite3_bind_int(st, 1, n);
    int64_t *lat = calloc((size_t)n, sizeof *lat);
    int k = n - 1;
    while (sqlite3_step(st) == SQLITE_ROW && k >= 0) {
        int64_t fin = 0;
        ew_time_parse((const char *)sqlite3_column_text(st, 1), &fin);
        lat[k] = fin - s[k].at_us;
        k--;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    *p50 = lat[n / 2] / 1000.0;
    *p99 = lat[(n * 99) / 100] / 1000.0;
    free(lat);
    free(s);
    (void)backend;
}

static void run(const char *backend)
{
    char ns[32], id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(ns, sizeof ns, "flow%.8s", id + 24);
    up(backend, ns);
    double rate = throughput(backend);
    double p50 = 0, p99 = 0;
    latency(backend, &p50, &p99);
    down();
    printf("bench: flow.registration.%s %.0f registrations/s\n", backend, rate);
    printf("bench: flow.registration.%s.p50 %.3f ms\n", backend, p50);
    printf("bench: flow.registration.%s.p99 %.3f ms\n", backend, p99);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", bindir, sizeof bindir - 1);
    if (n <= 0) die("where am I?");
    bindir[n] = '\0';
    *strrchr(bindir, '/') = '\0';
    if (sodium_init() < 0) die("libsodium");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* what the deployed password hashing costs, for scale */
    char hash[crypto_pwhash_STRBYTES];
    int64_t t0 = ew_mono_ns();
    if (crypto_pwhash_str(hash, "bench password", 14, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
        die("pwhash");
    printf("# flow: one crypto_pwhash_str at the interactive limits takes %.0f ms here; the "
           "services below hash with AUTH_PASSWORD_HASH=min\n",
           (ew_mono_ns() - t0) / 1e6);
    const char *only = argc > 1 ? argv[1] : NULL;
    static const struct {
        const char *backend, *url_var, *setting; /* where the broker is, and who says so */
    } backends[] = {
        {"sqlite", NULL, NULL},
        {"redis", "EW_REDIS_URL", "REDIS_EVENT_URL"},
        {"kafka", "EW_KAFKA_URL", "KAFKA_BOOTSTRAP_SERVERS"},
        {"rabbitmq", "EW_RABBITMQ_URL", "RABBITMQ_URL"},
    };
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (only && strcmp(only, backends[i].backend) != 0) continue;
        const char *url = backends[i].url_var ? getenv(backends[i].url_var) : NULL;
        if (backends[i].url_var && !url) {
            printf("# flow.registration.%s: skipped (%s unset)\n", backends[i].backend,
                   backends[i].url_var);
            continue;
        }
        if (url) setenv(backends[i].setting, url, 1);
        run(backends[i].backend);
    }
    cleanup();
    curl_global_cleanup();
    return 0;
}
