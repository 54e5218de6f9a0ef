/* The fault tests of make soak (docs/reliability.md), each printing its figures as bench lines
 * (bench: soak.fault.NAME.BACKEND.FIGURE VALUE UNIT):
 *   broker-down    the broker down for --seconds while registrations keep coming: HTTP answers
 *                  (201, or 503 with Retry-After), memory stays bounded, and every accepted
 *                  registration completes once the broker is back;
 *   outbox-full    the broker down while registrations come faster than before: auth-service's
 *                  outbox fills up to OUTBOX_MAX_PENDING, past which each is answered 503 with
 *                  Retry-After and writes nothing; every accepted one completes after recovery;
 *   slow-consumer  notification-service runs 50 ms of every 5 s while registrations come at
 *                  20 a second, then catches up on the backlog: nobody's memory grows beyond
 *                  the in-flight window, and every welcome mail is sent;
 *   disk-full      the SQLite store on a full disk: a 1 MiB tmpfs in a mount namespace of its own
 *                  (skipped where unshare is not allowed), and write errors injected through an
 *                  SQLite VFS: clear errors, no committed event lost, integrity_check ok, and
 *                  appends work again once there is space. */
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"
#include "soak.h"
#include "svc_auth.h"

int soak_fault_main(const char *fault, const char *backend, int seconds, bool keep);

enum { AUTH, USER, NOTIFICATION, ANALYTICS, EXPORT };

/* ---- registrations offered at a rate, from a thread of their own --------------------------- */

typedef struct offer {
    soak_ctx *c;
    int rate;
    volatile int stop;
    pthread_t thread;
    pthread_mutex_t lock;
    int *serial; /* the registrations' numbering, shared by the offers of one test */
    long created, refused, no_answer, other, worst_other_status;
    double max_ms;
    char (*ids)[EW_UUID_LEN + 1]; /* the accepted ones' user ids */
    char (*emails)[48];
    size_t nids, cap;
} offer;

static void *offer_main(void *ud)
{
    offer *o = ud;
    int64_t step = 1000 / o->rate, next = soak_ms();
    while (!o->stop) {
        int64_t now = soak_ms();
        if (next > now) usleep((useconds_t)(next - now) * 1000);
        next += step;
        int n = ++*o->serial;
        char body[256], email[48];
        snprintf(email, sizeof email, "fault%06dz@example.com", n);
        snprintf(body, sizeof body,
                 "{\"username\":\"fault%06dz\",\"email\":\"%s\",\"password\":\"a password %d\"}", n,
                 email, n);
        soak_http r = soak_call(o->c, AUTH, "POST", "/auth/register", body, NULL, 15000);
        char id[EW_UUID_LEN + 1];
        pthread_mutex_lock(&o->lock);
        if (r.ms > o->max_ms) o->max_ms = r.ms;
        if (r.status == 201 && soak_member(&r, "user_id", id, sizeof id)) {
            o->created++;
            if (o->nids == o->cap) {
                o->cap = o->cap ? o->cap * 2 : 256;
                o->ids = realloc(o->ids, o->cap * sizeof *o->ids);
                o->emails = realloc(o->emails, o->cap * sizeof *o->emails);
            }
            snprintf(o->ids[o->nids], sizeof o->ids[0], "%s", id);
            snprintf(o->emails[o->nids++], sizeof o->emails[0], "%s", email);
        } else if (r.status == 503 && r.retry_after) {
            o->refused++;
        } else if (r.status == 0) {
            o->no_answer++;
        } else {
            o->other++;
            o->worst_other_status = r.status;
            soak_say("fault: registration answered %ld: %.200s", r.status, r.body);
        }
        pthread_mutex_unlock(&o->lock);
        soak_http_free(&r);
    }
    return NULL;
}

static void offer_start(offer *o, soak_ctx *c, int rate, int *serial)
{
    memset(o, 0, sizeof *o);
    o->c = c;
    o->serial = serial;
    o->rate = rate;
    pthread_mutex_init(&o->lock, NULL);
    pthread_create(&o->thread, NULL, offer_main, o);
}

