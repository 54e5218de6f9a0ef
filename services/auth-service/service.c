/* auth-service: what the service is -- its settings, routes, handlers and tables wired into a
 * svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include <string.h>
#include "auth.h"

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
    if (!(a->ids = auth_ids_new())) return ew_error_set(err, EW_ENOMEM, "out of memory");
    a->reset_ttl_s = ew_config_get_int(c, "AUTH_RESET_TOKEN_TTL_SECONDS");
    /* unknown users cost a login as much as known ones */
    char pw[SVC_SECRET_LEN + 1];
    svc_secret_new(pw);
    if (crypto_pwhash_str(a->dummy_hash, pw, strlen(pw), a->opslimit, a->memlimit))
        return ew_error_set(err, EW_ENOMEM,
                            "cannot hash a password with AUTH_PASSWORD_HASH=%s "
                            "(out of memory?)",
                            cost);
    return 0;
}

static void teardown(svc *s, void *ud)
{
    (void)s;
    auth *a = ud;
    svc_limiter_free(a->limits);
    a->limits = NULL;
    auth_ids_free(a->ids);
    a->ids = NULL;
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
        .schema = auth_schema,
        .routes = auth_routes,
        .handlers = auth_handlers,
        .setup = setup,
        .teardown = teardown,
        .ud = a,
        .sagas = true,
        .gdpr = &auth_gdpr,
    };
}
