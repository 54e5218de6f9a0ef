/* auth-service: users, passwords, sessions, roles and password resets (docs/services.md).
 *
 * Tables (in the service's database, schema event_store; created at start by main.c):
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

typedef struct auth {
    svc *s;
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

/* Registers the HTTP routes (routes.c) and the event handlers (handlers.c). */
int auth_routes(auth *a, ew_error *err);
int auth_handlers(auth *a, ew_error *err);

/* The user's data as auth-service holds it (handlers.c): {"user": {...} or null, "sessions": [...],
 * "password_resets": [...]}; the runtime answers the GDPR events from it. */
extern const svc_gdpr auth_gdpr;

/* The service for svc_main() (service.c), with a as its state: zeroed, alive as long as
 * the service runs. */
svc_def auth_service(auth *a);

/* A secret token for the client (43 characters of URL-safe base64 for 32 random bytes) and the
 * hash that is stored instead (64 hex digits of BLAKE2b-256). */
#define AUTH_TOKEN_LEN 43
#define AUTH_HASH_LEN 64
void auth_new_token(char token[AUTH_TOKEN_LEN + 1]);
void auth_token_hash(const char *token, char hash[AUTH_HASH_LEN + 1]);

/* Ends tokens of user_id in every service, in t (an HTTP request's transaction, ctx NULL) or in
 * a handler's (ctx): with session_id, that session's; else every token issued until now, and
 * logins from now on get tokens issued after (auth_token_epochs). Publishes user.tokens_revoked. */
int auth_revoke(auth *a, ew_txn *t, ew_handler_ctx *ctx, const char *user_id,
                const char *session_id, const char *reason, ew_error *err);

/* A slot to compute a password hash in: 0, or -1 when none came free within 10 s. Every 0 is
 * followed by auth_hash_end(). Bounds the memory hashes take, whatever the load. */
int auth_hash_begin(auth *a);
void auth_hash_end(auth *a);

/* RFC 3339 UTC of now + offset seconds. */
void auth_time(int64_t offset_s, char out[32]);

#endif