static void offer_stop(offer *o)
{
    o->stop = 1;
    pthread_join(o->thread, NULL);
}

static void offer_free(offer *o)
{
    free(o->ids);
    free(o->emails);
    pthread_mutex_destroy(&o->lock);
}

/* How many welcome mails var/mail holds. */
static long welcome_mails(void)
{
    long n = 0;
    DIR *d = opendir("var/mail");
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.' || !strstr(e->d_name, ".eml")) continue;
        char path[400], text[8192];
        snprintf(path, sizeof path, "var/mail/%s", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t got = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[got] = '\0';
        if (strstr(text, "\nSubject: Welcome")) n++;
    }
    if (d) closedir(d);
    return n;
}

static long completed_registrations(void)
{
    return soak_count("eventwire.db",
                      "SELECT count(*) FROM event_store.sagas WHERE saga_type = 'UserRegistration' "
                      "AND status = 'completed'",
                      NULL);
}

/* Waits up to timeout_ms until want registrations completed and want welcome mails are there;
 * returns the milliseconds it took, or -1. */
static void sample(soak_ctx *c, long *peak);

/* peak (may be NULL): the services' memory sampled meanwhile. */
static int64_t await_delivery(soak_ctx *c, long *peak, long want, int64_t timeout_ms)
{
    int64_t t0 = soak_ms();
    while (soak_ms() - t0 < timeout_ms) {
        if (peak) sample(c, peak);
        if (completed_registrations() >= want && welcome_mails() >= want) return soak_ms() - t0;
        usleep(500000);
    }
    return -1;
}

static void rss_figures(soak_ctx *c, const long *base, const long *peak, long bound_kb)
{
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        char name[128];
        snprintf(name, sizeof name, "rss.%s.start", c->svc[i].name);
        soak_figure(c, name, base[i] / 1024.0, "MiB");
        snprintf(name, sizeof name, "rss.%s.peak", c->svc[i].name);
        soak_figure(c, name, peak[i] / 1024.0, "MiB");
        snprintf(name, sizeof name, "%s's memory stayed within %ld MiB of its start",
                 c->svc[i].name, bound_kb / 1024);
        soak_check_rss(c, peak[i] - base[i] <= bound_kb, name, "%.1f -> %.1f MiB", base[i] / 1024.0,
                       peak[i] / 1024.0);
    }
}

static void sample(soak_ctx *c, long *peak)
{
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        long kb = c->svc[i].pid ? soak_rss_kb(c->svc[i].pid) : -1;
        if (kb > peak[i]) peak[i] = kb;
    }
}

static int start_all(soak_ctx *c)
{
    for (int i = 0; i < SOAK_NSERVICES; i++)
        if (soak_service_start_retry(c, i, 60000)) {
            fprintf(stderr, "fault: %s did not start (%s/var/log/%s.log)\n", c->svc[i].name,
                    c->work, c->svc[i].name);
            return -1;
        }
    return 0;
}

/* Warm-up: a few registrations through the whole flow, so that every consumer runs. */
static int warm_up(soak_ctx *c, int *serial)
{
    offer o;
    offer_start(&o, c, 5, serial);
    sleep(2);
    offer_stop(&o);
    long n = o.created;
    offer_free(&o);
    if (n == 0 || await_delivery(c, NULL, n, 60000) < 0) {
        fprintf(stderr, "fault: the warm-up's %ld registrations did not complete\n", n);
        return -1;
    }
    return (int)n;
}

static void stop_all(soak_ctx *c)
{
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        int st = soak_service_stop(c, i);
        char what[128];
        snprintf(what, sizeof what, "%s stopped cleanly", c->svc[i].name);
        soak_check(c, st == 0, what, "exit status %d", st);
    }
    int reports = soak_sanitizer_reports(c);
    soak_figure(c, "sanitizer_reports", reports, "count");
    soak_check(c, reports == 0, "no sanitizer report", "%d", reports);
}

/* ---- the broker down ----------------------------------------------------------------------- */

