/* The chaos soak (docs/reliability.md): the five services as processes on one backend, a load
 * generator offering a bounded mix of what users do (registrations, logins, profile updates,
 * password resets, exports, deletions) for --seconds, while a chaos loop SIGKILLs a random
 * service every few seconds and restarts it, restarts the broker twice and pauses a service
 * once. Then, once the system has settled, the outcomes are checked where they land — the
 * services' APIs, their databases, the event store and the mail spool — and printed as bench
 * lines. Exit status 0 when every check holds, 1 when one does not, 2 for a bad command line.
 *
 *   ew-soak --backend sqlite|redis|rabbitmq|kafka [--seconds N] [--rate OPS] [--keep]
 *   ew-soak --fault broker-down|outbox-full|slow-consumer|disk-full [--backend B] [--seconds N]
 */
#include <curl/curl.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "soak.h"
#include "soak_load.h"
#include "svc_auth.h"

int soak_fault_main(const char *fault, const char *backend, int seconds, bool keep);

enum { AUTH, USER, NOTIFICATION, ANALYTICS, EXPORT };

typedef struct chaos {
    soak_ctx *c;
    int seconds;
    volatile int stop;  /* the load's time is up: no more chaos */
    volatile int idle;  /* after stop: every service is up, the loop only watches */
    volatile int quiet; /* the services are being stopped: hands off */
    volatile int done;  /* the end: the thread returns */
    int kills, restarts_failed, broker_restarts, broker_restart_failures, pauses;
    int64_t warm_at; /* from when memory samples count as the start */
} chaos;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

static void sleep_ms(int64_t ms)
{
    while (ms > 0) {
        int64_t step = ms > 200 ? 200 : ms;
        usleep((useconds_t)step * 1000);
        ms -= step;
    }
}

/* The broker's restarts, at 30 % and 65 % of the run, in a thread of their own so that the
 * kills go on meanwhile (a RabbitMQ node takes 10-20 s to come back). */
static void *broker_main(void *ud)
{
    chaos *ch = ud;
    soak_ctx *c = ch->c;
    int64_t t0 = soak_ms();
    for (int k = 0; k < 2; k++) {
        int64_t at = t0 + ch->seconds * (k ? 650LL : 300LL);
        while (!ch->stop && soak_ms() < at)
            sleep_ms(100);
        if (ch->stop) break;
        soak_say("chaos: %s restarts", c->backend);
        int64_t b0 = soak_ms();
        if (soak_broker(c, "restart")) ch->broker_restart_failures++;
        soak_say("chaos: %s back after %lld ms", c->backend, (long long)(soak_ms() - b0));
        ch->broker_restarts++;
    }
    return NULL;
}

/* The chaos loop: every 3-6 s a random service gets SIGKILL and is started again 0.5-2 s later;
 * one service is paused for 5 s at 50 % of the run; the broker restarts twice (broker_main).
 * Every second it samples the services' memory and restarts one that died by itself. */
static void *chaos_main(void *ud)
{
    chaos *ch = ud;
    soak_ctx *c = ch->c;
    int64_t t0 = soak_ms(), next_kill = t0 + 3000 + rand() % 3000;
    int64_t pause_at = t0 + ch->seconds * 500LL;
    int paused = 0;
    pthread_t broker;
    bool has_broker = strcmp(c->backend, "sqlite") != 0;
    if (has_broker) pthread_create(&broker, NULL, broker_main, ch);
    while (!ch->done) {
        int64_t now = soak_ms();
        if (ch->quiet) {
            /* the services it started die with this thread (PR_SET_PDEATHSIG): it waits */
            sleep_ms(100);
            continue;
        }
        pthread_mutex_lock(&c->lock);
        soak_sample_rss(c, now >= ch->warm_at);
        pthread_mutex_unlock(&c->lock);
        if (soak_reap(c))
            for (int i = 0; i < SOAK_NSERVICES; i++)
                if (!c->svc[i].pid && soak_service_start_retry(c, i, 120000)) ch->restarts_failed++;
        if (ch->stop) {
            /* the run is over: the broker's restart finished, every service up again, then
             * only watching */
            if (has_broker) pthread_join(broker, NULL);
            has_broker = false;
            for (int i = 0; !ch->idle && i < SOAK_NSERVICES; i++)
                if (!c->svc[i].pid && soak_service_start_retry(c, i, 120000)) ch->restarts_failed++;
            ch->idle = 1;
            sleep_ms(1000);
            continue;
        }
        if (!paused && now >= pause_at) {
            int i = rand() % SOAK_NSERVICES;
            pid_t pid = c->svc[i].pid;
            if (pid) {
                soak_say("chaos: %s paused for 5 s", c->svc[i].name);
                kill(pid, SIGSTOP);
                sleep_ms(5000);
                kill(pid, SIGCONT);
                ch->pauses++;
                paused = 1;
            }
            continue;
        }
        if (now >= next_kill) {
            int i = rand() % SOAK_NSERVICES;
            if (c->svc[i].pid) {
                soak_say("chaos: %s killed", c->svc[i].name);
                soak_service_kill(c, i);
                c->svc[i].kills++;
                ch->kills++;
                sleep_ms(500 + rand() % 1500);
                if (soak_service_start_retry(c, i, 120000)) {
                    soak_say("chaos: %s did not start again", c->svc[i].name);
                    ch->restarts_failed++;
                }
            }
            next_kill = soak_ms() + 3000 + rand() % 3000;
            continue;
        }
        sleep_ms(1000 - (soak_ms() - now) % 1000);
    }
    return NULL;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ew-soak --backend sqlite|redis|rabbitmq|kafka [--seconds N] [--rate OPS] "
            "[--keep]\n"
            "       ew-soak --fault broker-down|outbox-full|slow-consumer|disk-full [--backend B] "
            "[--seconds N] [--keep]\n");
}

