/* analytics-service: what the service is (its tables and setup), for main.c and for
 * the harnesses that run it in-process (tests/fuzz). */
#include <sodium.h>
#include <string.h>
#include "analytics.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.analytics_event_counts ("
    " event_type TEXT PRIMARY KEY,"
    " total BIGINT NOT NULL,"
    " first_at TEXT NOT NULL,"
    " last_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_users ("
    " user_id TEXT PRIMARY KEY,"
    " registered_at TEXT NOT NULL,"
    " tracked_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_user_events ("
    " user_id TEXT NOT NULL,"
    " event_type TEXT NOT NULL,"
    " total BIGINT NOT NULL,"
    " first_at TEXT NOT NULL,"
    " last_at TEXT NOT NULL,"
    " PRIMARY KEY (user_id, event_type))",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_erased ("
    " user_hash TEXT PRIMARY KEY,"
    " erased_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_opted_out ("
    " user_hash TEXT PRIMARY KEY,"
    " opted_out_at TEXT NOT NULL)",
};

void analytics_user_hash(const char *user_id, char out[65])
{
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)user_id, strlen(user_id),
                       (const unsigned char *)"eventwire-analytics-erased", 26);
    sodium_bin2hex(out, 65, h, sizeof h);
}

/* ---- the process ----------------------------------------------------------------------------- */

static int setup(svc *s, void *ud, ew_error *err)
{
    analytics *a = ud;
    a->s = s;
    int rc = analytics_routes(a, err);
    if (!rc) rc = analytics_handlers(a, err);
    return rc;
}

svc_def analytics_service(analytics *a)
{
    return (svc_def){
        .name = ANALYTICS_SERVICE,
        .default_port = ANALYTICS_PORT,
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .ud = a,
        .gdpr = &analytics_gdpr,
        /* counts what still arrives about an erased user, anonymously; its own tombstones
         * (analytics_erased, by hash) keep the user's rows from coming back */
        .runs_for_erased_users = true,
    };
}
