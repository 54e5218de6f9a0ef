/* export-service: GDPR data exports (docs/services-export.md).
 *
 * POST /exports (or a user.data_export_requested from elsewhere) opens an export; every service
 * answers with user.data_collected; when all of USER_DATA_SERVICES have, the answers become one
 * JSON document EXPORT_DIR/<export_id>.json, served at a download link until it expires, and
 * user.data_export_completed goes out. An export still waiting at its deadline fails with
 * user.data_export_failed naming the services that did not answer.
 *
 * Tables (in the service's database, schema event_store; store.c, created at every start):
 *   export_requests  one row per export: user, status, the services it waits for, deadline,
 *                    and once completed its link, expiry and file
 *   export_answers   one row per (export, service) that answered; the data is kept until the
 *                    document is written, then only the fact that it answered
 *
 * Deadlines are enforced by a sweeper thread (sweeper.c) with a database handle of its own,
 * every EXPORT_SWEEP_MS, and at once by GET /exports/{id} for the export it reads. The sweeper
 * also deletes the files of expired links. */
#ifndef EXPORT_H
#define EXPORT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "svc.h"
#include "svc_limit.h"
#include "svc_settings.h"

#define EXPORT_SERVICE "export-service"
#define EXPORT_PORT 8005
#define EXPORT_SWEEP_MS 250

typedef struct exporter {
    svc *s;
    char *dir;          /* EXPORT_DIR */
    char *services_csv; /* USER_DATA_SERVICES, checked */
    int64_t timeout_s, link_ttl_s;
    /* EXPORT_REQUESTS_PER_USER in EXPORT_LIMIT_WINDOW_SECONDS, counted per user in limits */
    int64_t per_user, limit_window_s;
    svc_limiter *limits;
    char *public_url; /* EXPORT_PUBLIC_URL without a trailing '/'; NULL */
    char *http_addr;
    int http_port;      /* 0: discovered when first needed */
    pthread_mutex_t mu; /* guards base_url; made in setup, destroyed in teardown */
    char base_url[512]; /* "" until known */
    /* the sweeper (sweeper.c) */
    ew_store *db2;
    struct export_idrows *rows; /* the ids a pass reads, the sweeper's own */
    pthread_t sweeper;
    bool sweeper_started;
    pthread_mutex_t smu;
    pthread_cond_t scv;
    bool stop;
} exporter;

/* ---- service.c: the service for svc_main(), with x as its state: zeroed, alive as long as the
 * service runs */
svc_def export_service(exporter *x);

/* ---- routes.c and handlers.c: the HTTP routes and the event handlers (svc_def.routes and
 * .handlers: the last entry is {0}) */
extern const svc_http_route export_routes[];
extern const svc_handler export_handlers[];
/* The user's data as export-service holds it (handlers.c): {"exports": [...]}, or {} when it
 * holds nothing; the runtime answers the GDPR events from it, opening an export that came from
 * elsewhere than POST /exports first, and removing the user's documents with their rows. */
extern const svc_gdpr export_gdpr;

/* ---- sweeper.c: the deadlines and expired links, on a thread of its own */
int export_sweeper_start(exporter *x, const char *db_url, ew_error *err);
void export_sweeper_stop(exporter *x);

/* ---- store.c: the tables and what routes, handlers and the sweeper all use */

/* CREATE TABLE IF NOT EXISTS statements, NULL-terminated, run at every start (svc_def.schema). */
extern const char *const export_schema[];

/* If export_id is pending and its deadline has passed (now: RFC 3339), fails it in t and adds
 * user.data_export_failed to t's outbox; *failed says whether it did. */
int export_fail_due(exporter *x, ew_txn *t, const char *export_id, const char *now, bool *failed,
                    ew_error *err);

/* The names of the services that answered export_id, in order, into l. */
int export_answered(ew_txn *t, const char *export_id, svc_names *l, ew_error *err);

/* The path of an export's document (in EXPORT_DIR). */
void export_file_path(const exporter *x, const char *file_name, char *out, size_t n);

#endif
