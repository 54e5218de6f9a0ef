/* user-service: profiles, preferences and verification (docs/services.md).
 *
 * Tables (in the service's database, schema event_store; store.c, created at every start):
 *   user_profiles      one row per user, made on user.registered
 *   user_preferences   one row per user: the preferences in force, as a JSON object
 *   user_verifications one row per verification mail: the token's hash, expiry, use */
#ifndef USER_H
#define USER_H

#include "svc.h"

#define USER_SERVICE "user-service"
#define USER_PORT 8002

/* The preferences every new user starts with. */
#define USER_DEFAULT_PREFERENCES                                                                   \
    "{\"language\":\"en\",\"timezone\":\"UTC\",\"newsletter\":false,\"notifications\":true}"

typedef struct usvc {
    svc *s;
    int64_t verify_ttl_s; /* USER_VERIFICATION_TTL_SECONDS */
} usvc;

/* ---- service.c: the service for svc_main(), with u as its state: zeroed, alive as long as the
 * service runs */
svc_def user_service(usvc *u);

/* ---- routes.c and handlers.c: the HTTP routes and the event handlers (svc_def.routes and
 * .handlers: the last entry is {0}) */
extern const svc_http_route user_routes[];
extern const svc_handler user_handlers[];
/* The user's data as user-service holds it (handlers.c): {"profile": {...} or null,
 * "preferences": {...} or null}; the runtime answers the GDPR events from it. */
extern const svc_gdpr user_gdpr;

/* ---- store.c: the tables */

/* CREATE TABLE IF NOT EXISTS statements, NULL-terminated, run at every start (svc_def.schema). */
extern const char *const user_schema[];

#endif
