/* user-service: what the service is (its tables and setup), for main.c and for the harnesses
 * that run it in-process (tests/fuzz). */
#include "user.h"
#include "eventwire/clock.h"

/* Created at every start, in one transaction; a change is a new statement, never an edit. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.user_profiles ("
    " user_id TEXT PRIMARY KEY,"
    " username TEXT NOT NULL,"
    " email TEXT NOT NULL,"
    " display_name TEXT NOT NULL,"
    " bio TEXT,"
    " location TEXT,"
    " website TEXT,"
    " verified INTEGER NOT NULL DEFAULT 0,"
    " verification_method TEXT,"
    " verified_at TEXT,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.user_preferences ("
    " user_id TEXT PRIMARY KEY,"
    " preferences TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    /* email verification: the hash of each token mailed, never the token */
    "CREATE TABLE IF NOT EXISTS event_store.user_verifications ("
    " token_hash TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " email TEXT NOT NULL,"
    " created_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " used_at TEXT)",
};

void user_now(char out[32])
{
    ew_time_format(ew_now_us(), out);
}

static int setup(svc *s, void *ud, ew_error *err)
{
    usvc *u = ud;
    u->s = s;
    u->verify_ttl_s = ew_config_get_int(svc_config(s), "USER_VERIFICATION_TTL_SECONDS");
    int rc = user_routes(u, err);
    if (!rc) rc = user_handlers(u, err);
    return rc;
}

svc_def user_service(usvc *u)
{
    return (svc_def){
        .name = USER_SERVICE,
        .default_port = USER_PORT,
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .ud = u,
        .gdpr = &user_gdpr,
    };
}
