/* user-service: profiles, preferences and verification (docs/services.md).
 *
 * Tables (in the service's database, schema event_store; created at start by main.c):
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

int user_routes(usvc *u, ew_error *err);
int user_handlers(usvc *u, ew_error *err);

/* The user's data as user-service holds it (handlers.c): {"profile": {...} or null,
 * "preferences": {...} or null}; the runtime answers the GDPR events from it. */
extern const svc_gdpr user_gdpr;

/* The service for svc_main() (service.c), with u as its state: zeroed, alive as long as
 * the service runs. */
svc_def user_service(usvc *u);

/* RFC 3339 UTC now. */
void user_now(char out[32]);

#endif
