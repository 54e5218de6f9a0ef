/* auth-service: what the service is (its tables, settings and setup), for main.c and for
 * the harnesses that run it in-process (tests/fuzz). */
#include <stdlib.h>
#include <stdio.h>
#include <time.h>
#include <string.h>
#include "auth.h"
#include "eventwire/clock.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table
 * is a new statement here (ALTER TABLE ... guarded, or a new table), never an edit of these. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.auth_users ("
    " user_id TEXT PRIMARY KEY,"
    " username TEXT NOT NULL,"
    " username_key TEXT NOT NULL UNIQUE,"
    " email TEXT NOT NULL UNIQUE,"
    " password_hash TEXT NOT NULL,"
    " roles TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('active', 'deactivated')),"
    " status_reason TEXT,"
    " profile_created INTEGER NOT NULL DEFAULT 0,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.auth_sessions ("
    " session_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE,"
    " ip_address TEXT,"
    " user_agent TEXT,"
    " created_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " ended_at TEXT,"
    " UNIQUE (user_id, session_id))",
    "CREATE TABLE IF NOT EXISTS event_store.auth_password_resets ("
    " request_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE,"
    " created_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " used_at TEXT,"
    " UNIQUE (user_id, request_id))",
    /* tokens of the user issued (iat) before not_before are revoked everywhere */
    "CREATE TABLE IF NOT EXISTS event_store.auth_token_epochs ("
    " user_id TEXT PRIMARY KEY,"
    " not_before BIGINT NOT NULL)",
};

void auth_new_token(char token[AUTH_TOKEN_LEN + 1])
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(token, AUTH_TOKEN_LEN + 1, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
}

void auth_token_hash(const char *token, char hash[AUTH_HASH_LEN + 1])
{
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)token, strlen(token), NULL, 0);
    sodium_bin2hex(hash, AUTH_HASH_LEN + 1, h, sizeof h);
}

int auth_revoke(auth *a, ew_txn *t, ew_handler_ctx *ctx, const char *user_id,
                const char *session_id, const char *reason, ew_error *err)
{
    /* Tokens carry whole seconds: everything issued up to now is before now + 1, and a login
     * after this gets iat >= not_before (routes.c), so that it is not refused. A second
     * revocation of the user within the same second must also end the tokens issued after the
     * first one, which have iat = its not_before: it goes one past the one before. (Each
     * revocation in one second moves not_before a second ahead; logins then get an iat ahead of
     * the clock, which other services accept up to SVC_TOKEN_LEEWAY_S.) */
    int64_t nb = ew_now_us() / 1000000 + 1;
    const char *who[] = {user_id};
    svc_row prev = {0};
    int rc =
        svc_query_row(t, "SELECT not_before FROM event_store.auth_token_epochs WHERE user_id = $1",
                      who, 1, &prev, err);
    if (rc) return rc;
    if (prev.found && prev.v[0] && strtoll(prev.v[0], NULL, 10) >= nb)
        nb = strtoll(prev.v[0], NULL, 10) + 1;
    svc_row_free(&prev);
    char nbs[24];
    snprintf(nbs, sizeof nbs, "%lld", (long long)nb);
    const char *p[] = {user_id, nbs};
    if (!session_id) {
        rc = ew_txn_exec(t, "DELETE FROM event_store.auth_token_epochs WHERE user_id = $1", p, 1,
                         NULL, err);
        if (!rc)
            rc = ew_txn_exec(t,
                             "INSERT INTO event_store.auth_token_epochs (user_id, not_before) "
                             "VALUES ($1, $2)",
                             p, 2, NULL, err);
    }
    ew_user_tokens_revoked ev = {
        .user_id = user_id, .session_id = session_id, .not_before = nb, .reason = reason};
    if (!rc)
        rc = ctx ? svc_ctx_emit(a->s, ctx, EW_T_USER_TOKENS_REVOKED, &ev, user_id, err)
                 : svc_emit(a->s, NULL, t, EW_T_USER_TOKENS_REVOKED, &ev, user_id, err);
    /* here at once (too early is harmless: the transaction may still fail, and the tokens were
     * meant to end); elsewhere when the event arrives */
    if (!rc) svc_revoke(a->s, user_id, session_id, nb);
    return rc;
}