static int broker_down(soak_ctx *c, int seconds)
{
    if (!strcmp(c->backend, "sqlite")) {
        fprintf(stderr, "fault: broker-down needs a broker (redis, rabbitmq, kafka)\n");
        return -1;
    }
    if (start_all(c)) return -1;
    int serial = 0;
    int warm = warm_up(c, &serial);
    if (warm < 0) return -1;
    long base[SOAK_NSERVICES], peak[SOAK_NSERVICES];
    for (int i = 0; i < SOAK_NSERVICES; i++)
        base[i] = peak[i] = soak_rss_kb(c->svc[i].pid);
    soak_say("fault: %s goes down for %d s", c->backend, seconds);
    if (soak_broker(c, "down")) {
        fprintf(stderr, "fault: cannot stop %s\n", c->backend);
        return -1;
    }
    offer o;
    offer_start(&o, c, 10, &serial);
    int64_t end = soak_ms() + seconds * 1000LL;
    while (soak_ms() < end) {
        sample(c, peak);
        sleep(1);
    }
    offer_stop(&o);
    sample(c, peak);
    /* the situation was reached: nothing got through while the broker was down */
    long during = completed_registrations();
    soak_figure(c, "completed_during_outage", during, "count");
    soak_check(c, during == warm, "no registration completed while the broker was down",
               "%ld of the %d before it", during, warm);
    soak_say("fault: %s comes back", c->backend);
    int64_t up0 = soak_ms();
    if (soak_broker(c, "up")) {
        fprintf(stderr, "fault: cannot start %s again\n", c->backend);
        offer_free(&o);
        return -1;
    }
    int64_t up_ms = soak_ms() - up0;
    int64_t took = await_delivery(c, peak, warm + o.created, 180000);
    soak_figure(c, "outage_s", seconds, "s");
    soak_figure(c, "broker_start_s", up_ms / 1000.0, "s");
    soak_figure(c, "accepted_during_outage", o.created, "count");
    soak_figure(c, "refused_503_during_outage", o.refused, "count");
    soak_figure(c, "unanswered_during_outage", o.no_answer, "count");
    soak_figure(c, "other_answers_during_outage", o.other, "count");
    soak_figure(c, "slowest_answer", o.max_ms, "ms");
    soak_figure(c, "delivered_after_recovery_s", took < 0 ? -1 : took / 1000.0, "s");
    soak_check(c, o.created > 0, "registrations were accepted while the broker was down", "%ld",
               o.created);
    soak_check(c, o.no_answer == 0 && o.other == 0, "HTTP kept answering 201 or 503 Retry-After",
               "%ld unanswered, %ld other (last %ld)", o.no_answer, o.other, o.worst_other_status);
    long done = completed_registrations(), mails = welcome_mails();
    soak_figure(c, "registrations_completed", done, "count");
    soak_figure(c, "welcome_emails", mails, "count");
    soak_check(c, took >= 0 && done == warm + o.created && mails == warm + o.created,
               "every accepted registration completed after recovery",
               "%ld sagas and %ld mails of %ld", done, mails, warm + o.created);
    rss_figures(c, base, peak, 64 * 1024);
    offer_free(&o);
    stop_all(c);
    return 0;
}

/* ---- the outbox full ----------------------------------------------------------------------- */

#define OUTBOX_BOUND 40