static int soak_main(const char *backend, int seconds, int rate, bool keep)
{
    soak_ctx c = {0};
    char prefix[64];
    snprintf(prefix, sizeof prefix, "soak.%s", backend);
    int64_t t_start = soak_ms();
    if (soak_open(&c, backend, prefix)) {
        soak_close(&c, true);
        return 1;
    }
    soak_say("soak: %s for %d s at %d operations/s in %s", backend, seconds, rate, c.work);
    for (int i = 0; i < SOAK_NSERVICES; i++)
        if (soak_service_start_retry(&c, i, 60000)) {
            fprintf(stderr, "soak: %s did not start (%s/var/log/%s.log)\n", c.svc[i].name, c.work,
                    c.svc[i].name);
            soak_close(&c, true);
            return 1;
        }
    char admin[SVC_TOKEN_MAX + 1];
    if (soak_admin_token(&c, admin, sizeof admin)) {
        soak_close(&c, true);
        return 1;
    }
    soak_load *load = soak_load_new(&c, rate, admin);
    chaos ch = {.c = &c, .seconds = seconds, .warm_at = soak_ms() + 5000};
    pthread_t chaos_thread;
    pthread_create(&chaos_thread, NULL, chaos_main, &ch);
    soak_load_start(load);
    int64_t end = soak_ms() + seconds * 1000LL, next_line = soak_ms() + 10000;
    while (soak_ms() < end && !interrupted) {
        sleep_ms(200);
        if (soak_ms() >= next_line) {
            soak_load_progress(load);
            next_line += 10000;
        }
    }
    if (interrupted) {
        soak_say("soak: interrupted by signal %d", (int)interrupted);
        c.failures++;
    }
    soak_load_stop(load);
    ch.stop = 1;
    /* every service up again (the chaos loop starts what it killed), then the system settles */
    while (!ch.idle)
        sleep_ms(100);
    int64_t settle0 = soak_ms();
    int pending = soak_load_settle(load, interrupted ? 0 : 180000);
    int64_t settle_ms = soak_ms() - settle0;
    ch.quiet = 1;
    sleep_ms(1200); /* the loop's current round ends */
    pthread_mutex_lock(&c.lock);
    soak_sample_rss(&c, true);
    pthread_mutex_unlock(&c.lock);
    soak_rss_finish(&c);

    /* ---- the figures and the checks ---- */
    soak_figure(&c, "seconds", seconds, "s");
    soak_figure(&c, "settle_s", (double)settle_ms / 1000.0, "s");
    soak_figure(&c, "chaos.kills", ch.kills, "count");
    soak_figure(&c, "chaos.broker_restarts", ch.broker_restarts, "count");
    soak_figure(&c, "chaos.pauses", ch.pauses, "count");
    soak_check(&c, pending == 0, "the system settled", "%d outcomes still pending after %.0f s",
               pending, settle_ms / 1000.0);
    soak_check(&c, ch.kills >= seconds / 15, "services were killed", "%d kills", ch.kills);
    soak_check(&c, ch.pauses == 1, "a service was paused", "%d pauses", ch.pauses);
    if (strcmp(backend, "sqlite"))
        soak_check(&c, ch.broker_restarts == 2 && !ch.broker_restart_failures,
                   "the broker restarted twice", "%d restarts, %d failed", ch.broker_restarts,
                   ch.broker_restart_failures);
    soak_check(&c, !ch.restarts_failed, "every killed service started again", "%d did not",
               ch.restarts_failed);
    soak_load_report(load); /* the outcomes, over HTTP while the services run */
    int unexpected = 0;
    for (int i = 0; i < SOAK_NSERVICES; i++)
        unexpected += c.svc[i].unexpected_exits;
    soak_figure(&c, "services.unexpected_exits", unexpected, "count");
    soak_check(&c, unexpected == 0, "no service died by itself", "%d did", unexpected);
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        soak_service *v = &c.svc[i];
        char name[128];
        snprintf(name, sizeof name, "chaos.kills.%s", v->name);
        soak_figure(&c, name, v->kills, "count");
        snprintf(name, sizeof name, "rss.%s.start", v->name);
        soak_figure(&c, name, v->rss_first_kb / 1024.0, "MiB");
        snprintf(name, sizeof name, "rss.%s.end", v->name);
        soak_figure(&c, name, v->rss_last_kb / 1024.0, "MiB");
        snprintf(name, sizeof name, "rss.%s.peak", v->name);
        soak_figure(&c, name, v->rss_peak_kb / 1024.0, "MiB");
        /* a killed service's start and end are different processes: the trend is the one
         * of the process that lived longest, from 5 s after its start to its end */
        snprintf(name, sizeof name, "rss.%s.longest_life", v->name);
        soak_figure(&c, name, v->life_ms / 1000.0, "s");
        snprintf(name, sizeof name, "rss.%s.longest_life.start", v->name);
        soak_figure(&c, name, v->life_first_kb / 1024.0, "MiB");
        snprintf(name, sizeof name, "rss.%s.longest_life.end", v->name);
        soak_figure(&c, name, v->life_last_kb / 1024.0, "MiB");
        /* no growth trend: the end within the start plus 16 MiB and a half */
        snprintf(name, sizeof name, "%s's memory did not grow", v->name);
        soak_check_rss(&c,
                       v->rss_last_kb <= 2 * v->rss_first_kb + 32 * 1024 &&
                           v->life_last_kb <= v->life_first_kb * 3 / 2 + 16 * 1024,
                       name, "%.1f MiB at the start, %.1f at the end; %.1f -> %.1f over %.0f s",
                       v->rss_first_kb / 1024.0, v->rss_last_kb / 1024.0, v->life_first_kb / 1024.0,
                       v->life_last_kb / 1024.0, v->life_ms / 1000.0);
    }
    /* the services stop cleanly (a sanitizer build writes its leak report then) */
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        int st = soak_service_stop(&c, i);
        char what[128];
        snprintf(what, sizeof what, "%s stopped cleanly", c.svc[i].name);
        soak_check(&c, st == 0, what, "exit status %d", st);
    }
    ch.done = 1;
    pthread_join(chaos_thread, NULL);
    soak_load_report_stopped(load); /* the databases and the mail spool, with nothing running */
    int reports = soak_sanitizer_reports(&c);
    soak_figure(&c, "sanitizer_reports", reports, "count");
    soak_check(&c, reports == 0, "no sanitizer report", "%d", reports);
    soak_load_free(load);
    soak_figure(&c, "wall_s", (double)(soak_ms() - t_start) / 1000.0, "s");
    int failures = c.failures;
    soak_say("soak: %s: %s (%d failed checks)", backend, failures ? "FAILED" : "passed", failures);
    soak_close(&c, keep || failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *backend = NULL, *fault = NULL;
    int seconds = -1, rate = 20;
    bool keep = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc)
            backend = argv[++i];
        else if (!strcmp(argv[i], "--fault") && i + 1 < argc)
            fault = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep"))
            keep = true;
        else {
            usage();
            return 2;
        }
    }
    if (seconds < 0) {
        const char *s = getenv("SOAK_SECONDS");
        seconds = s ? atoi(s) : 60;
    }
    if ((!backend && !fault) || seconds <= 0 || rate <= 0 || rate > 1000) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* SIGINT or SIGTERM cut the run short; it cleans up (services, broker) and fails */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    srand((unsigned)ew_now_us());
    curl_global_init(CURL_GLOBAL_ALL);
    int rc = fault ? soak_fault_main(fault, backend ? backend : "redis", seconds, keep)
                   : soak_main(backend, seconds, rate, keep);
    curl_global_cleanup();
    return rc;
}
