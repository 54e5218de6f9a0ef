/* The service runtime's housekeeping (keeper.h). */
#include "keeper.h"
#include "core/mono.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eventwire/clock.h"

#define BATCH 1000
#define BATCHES_PER_ROUND 20 /* a round deletes at most 20,000 rows of each kind */

struct svc_keeper {
    ew_store *db, *events;
    ew_logger *log;
    int64_t interval_ms, outbox_s, dead_letter_days, inbox_days;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool stop;
};

/* Up to BATCHES_PER_ROUND batches of one kind. */
static int batches(int (*one)(ew_store *, int64_t, size_t, size_t *, ew_error *), ew_store *st,
                   int64_t before_us, size_t *total, ew_error *err)
{
    for (int i = 0; i < BATCHES_PER_ROUND; i++) {
        size_t n = 0;
        int rc = one(st, before_us, BATCH, &n, err);
        *total += n;
        if (rc) return rc;
        if (n < BATCH) break;
    }
    return 0;
}

int svc_keeper_round(svc_keeper *k, svc_kept *out, ew_error *err)
{
    memset(out, 0, sizeof *out);
    int64_t now = ew_now_us();
    /* the store knows its own TTL (EVENT_STORE_TTL_DAYS; 0: nothing expires) */
    int rc = batches(ew_store_purge_batch, k->events, now, &out->events, err);
    if (!rc && k->outbox_s > 0)
        rc = batches(ew_store_outbox_prune, k->db, now - k->outbox_s * 1000000, &out->outbox, err);
    if (!rc && k->dead_letter_days > 0)
        rc = batches(ew_store_dlq_purge, k->events, now - k->dead_letter_days * 86400000000LL,
                     &out->dead_letters, err);
    if (!rc && k->inbox_days > 0)
        rc = ew_store_inbox_purge(k->db, k->inbox_days * 86400, &out->inbox, err);
    return rc;
}

static void *run(void *arg)
{
    svc_keeper *k = arg;
    int64_t last_warn = 0;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        struct timespec dl = ew__mono_deadline(k->interval_ms);
        while (!k->stop)
            if (pthread_cond_timedwait(&k->cv, &k->mu, &dl) == ETIMEDOUT) break;
        if (k->stop) break;
        pthread_mutex_unlock(&k->mu);
        svc_kept kept;
        ew_error e = {0};
        int rc = svc_keeper_round(k, &kept, &e);
        if (rc && k->log && ew_mono_ns() - last_warn > 60000000000LL) {
            last_warn = ew_mono_ns();
            ew_logger_printf(k->log, EW_LOG_WARN, "housekeeping", "%s (trying again later)", e.msg);
        }
        if (k->log && (kept.events || kept.outbox || kept.dead_letters || kept.inbox))
            ew_logger_printf(k->log, EW_LOG_INFO, "housekeeping",
                             "removed %zu expired events, %zu published outbox rows, %zu dead "
                             "letters, %zu inbox ids",
                             kept.events, kept.outbox, kept.dead_letters, kept.inbox);
        pthread_mutex_lock(&k->mu);
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

int svc_keeper_start(svc_keeper **out, const ew_config *cfg, ew_store *db, ew_store *events,
                     ew_logger *log, ew_error *err)
{
    *out = NULL;
    svc_keeper *k = calloc(1, sizeof *k);
    if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
    k->db = db;
    k->events = events;
    k->log = log;
    k->interval_ms = ew_config_get_int(cfg, "HOUSEKEEPING_INTERVAL_MS");
    k->outbox_s = ew_config_get_int(cfg, "OUTBOX_RETENTION_SECONDS");
    k->dead_letter_days = ew_config_get_int(cfg, "DEAD_LETTER_RETENTION_DAYS");
    k->inbox_days = ew_config_get_int(cfg, "INBOX_RETENTION_DAYS");
    pthread_mutex_init(&k->mu, NULL);
    ew__cond_init_mono(&k->cv);
    int rc = pthread_create(&k->thread, NULL, run, k);
    if (rc) {
        pthread_mutex_destroy(&k->mu);
        pthread_cond_destroy(&k->cv);
        free(k);
        return ew_error_set(err, EW_ENOMEM, "cannot start the housekeeping thread: %s",
                            strerror(rc));
    }
    *out = k;
    return 0;
}

void svc_keeper_stop(svc_keeper *k)
{
    if (!k) return;
    pthread_mutex_lock(&k->mu);
    k->stop = true;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    free(k);
}