static long auth_outbox_pending(void)
{
    return soak_count("auth-service.db",
                      "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL);
}

/* OUTBOX_MAX_PENDING reached while the broker is down: registrations come at 20 a second until
 * auth-service's outbox holds OUTBOX_BOUND events, then each is answered 503 with Retry-After
 * and writes nothing; once the broker is back, every accepted one completes, and registrations
 * are accepted again. */
static int outbox_full(soak_ctx *c, int seconds)
{
    if (!strcmp(c->backend, "sqlite")) {
        fprintf(stderr, "fault: outbox-full needs a broker (redis, rabbitmq, kafka)\n");
        return -1;
    }
    char bound[16];
    snprintf(bound, sizeof bound, "%d", OUTBOX_BOUND);
    setenv("OUTBOX_MAX_PENDING", bound, 1);
    if (start_all(c)) return -1;
    int serial = 0;
    int warm = warm_up(c, &serial);
    if (warm < 0) return -1;
    soak_say("fault: %s goes down for %d s; auth-service's outbox holds at most %d events",
             c->backend, seconds, OUTBOX_BOUND);
    if (soak_broker(c, "down")) {
        fprintf(stderr, "fault: cannot stop %s\n", c->backend);
        return -1;
    }
    offer o;
    offer_start(&o, c, 20, &serial);
    long most = 0;
    int64_t end = soak_ms() + seconds * 1000LL;
    while (soak_ms() < end) {
        long n = auth_outbox_pending();
        if (n > most) most = n;
        usleep(250000);
    }
    offer_stop(&o);
    long n = auth_outbox_pending();
    if (n > most) most = n;
    long users = soak_count("auth-service.db", "SELECT count(*) FROM event_store.auth_users", NULL);
    soak_figure(c, "outbox_bound", OUTBOX_BOUND, "count");
    soak_figure(c, "outbox_most_pending", most, "count");
    soak_figure(c, "accepted_during_outage", o.created, "count");
    soak_figure(c, "refused_503_during_outage", o.refused, "count");
    soak_figure(c, "unanswered_during_outage", o.no_answer, "count");
    soak_figure(c, "other_answers_during_outage", o.other, "count");
    /* the situation was reached: the outbox filled up and the bound answered */
    soak_check(c, most == OUTBOX_BOUND, "auth-service's outbox filled up to its bound",
               "at most %ld of %d pending", most, OUTBOX_BOUND);
    soak_check(c, o.refused > 0, "registrations past the bound were answered 503 with Retry-After",
               "%ld", o.refused);
    soak_check(c, o.no_answer == 0 && o.other == 0, "HTTP kept answering 201 or 503 Retry-After",
               "%ld unanswered, %ld other (last %ld)", o.no_answer, o.other, o.worst_other_status);
    soak_check(c, users == warm + o.created, "a refused registration wrote nothing",
               "%ld users for %ld accepted", users, warm + o.created);
    soak_say("fault: %s comes back", c->backend);
    if (soak_broker(c, "up")) {
        fprintf(stderr, "fault: cannot start %s again\n", c->backend);
        offer_free(&o);
        return -1;
    }
    int64_t took = await_delivery(c, NULL, warm + o.created, 180000);
    soak_figure(c, "delivered_after_recovery_s", took < 0 ? -1 : took / 1000.0, "s");
    long done = completed_registrations(), mails = welcome_mails();
    soak_check(c, took >= 0 && done == warm + o.created && mails == warm + o.created,
               "every accepted registration completed after recovery",
               "%ld sagas and %ld mails of %ld", done, mails, warm + o.created);
    soak_check(c, auth_outbox_pending() == 0, "auth-service's outbox emptied", "%ld pending",
               auth_outbox_pending());
    /* and the service takes registrations again */
    offer again;
    offer_start(&again, c, 5, &serial);
    sleep(2);
    offer_stop(&again);
    soak_check(c, again.created > 0 && again.refused == 0,
               "registrations are accepted again after recovery", "%ld accepted, %ld refused",
               again.created, again.refused);
    offer_free(&again);
    offer_free(&o);
    stop_all(c);
    return 0;
}

/* ---- a slow consumer ----------------------------------------------------------------------- */

static int slow_consumer(soak_ctx *c, int seconds)
{
    setenv("EVENT_BUS_MAX_IN_FLIGHT", "50", 1);
    if (start_all(c)) return -1;
    int serial = 0;
    int warm = warm_up(c, &serial);
    if (warm < 0) return -1;
    long base[SOAK_NSERVICES], peak[SOAK_NSERVICES];
    for (int i = 0; i < SOAK_NSERVICES; i++)
        base[i] = peak[i] = soak_rss_kb(c->svc[i].pid);
    pid_t slow = c->svc[NOTIFICATION].pid;
    soak_say("fault: notification-service runs 50 ms of every 5 s for %d s", seconds);
    offer o;
    offer_start(&o, c, 20, &serial);
    int64_t end = soak_ms() + seconds * 1000LL;
    long backlog_peak = 0;
    while (soak_ms() < end) {
        kill(slow, SIGCONT);
        usleep(50000);
        kill(slow, SIGSTOP);
        for (int k = 0; k < 5 && soak_ms() < end; k++) {
            usleep(990000);
            sample(c, peak);
        }
        long backlog = warm + o.created - welcome_mails();
        if (backlog > backlog_peak) backlog_peak = backlog;
    }
    offer_stop(&o);
    /* it catches up on the whole backlog: its window, not the backlog, is what it holds */
    kill(slow, SIGCONT);
    int64_t took = await_delivery(c, peak, warm + o.created, 180000);
    sample(c, peak);
    soak_figure(c, "registrations_offered_per_s", 20, "count");
    soak_figure(c, "accepted", o.created, "count");
    soak_figure(c, "welcome_backlog_peak", backlog_peak, "count");
    soak_figure(c, "caught_up_s", took < 0 ? -1 : took / 1000.0, "s");
    soak_check(c, backlog_peak > 4 * 50,
               "the consumer fell behind by more than 4 times its in-flight window", "backlog %ld",
               backlog_peak);
    soak_check(c, o.no_answer == 0 && o.other == 0, "HTTP kept answering",
               "%ld unanswered, %ld other", o.no_answer, o.other);
    soak_check(c, took >= 0, "every welcome mail was sent once it caught up", "%ld mails of %ld",
               welcome_mails(), warm + o.created);
    rss_figures(c, base, peak, 32 * 1024);
    offer_free(&o);
    stop_all(c);
    return 0;
}

/* ---- a full disk --------------------------------------------------------------------------- */

/* The VFS that fails: the default one, but every xWrite answers SQLITE_FULL while vfs_full is
 * set, as a write to a full disk does. */
static sqlite3_vfs *real_vfs;
static sqlite3_vfs full_vfs;
static volatile int vfs_full;
static sqlite3_io_methods full_methods[3]; /* one per iVersion of the wrapped methods */

typedef struct full_file {
    sqlite3_file base;
    sqlite3_file *real; /* follows this struct */
} full_file;

#define REAL(f) (((full_file *)(f))->real)
static int ff_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}
static int ff_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int ff_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    if (vfs_full) return SQLITE_FULL;
    return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int ff_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int ff_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int ff_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int ff_lock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int ff_unlock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int ff_check(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int ff_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int ff_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int ff_caps(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int ff_shm_map(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, pp);
}
static int ff_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void ff_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int ff_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int ff_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), o, n, pp);
}
static int ff_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

