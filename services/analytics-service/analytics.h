/* analytics-service: counts the events of the system (docs/services-analytics.md).
 *
 * Tables (in the service's database, schema event_store; store.c, created at every start):
 *   analytics_event_counts  one row per event type seen: how many, first and last event time
 *   analytics_users         one row per registered user it tracked (user.registered)
 *   analytics_user_events   one row per (user, event type): which events each user caused, how
 *                           many, first and last time -- the personal data it exports and deletes
 *   analytics_erased        one row per erased user: a BLAKE2b hash of the id, never the id, so
 *                           that events still in flight for the user do not bring rows back
 *   analytics_opted_out     one row per user who withdrew consent for the purpose "analytics"
 *                           (user.consent_changed): the same hash; such a user is not counted */
#ifndef ANALYTICS_H
#define ANALYTICS_H

#include <stdbool.h>
#include <stddef.h>
#include "svc.h"

#define ANALYTICS_SERVICE "analytics-service"
#define ANALYTICS_PORT 8004

/* The consent purpose analytics-service honours (user.consent_changed). */
#define ANALYTICS_PURPOSE "analytics"

/* "Active" users caused an event in this many seconds before now. */
#define ANALYTICS_ACTIVE_WINDOW_S (24 * 3600)

typedef struct analytics {
    svc *s;
} analytics;

/* ---- service.c: the service for svc_main(), with a as its state: zeroed, alive as long as the
 * service runs */
svc_def analytics_service(analytics *a);

/* ---- routes.c and handlers.c: the HTTP routes and the event handlers (svc_def.routes and
 * .handlers: the last entry is {0}) */
extern const svc_http_route analytics_routes[];
extern const svc_handler analytics_handlers[];
/* The user's data as analytics-service holds it (handlers.c): {"registered_at": ... or null,
 * "events": [{"event_type", "count", "first_at", "last_at"}, ...]}, or {} when it holds nothing;
 * the runtime answers the GDPR events from it, GET /stats/users/{user_id} serves it. */
extern const svc_gdpr analytics_gdpr;

/* ---- store.c: the tables */

/* CREATE TABLE IF NOT EXISTS statements, NULL-terminated, run at every start (svc_def.schema). */
extern const char *const analytics_schema[];

/* The erasure key of a user id: 64 hex digits of BLAKE2b-256. */
void analytics_user_hash(const char *user_id, char out[65]);

#endif
