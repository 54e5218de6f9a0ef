/* export-service: the sweeper, a thread that every EXPORT_SWEEP_MS fails the exports past their
 * deadline and deletes the documents whose link expired.
 *
 * It has a database handle of its own: the runtime closes the service's handle before it calls
 * teardown, which is where the sweeper stops. Its events go into the same outbox (the same
 * database), and svc_commit wakes the runtime's relay to publish them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "core/mono.h"
#include "export.h"

#define SWEEP_BATCH 100

typedef struct export_idrows {
    char id[SWEEP_BATCH][40];
    char file[SWEEP_BATCH][64];
    size_t n;
} idrows;

static int keep_ids(void *ud, const ew_row *r)
{
    idrows *l = ud;
    if (l->n == SWEEP_BATCH || !r->values[0]) return 1;
    snprintf(l->id[l->n], sizeof l->id[0], "%s", r->values[0]);
    snprintf(l->file[l->n], sizeof l->file[0], "%s",
             r->ncols > 1 && r->values[1] ? r->values[1] : "");
    l->n++;
    return 0;
}

/* The rows of a query, read in a transaction of their own. */
static int select_ids(exporter *x, const char *sql, const char *now, idrows *l, ew_error *err)
{
    l->n = 0;
    ew_txn *t;
    int rc = ew_store_begin(x->db2, &t, err);
    if (rc) return rc;
    const char *p[] = {now};
    rc = ew_txn_query(t, sql, p, 1, keep_ids, l, err);
    ew_txn_rollback(t);
    return rc;
}

static int sweep(exporter *x, ew_error *err)
{
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    idrows *l = x->rows;
    /* exports past their deadline */
    int rc = select_ids(x,
                        "SELECT export_id FROM event_store.export_requests"
                        " WHERE status = 'pending' AND deadline_at <= $1"
                        " ORDER BY deadline_at LIMIT 100",
                        now, l, err);
    for (size_t i = 0; !rc && i < l->n; i++) {
        ew_txn *t;
        bool failed = false;
        if ((rc = ew_store_begin(x->db2, &t, err))) break;
        rc = export_fail_due(x, t, l->id[i], now, &failed, err);
        if (rc || !failed)
            ew_txn_rollback(t);
        else
            rc = svc_commit(x->s, t, err);
    }
    /* documents whose link expired */
    if (!rc)
        rc = select_ids(x,
                        "SELECT export_id, file_name FROM event_store.export_requests"
                        " WHERE status = 'completed' AND file_name IS NOT NULL"
                        " AND expires_at <= $1 LIMIT 100",
                        now, l, err);
    for (size_t i = 0; !rc && i < l->n; i++) {
        char path[4200];
        export_file_path(x, l->file[i], path, sizeof path);
        if (unlink(path) && errno != ENOENT) {
            svc_log(x->s, EW_LOG_WARN, "cannot remove %s: %s", path, strerror(errno));
            continue;
        }
        ew_txn *t;
        if ((rc = ew_store_begin(x->db2, &t, err))) break;
        const char *p[] = {l->id[i]};
        rc = ew_txn_exec(t,
                         "UPDATE event_store.export_requests SET file_name = NULL"
                         " WHERE export_id = $1",
                         p, 1, NULL, err);
        if (rc)
            ew_txn_rollback(t);
        else
            rc = ew_txn_commit(t, err);
        if (!rc) svc_log(x->s, EW_LOG_INFO, "export %s: link expired, %s deleted", l->id[i], path);
    }
    return rc;
}

static void *sweeper_main(void *p)
{
    exporter *x = p;
    char last[256] = "";
    pthread_mutex_lock(&x->smu);
    while (!x->stop) {
        struct timespec dl = ew__mono_deadline(EXPORT_SWEEP_MS);
        while (!x->stop && pthread_cond_timedwait(&x->scv, &x->smu, &dl) != ETIMEDOUT) {
        }
        if (x->stop) break;
        pthread_mutex_unlock(&x->smu);
        ew_error e = {0};
        if (sweep(x, &e)) {
            if (strcmp(last, e.msg))
                svc_log(x->s, EW_LOG_WARN, "sweeper: %s (trying again every %d ms)", e.msg,
                        EXPORT_SWEEP_MS);
            snprintf(last, sizeof last, "%s", e.msg);
        } else {
            last[0] = '\0';
        }
        pthread_mutex_lock(&x->smu);
    }
    pthread_mutex_unlock(&x->smu);
    return NULL;
}

int export_sweeper_start(exporter *x, const char *db_url, ew_error *err)
{
    ew_store_options o = {.config = svc_config(x->s), .url = db_url};
    /* allocated once: a pass every EXPORT_SWEEP_MS has nothing to fail on */
    if (!(x->rows = malloc(sizeof *x->rows))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = ew_store_open(&x->db2, &o, err);
    if (rc) return rc;
    if (strstr(db_url, ":memory:"))
        svc_log(x->s, EW_LOG_WARN,
                "SERVICE_DB_URL is in memory: the sweeper does not see the "
                "service's exports (deadlines are checked on GET only)");
    pthread_mutex_init(&x->smu, NULL);
    ew__cond_init_mono(&x->scv);
    x->stop = false;
    if ((rc = pthread_create(&x->sweeper, NULL, sweeper_main, x))) {
        pthread_mutex_destroy(&x->smu);
        pthread_cond_destroy(&x->scv);
        ew_store_close(x->db2);
        x->db2 = NULL;
        return ew_error_set(err, EW_ENOMEM, "cannot start the sweeper: %s", strerror(rc));
    }
    x->sweeper_started = true;
    return 0;
}

void export_sweeper_stop(exporter *x)
{
    if (x->sweeper_started) {
        pthread_mutex_lock(&x->smu);
        x->stop = true;
        pthread_cond_signal(&x->scv);
        pthread_mutex_unlock(&x->smu);
        pthread_join(x->sweeper, NULL);
        pthread_mutex_destroy(&x->smu);
        pthread_cond_destroy(&x->scv);
        x->sweeper_started = false;
    }
    ew_store_close(x->db2);
    x->db2 = NULL;
    free(x->rows);
    x->rows = NULL;
}