int auth_hash_begin(auth *a)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    int rc = 0;
    pthread_mutex_lock(&a->hash_mu);
    while (a->hashing >= a->max_hashes && rc == 0)
        rc = pthread_cond_timedwait(&a->hash_cv, &a->hash_mu, &until);
    if (a->hashing < a->max_hashes) {
        a->hashing++;
        rc = 0;
    } else {
        rc = -1;
    }
    pthread_mutex_unlock(&a->hash_mu);
    return rc;
}

void auth_hash_end(auth *a)
{
    pthread_mutex_lock(&a->hash_mu);
    a->hashing--;
    pthread_cond_signal(&a->hash_cv);
    pthread_mutex_unlock(&a->hash_mu);
}

void auth_time(int64_t offset_s, char out[32])
{
    ew_time_format(ew_now_us() + offset_s * 1000000, out);
}

static int setup(svc *s, void *ud, ew_error *err)
{
    auth *a = ud;
    a->s = s;
    const ew_config *c = svc_config(s);
    const char *cost = ew_config_get(c, "AUTH_PASSWORD_HASH");
    if (!strcmp(cost, "min")) {
        a->opslimit = crypto_pwhash_OPSLIMIT_MIN;
        a->memlimit = crypto_pwhash_MEMLIMIT_MIN;
        svc_log(s, EW_LOG_WARN, "AUTH_PASSWORD_HASH=min: passwords are hashed for tests only");
    } else if (!strcmp(cost, "moderate")) {
        a->opslimit = crypto_pwhash_OPSLIMIT_MODERATE;
        a->memlimit = crypto_pwhash_MEMLIMIT_MODERATE;
    } else if (!strcmp(cost, "sensitive")) {
        a->opslimit = crypto_pwhash_OPSLIMIT_SENSITIVE;
        a->memlimit = crypto_pwhash_MEMLIMIT_SENSITIVE;
    } else {
        a->opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
        a->memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    }
    a->token_ttl_s = svc_token_ttl(s);
    int krc = svc_token_keys_open(&a->keys, svc_key_dir(s), err);
    if (krc) return krc;
    a->max_hashes = (int)ew_config_get_int(c, "AUTH_MAX_CONCURRENT_HASHES");
    pthread_mutex_init(&a->hash_mu, NULL);
    pthread_cond_init(&a->hash_cv, NULL);
    a->window_s = ew_config_get_int(c, "AUTH_LIMIT_WINDOW_SECONDS");
    a->fail_account = ew_config_get_int(c, "AUTH_LOGIN_FAILURES_PER_ACCOUNT");
    a->fail_address = ew_config_get_int(c, "AUTH_LOGIN_FAILURES_PER_ADDRESS");
    a->resets_address = ew_config_get_int(c, "AUTH_RESETS_PER_ADDRESS");
    a->resets_email = ew_config_get_int(c, "AUTH_RESETS_PER_EMAIL");
    a->registrations_address = ew_config_get_int(c, "AUTH_REGISTRATIONS_PER_ADDRESS");
    if (!(a->limits = svc_limiter_new(16384))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    a->reset_ttl_s = ew_config_get_int(c, "AUTH_RESET_TOKEN_TTL_SECONDS");
    /* unknown users cost a login as much as known ones */
    char pw[AUTH_TOKEN_LEN + 1];
    auth_new_token(pw);
    if (crypto_pwhash_str(a->dummy_hash, pw, strlen(pw), a->opslimit, a->memlimit))
        return ew_error_set(err, EW_ENOMEM,
                            "cannot hash a password with AUTH_PASSWORD_HASH=%s "
                            "(out of memory?)",
                            cost);
    int rc = auth_routes(a, err);
    if (!rc) rc = auth_handlers(a, err);
    return rc;
}

static void teardown(svc *s, void *ud)
{
    (void)s;
    auth *a = ud;
    svc_limiter_free(a->limits);
    a->limits = NULL;
    if (a->max_hashes) {
        pthread_mutex_destroy(&a->hash_mu);
        pthread_cond_destroy(&a->hash_cv);
    }
    sodium_memzero(&a->keys, sizeof a->keys);
}

svc_def auth_service(auth *a)
{
    return (svc_def){
        .name = AUTH_SERVICE,
        .default_port = AUTH_PORT,
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .teardown = teardown,
        .ud = a,
        .sagas = true,
        .gdpr = &auth_gdpr,
    };
}