static int ff_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    full_file *ff = (full_file *)f;
    ff->real = (sqlite3_file *)(ff + 1);
    int rc = real_vfs->xOpen(real_vfs, name, ff->real, flags, out_flags);
    if (rc != SQLITE_OK || !ff->real->pMethods) {
        f->pMethods = NULL;
        return rc;
    }
    int v = ff->real->pMethods->iVersion;
    if (v > 3) v = 3;
    sqlite3_io_methods *m = &full_methods[v - 1];
    *m = (sqlite3_io_methods){v,          ff_close,  ff_read, ff_write,  ff_truncate,
                              ff_sync,    ff_size,   ff_lock, ff_unlock, ff_check,
                              ff_control, ff_sector, ff_caps, NULL,      NULL,
                              NULL,       NULL,      NULL,    NULL};
    if (v >= 2) {
        m->xShmMap = ff_shm_map;
        m->xShmLock = ff_shm_lock;
        m->xShmBarrier = ff_shm_barrier;
        m->xShmUnmap = ff_shm_unmap;
    }
    if (v >= 3) {
        m->xFetch = ff_fetch;
        m->xUnfetch = ff_unfetch;
    }
    f->pMethods = m;
    return SQLITE_OK;
}

static void vfs_install(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    full_vfs = *real_vfs;
    full_vfs.zName = "soak-full";
    full_vfs.szOsFile = (int)sizeof(full_file) + real_vfs->szOsFile;
    full_vfs.xOpen = ff_open;
    full_vfs.pAppData = NULL;
    sqlite3_vfs_register(&full_vfs, 1); /* the default: the store opens through it */
}

