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
    const char *const *erase_tables;
    size_t nerase_tables;
    int64_t erased_seen; /* tombstones at the last compaction; -1: none done yet */
    int64_t recheck_ns;  /* when to compact once more (monotonic); 0: no need */
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

static int count_row(void *ud, const ew_row *r)
{
    if (r->ncols > 0 && r->values[0]) *(int64_t *)ud = strtoll(r->values[0], NULL, 10);
    return 0;
}

/* Compacts the erasure's tables when tombstones were added since the last time (the count of
 * tombstones only grows: the service keeps them), and once more COMPACT_RECHECK_S later: a
 * compaction keeps the rows that a transaction older than their deletion may still see (one of
 * the service's own, a batch in flight), and those transactions are short. */
#define COMPACT_RECHECK_S 5
static int compact_after_erasures(svc_keeper *k, svc_kept *out, ew_error *err)
{
    if (strcmp(ew_store_backend(k->db), "postgresql") != 0) return 0; /* nothing to do */
    int64_t n = 0, now = ew_mono_ns();
    ew_txn *t;
    int rc = ew_store_begin(k->db, &t, err);
    if (rc) return rc;
    rc = ew_txn_query(t, "SELECT count(*) FROM event_store.svc_erased_users", NULL, 0, count_row,
                      &n, err);
    ew_txn_rollback(t);
    if (rc) return rc;
    bool fresh = n != k->erased_seen && !(k->erased_seen < 0 && n == 0);
    if (!fresh && !(k->recheck_ns && now >= k->recheck_ns)) return 0;
    if (!(rc = ew_store_compact(k->db, k->erase_tables, k->nerase_tables, err))) {
        k->erased_seen = n;
        k->recheck_ns = fresh ? now + COMPACT_RECHECK_S * 1000000000LL : 0;
        out->compacted = k->nerase_tables;
    }
    return rc;
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
    if (!rc && k->nerase_tables) rc = compact_after_erasures(k, out, err);
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
        if (k->log && kept.compacted)
            ew_logger_printf(k->log, EW_LOG_INFO, "housekeeping",
                             "compacted %zu tables after an erasure (VACUUM FULL)", kept.compacted);
        pthread_mutex_lock(&k->mu);
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

int svc_keeper_start(svc_keeper **out, const ew_config *cfg, ew_store *db, ew_store *events,
                     const char *const *erase_tables, ew_logger *log, ew_error *err)
{
    *out = NULL;
    svc_keeper *k = calloc(1, sizeof *k);
    if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
    k->db = db;
    k->events = events;
    k->erase_tables = erase_tables;
    while (erase_tables && erase_tables[k->nerase_tables])
        k->nerase_tables++;
    k->erased_seen = -1;
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
