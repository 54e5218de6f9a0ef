/* analytics-service: counts the events of the system (docs/services-analytics.md).
 *
 * Tables (in the service's database, schema event_store; created at start by main.c):
 *   analytics_event_counts  one row per event type seen: how many, first and last event time
 *   analytics_users         one row per registered user it tracked (user.registered)
 *   analytics_user_events   one row per (user, event type): which events each user caused, how
 *                           many, first and last time -- the personal data it exports and deletes
 *   analytics_erased        one row per erased user: a BLAKE2b hash of the id, never the id, so
 *                           that events still in flight for the user do not bring rows back */
#ifndef ANALYTICS_H
#define ANALYTICS_H

#include <stdbool.h>
#include <stddef.h>
#include "core/buf.h"
#include "svc.h"

#define ANALYTICS_SERVICE "analytics-service"
#define ANALYTICS_PORT 8004

/* "Active" users caused an event in this many seconds before now. */
#define ANALYTICS_ACTIVE_WINDOW_S (24 * 3600)

typedef struct analytics {
    svc *s;
} analytics;

/* Registers the HTTP routes (http.c) and the event handlers (handlers.c). */
int analytics_routes(analytics *a, ew_error *err);
int analytics_handlers(analytics *a, ew_error *err);

/* The user's data as analytics-service holds it, appended to b: {"registered_at": ... or null,
 * "events": [{"event_type", "count", "first_at", "last_at"}, ...]}, or {} (and *found false)
 * when it holds nothing (handlers.c). */
int analytics_user_json(ew_txn *t, const char *user_id, ew_buf *b, bool *found, ew_error *err);

/* Runs a query in t and appends its rows to b as a JSON array of objects, one member per column
 * (text, or null); columns named in ints (NULL-terminated, may be NULL) are written as numbers.
 * *count (may be NULL) gets the number of rows (main.c). */
int analytics_rows_json(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                        const char *const *ints, ew_buf *b, size_t *count, ew_error *err);

/* The erasure key of a user id: 64 hex digits of BLAKE2b-256 (main.c). */
void analytics_user_hash(const char *user_id, char out[65]);

#endif