/* Appends one event (a user.profile_created of its own) to stream; 0 or the error. */
static int append_one(ew_store *s, int n, ew_error *err)
{
    char user[EW_UUID_LEN + 1], name[64], stream[64];
    ew_uuid7(user);
    snprintf(name, sizeof name, "disk user %d with a name of some length to fill pages", n);
    snprintf(stream, sizeof stream, "user-%s", user);
    ew_user_profile_created d = {.user_id = user, .display_name = name};
    ew_event *ev;
    int rc = ew_user_profile_created_new(&ev, &d,
                                         &(ew_event_attrs){.source = "soak", .subject = user}, err);
    if (rc) return rc;
    const ew_event *one[] = {ev};
    rc = ew_store_append(s, stream, EW_EXPECT_ANY, one, 1, NULL, err);
    ew_event_unref(ev);
    return rc;
}

static int integrity(void *ud, const ew_row *row)
{
    snprintf(ud, 128, "%s", row->values[0] ? row->values[0] : "(null)");
    return 1;
}

/* Opens the store at url again and checks what it holds: count events and integrity "ok". */
static void check_store(soak_ctx *c, const char *what, const char *url, long committed)
{
    ew_store *s;
    ew_error err = {0};
    char name[160];
    if (ew_store_open(&s, &(ew_store_options){.url = url}, &err)) {
        snprintf(name, sizeof name, "%s: the store opens again", what);
        soak_check(c, false, name, "%s", err.msg);
        return;
    }
    ew_txn *t;
    char result[128] = "", n[128] = "";
    if (!ew_store_begin(s, &t, &err)) {
        ew_txn_query(t, "PRAGMA event_store.integrity_check", NULL, 0, integrity, result, &err);
        ew_txn_query(t, "SELECT count(*) FROM event_store.events", NULL, 0, integrity, n, &err);
        ew_txn_rollback(t);
    }
    ew_store_close(s);
    snprintf(name, sizeof name, "%s: PRAGMA integrity_check", what);
    soak_check(c, !strcmp(result, "ok"), name, "%s", result);
    snprintf(name, sizeof name, "%s: every committed event is there", what);
    soak_check(c, atol(n) == committed, name, "%s stored, %ld committed", n, committed);
}

/* Appends until the disk is full, checks the error, then (after make_room) appends again.
 * full: the failure is made by the caller's means (vfs_full or the tmpfs's size). */
static void fill_and_recover(soak_ctx *c, const char *what, const char *url,
                             void (*make_full)(void), void (*make_room)(void), long max)
{
    ew_store *s;
    ew_error err = {0};
    char name[160];
    if (ew_store_open(&s, &(ew_store_options){.url = url}, &err)) {
        snprintf(name, sizeof name, "%s: the store opens", what);
        soak_check(c, false, name, "%s", err.msg);
        return;
    }
    long committed = 0;
    int rc = 0;
    if (make_full) {
        for (int i = 0; i < 100; i++)
            if (!append_one(s, i, &err)) committed++;
        make_full();
    }
    for (long i = 0; i < max && !(rc = append_one(s, (int)i, &err)); i++)
        committed++;
    char figure[160];
    snprintf(figure, sizeof figure, "%s.events_before_full", what);
    soak_figure(c, figure, committed, "count");
    soak_say("fault: %s: %s (%s)", what, err.msg, ew_err_name(rc));
    snprintf(name, sizeof name, "%s: the append fails with a clear error", what);
    soak_check(c, rc != 0 && (strstr(err.msg, "full") || strstr(err.msg, "space")), name, "%s: %s",
               ew_err_name(rc), err.msg);
    /* it keeps failing, cleanly, while the disk is full */
    ew_error again = {0};
    int rc2 = append_one(s, -1, &again);
    snprintf(name, sizeof name, "%s: a second append fails the same way", what);
    soak_check(c, rc2 != 0, name, "%s", again.msg);
    ew_store_close(s);
    check_store(c, what, url, committed);
    make_room();
    if (ew_store_open(&s, &(ew_store_options){.url = url}, &err)) {
        snprintf(name, sizeof name, "%s: the store opens once there is room", what);
        soak_check(c, false, name, "%s", err.msg);
        return;
    }
    int ok = 0;
    for (int i = 0; i < 20; i++)
        if (!append_one(s, 1000000 + i, &err)) ok++;
    ew_store_close(s);
    snprintf(name, sizeof name, "%s: appends work again once there is room", what);
    soak_check(c, ok == 20, name, "%d of 20: %s", ok, ok == 20 ? "" : err.msg);
    check_store(c, what, url, committed + ok);
}

