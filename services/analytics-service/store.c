/* analytics-service: its store -- the tables in the service's database, and the erasure key by
 * which its handlers find a user in analytics_erased and analytics_opted_out. */
#include <sodium.h>
#include <string.h>
#include "analytics.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
const char *const analytics_schema[] = {
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
    NULL,
};

void analytics_user_hash(const char *user_id, char out[65])
{
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)user_id, strlen(user_id),
                       (const unsigned char *)"eventwire-analytics-erased", 26);
    sodium_bin2hex(out, 65, h, sizeof h);
}
