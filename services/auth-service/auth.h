/* auth-service: users, passwords, sessions, roles and password resets (docs/services.md).
 *
 * Tables (in the service's database, schema event_store; store.c, created at every start):
 *   auth_users            one row per user: ids, names, password hash, roles (a JSON array),
 *                         status, whether the profile exists
 *   auth_sessions         one row per login: the token's hash, never the token; ended at logout
 *   auth_password_resets  one row per reset request: the token's hash, expiry, use */
#ifndef AUTH_H
#define AUTH_H

#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include "svc.h"
#include "svc_limit.h"

#define AUTH_SERVICE "auth-service"
#define AUTH_PORT 8001

typedef struct auth_ids auth_ids;

typedef struct auth {
    svc *s;
    auth_ids *ids;               /* new users' ids with their data keys made (user_ids.c) */
    unsigned long long opslimit; /* crypto_pwhash limits (AUTH_PASSWORD_HASH) */
    size_t memlimit;
    int64_t token_ttl_s, reset_ttl_s;
    svc_token_keys keys; /* signs access tokens (AUTH_KEY_DIR) */
    /* abuse limits (AUTH_LIMIT_WINDOW_SECONDS, AUTH_LOGIN_FAILURES_PER_*, AUTH_RESETS_PER_*) */
    svc_limiter *limits;
    /* password hashes running now, at most max_hashes (AUTH_MAX_CONCURRENT_HASHES) */
    pthread_mutex_t hash_mu;
    pthread_cond_t hash_cv;
    int hashing, max_hashes;
    int64_t window_s, fail_account, fail_address, resets_address, resets_email,
        registrations_address;
    char dummy_hash[crypto_pwhash_STRBYTES]; /* verified against for unknown users */
} auth;

/* ---- service.c: the service for svc_main(), with a as its state: zeroed, alive as long as the
 * service runs */
svc_def auth_service(auth *a);

/* ---- routes.c and handlers.c: the HTTP routes and the event handlers (svc_def.routes and
 * .handlers: the last entry is {0}) */
extern const svc_http_route auth_routes[];
extern const svc_handler auth_handlers[];
/* The user's data as auth-service holds it (handlers.c): {"user": {...} or null, "sessions": [...],
 * "password_resets": [...]}; the runtime answers the GDPR events from it. */
extern const svc_gdpr auth_gdpr;

/* ---- store.c: the tables and what routes and handlers both write there */

/* CREATE TABLE IF NOT EXISTS statements, NULL-terminated, run at every start (svc_def.schema). */
extern const char *const auth_schema[];

/* Ends tokens of user_id in every service, in t (an HTTP request's transaction, ctx NULL) or in a
 * handler's (ctx): with session_id, that session's; else every token issued until now, and
 * logins from now on get tokens issued after (auth_token_epochs). Publishes user.tokens_revoked. */
int auth_revoke(auth *a, ew_txn *t, ew_handler_ctx *ctx, const char *user_id,
                const char *session_id, const char *reason, ew_error *err);

/* ---- user_ids.c: new users' ids */

auth_ids *auth_ids_new(void); /* NULL when out of memory */
void auth_ids_free(auth_ids *p);
/* A new user id into out, whose data key the key store of db holds already (durable): made in
 * batches the size of the recent demand, one commit of the key store each (ew_store_prepare_keys).
 * Thread-safe. An id is handed out once, and never more than a second after it was made. */
int auth_ids_take(auth_ids *p, ew_store *db, char out[37], ew_error *err);

#endif
