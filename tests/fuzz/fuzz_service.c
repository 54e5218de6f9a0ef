/* eventwire — fuzzes the five services past reading the request: their real route tables and
 * handlers, their database work and the events they publish and handle (fuzz_services.h: each
 * service opened in this process by the runtime, on a memory bus with temporary databases).
 *
 * The first byte picks the service (fuzz_services.h) and what the rest is:
 *  - a lowercase letter (or any byte with 0x20 set): an HTTP request in the form of
 *    fuzz_request.h, run through the service's HTTP handling as libmicrohttpd hands a parsed
 *    request over (ew__http_handle): routing, the token check of guarded routes, the body limit
 *    (4096 bytes), the JSON body, the handler and its transaction; then the events it published
 *    are handled;
 *  - an uppercase letter (0x20 clear): an event, as CloudEvents structured JSON or "TYPE\nDATA",
 *    published on the service's bus, so that the service's own handlers (and the GDPR answers of
 *    the runtime) handle it against its database, and whatever they publish in turn.
 * "$U", "$A", "$T", "$S" stand for the user's and the admin's ids and tokens.
 *
 * Properties: every request is answered with a status in 100..599, never 500 (bad input gets a
 * clear error, and nothing here fails but the input); a 405 names what is allowed; every answer
 * but /metrics' is a JSON object; with the user's token, nothing under the admin's id answers
 * 2xx; after every input the service settles (its events handled) within 20 s. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <time.h>
#include "fuzz_request.h"
#include "fuzz_services.h"

static fuzz_services services;
/* Inputs since the services were opened: they start afresh every RENEW_EVERY inputs, so that
 * what inputs did to the two users (deleted them, revoked their tokens) does not last. */
static unsigned runs;
#define RENEW_EVERY 1024

static void close_services(void)
{
    fuzz_services_close(&services);
}

/* FUZZ_LEAK_CHECK_THREAD=MS (ASan builds): a thread of its own asks LeakSanitizer for a leak
 * check every 0 to MS milliseconds, at whatever point the harness and the services' background
 * threads are, and aborts on a report (libFuzzer keeps the input being run). libFuzzer checks
 * only between inputs, and only after one that made more mallocs than frees; this samples every
 * moment, to widen any window in which memory in use is out of LeakSanitizer's sight
 * (docs/fuzzing.md, the open report). Off by default: each check stops every thread for the whole
 * heap's scan. */
__attribute__((weak)) int __lsan_do_recoverable_leak_check(void);
static atomic_ulong leak_checks;
/* Held by the checker during a check, and by the harness while it closes and reopens the services
 * and for half a second after: a thread just created is not yet in LeakSanitizer's registry, and a
 * check then reports the block pthread_getattr_np allocated for ASan's own bookkeeping of it
 * (AsanThread::ThreadStart), a false report of LeakSanitizer's that is not the question here. */
static pthread_mutex_t leak_check_lock = PTHREAD_MUTEX_INITIALIZER;
static bool leak_check_thread;