static void vfs_make_full(void)
{
    vfs_full = 1;
}
static void vfs_make_room(void)
{
    vfs_full = 0;
}

static char tmpfs_dir[300];
static void tmpfs_make_room(void)
{
    if (mount("soak", tmpfs_dir, "tmpfs", MS_REMOUNT, "size=16m"))
        soak_say("fault: remount: %s", strerror(errno));
}

static int disk_full(soak_ctx *c)
{
    /* 1. the tmpfs: in a child, in a mount namespace of its own */
    snprintf(tmpfs_dir, sizeof tmpfs_dir, "%s/tmpfs", c->work);
    mkdir(tmpfs_dir, 0700);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
            soak_say("fault: skipped: the 1 MiB tmpfs: unshare -m: %s", strerror(errno));
            _exit(77);
        }
        if (mount("soak", tmpfs_dir, "tmpfs", 0, "size=1m,mode=0700")) {
            soak_say("fault: skipped: the 1 MiB tmpfs: mount: %s", strerror(errno));
            _exit(77);
        }
        char url[400];
        snprintf(url, sizeof url, "sqlite:%s/events.db", tmpfs_dir);
        fill_and_recover(c, "tmpfs", url, NULL, tmpfs_make_room, 1000000);
        _exit(c->failures ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    soak_figure(c, "tmpfs_skipped", code == 77, "count");
    if (code != 0 && code != 77) c->failures++;
    /* 2. the VFS: everywhere */
    vfs_install();
    char url[400];
    snprintf(url, sizeof url, "sqlite:%s/vfs-events.db", c->work);
    fill_and_recover(c, "vfs", url, vfs_make_full, vfs_make_room, 1000);
    return 0;
}

/* ---- the entry ----------------------------------------------------------------------------- */

int soak_fault_main(const char *fault, const char *backend, int seconds, bool keep)
{
    soak_ctx c = {0};
    char prefix[96];
    bool disk = !strcmp(fault, "disk-full");
    if (disk) backend = "sqlite";
    snprintf(prefix, sizeof prefix, "soak.fault.%s.%s", fault, backend);
    if (soak_open(&c, backend, prefix)) {
        soak_close(&c, true);
        return 1;
    }
    int rc;
    if (!strcmp(fault, "broker-down"))
        rc = broker_down(&c, seconds);
    else if (!strcmp(fault, "outbox-full"))
        rc = outbox_full(&c, seconds);
    else if (!strcmp(fault, "slow-consumer"))
        rc = slow_consumer(&c, seconds);
    else if (disk)
        rc = disk_full(&c);
    else {
        fprintf(stderr,
                "ew-soak: unknown fault %s (broker-down, outbox-full, slow-consumer, "
                "disk-full)\n",
                fault);
        soak_close(&c, false);
        return 2;
    }
    if (rc) c.failures++;
    int failures = c.failures;
    soak_say("fault: %s on %s: %s (%d failed checks)", fault, backend,
             failures ? "FAILED" : "passed", failures);
    soak_close(&c, keep || failures);
    return failures ? 1 : 0;
}