static void *leak_checker(void *arg)
{
    unsigned ms = (unsigned)(uintptr_t)arg, seed = (unsigned)time(NULL);
    for (;;) {
        long wait_us = ms ? (long)(rand_r(&seed) % (ms * 1000u)) : 0;
        struct timespec ts = {wait_us / 1000000, (wait_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
        unsigned long n = atomic_fetch_add(&leak_checks, 1) + 1;
        pthread_mutex_lock(&leak_check_lock);
        int leaked = __lsan_do_recoverable_leak_check();
        pthread_mutex_unlock(&leak_check_lock);
        if (leaked) {
            fprintf(stderr, "leak check %lu of FUZZ_LEAK_CHECK_THREAD found a leak\n", n);
            abort();
        }
        if (n % 1000 == 0) fprintf(stderr, "FUZZ_LEAK_CHECK_THREAD: %lu leak checks\n", n);
    }
    return NULL;
}

/* FUZZ_EPHEMERAL_THREAD=1: a thread runs export-service's sweeper query (sweeper.c), which opens
 * an ephemeral table's B-tree each time (no index on deadline_at), without a pause on a connection
 * of its own to export-service's database as first opened, so that a leak check from any thread
 * meets a B-tree being opened far more often than the sweeper's four a second make it happen (the
 * open report's 5,312 bytes are such a B-tree before its first page: docs/fuzzing.md). */
static void *ephemeral_opener(void *arg)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(arg, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(db, 10000) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT export_id FROM export_requests WHERE status = 'pending'"
                           " AND deadline_at <= ?1 ORDER BY deadline_at LIMIT 100",
                           -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "FUZZ_EPHEMERAL_THREAD: %s\n", sqlite3_errmsg(db));
        abort();
    }
    for (unsigned long n = 1;; n++) {
        sqlite3_bind_text(st, 1, "9999", -1, SQLITE_STATIC);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            continue;
        if (rc != SQLITE_DONE) {
            fprintf(stderr, "FUZZ_EPHEMERAL_THREAD: %s\n", sqlite3_errmsg(db));
            abort();
        }
        sqlite3_reset(st);
        if (n % 100000 == 0) fprintf(stderr, "FUZZ_EPHEMERAL_THREAD: %lu queries\n", n);
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_services_open(&services, NULL);
    atexit(close_services);
    const char *every = getenv("FUZZ_LEAK_CHECK_THREAD");
    if (every && __lsan_do_recoverable_leak_check) {
        pthread_t th;
        if (pthread_create(&th, NULL, leak_checker, (void *)(uintptr_t)strtoul(every, NULL, 10)))
            abort();
        leak_check_thread = true;
        pthread_detach(th);
    }
    if (getenv("FUZZ_EPHEMERAL_THREAD")) {
        static char path[sizeof services.dir + 32];
        snprintf(path, sizeof path, "%s/export-service.db", services.dir);
        pthread_t th;
        if (pthread_create(&th, NULL, ephemeral_opener, path)) abort();
        pthread_detach(th);
    }
    return 0;
}

static void check_answer(const fuzz_request *r, const ew__http_output *out)
{
    const char *path = r->in.path;
    if (out->status < 100 || out->status > 599 || out->status == 500 ||
        (out->status == 405 && !out->allow[0]))
        fprintf(stderr, "answer %d to %s %s: %.*s\n", out->status, r->in.method, path,
                (int)(out->body.len > 500 ? 500 : out->body.len), out->body.data);
    FUZZ_CHECK(out->status >= 100 && out->status <= 599);
    FUZZ_CHECK(out->status != 500);
    if (out->status == 405) FUZZ_CHECK(out->allow[0] != '\0');
    /* the user's token never reaches the admin's resources */
    const char *bearer = fuzz_request_header(r, "Authorization");
    if (bearer && strstr(bearer, services.user_token) && strstr(path, services.admin_id) &&
        out->status >= 200 && out->status < 300) {
        fprintf(stderr, "the user reached %s %s: %d\n", r->in.method, path, out->status);
        FUZZ_CHECK(!"the user's token reached the admin's resources");
    }
    if (!out->body.len || !strcmp(path, "/metrics")) return;
    ew_arena a;
    ew_json *v = NULL;
    ew_error err = {0};
    ew_arena_init(&a, NULL, 0);
    int prc = ew_json_parse(&v, out->body.data, out->body.len, NULL, &a, &err);
    if (prc)
        fprintf(stderr, "answer %d is not JSON (%s): %.*s\n", out->status, err.msg,
                (int)(out->body.len > 300 ? 300 : out->body.len), out->body.data);
    FUZZ_CHECK(prc == 0 && (v->kind == EW_JSON_OBJECT || v->kind == EW_JSON_ARRAY));
    ew_arena_release(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (++runs % RENEW_EVERY == 0) {
        if (leak_check_thread) pthread_mutex_lock(&leak_check_lock);
        fuzz_services_close(&services);
        fuzz_services_open(&services, NULL);
        if (leak_check_thread) {
            nanosleep(&(struct timespec){0, 500000000}, NULL); /* the new threads registered */
            pthread_mutex_unlock(&leak_check_lock);
        }
    }
    /* fresh tokens, so that a logout or a role change by an earlier input does not end them */
    fuzz_services_token(&services, services.user_id, false, services.user_token);
    fuzz_services_token(&services, services.admin_id, true, services.admin_token);
    int which = fuzz_service_of(data[0]);
    bool http = data[0] & 0x20;
    size_t len;
    char *text = fuzz_services_expand(&services, data + 1, size - 1, &len);
    ew_error e = {0};
    if (http) {
        fuzz_request r;
        fuzz_request_parse(&r, text, len);
        ew__http_output out;
        int rc = fuzz_services_request(&services, which, &r.in, &out);
        FUZZ_CHECK(rc == 0);
        if (getenv("FUZZ_SERVICE_VERBOSE"))
            fprintf(stderr, "%s %s %s: %d %.*s\n", services.def[which].name, r.in.method, r.in.path,
                    out.status, (int)out.body.len, out.body.data);
        check_answer(&r, &out);
        ew_buf_release(&out.body);
    } else {
        ew_event *ev = NULL;
        int drc = fuzz_services_event(&services, &ev, text, len, &e);
        if (getenv("FUZZ_SERVICE_VERBOSE"))
            fprintf(stderr, "%s event: %s\n", services.def[which].name, drc ? e.msg : "ok");
        if (drc == 0) {
            int rc = fuzz_services_deliver(&services, which, ev, &e);
            if (rc) fprintf(stderr, "delivering: %s\n", e.msg);
            FUZZ_CHECK(rc == 0);
            ew_event_unref(ev);
        }
    }
    int rc = svc_settle(services.svc[which], 20000, &e);
    if (rc) fprintf(stderr, "settling: %s\n", e.msg);
    FUZZ_CHECK(rc == 0);
    free(text);
    return 0;
}
