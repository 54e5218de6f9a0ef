/* notification-service: its store -- the tables in the service's database. */
#include "notification.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
const char *const notif_schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.notification_users ("
    " user_id TEXT PRIMARY KEY,"
    " email TEXT NOT NULL,"
    " username TEXT NOT NULL,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.notification_messages ("
    " message_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " template TEXT NOT NULL,"
    " ref TEXT NOT NULL,"
    " email TEXT NOT NULL,"
    " subject TEXT NOT NULL,"
    " transport TEXT NOT NULL CHECK (transport IN ('smtp', 'file')),"
    " sent_at TEXT NOT NULL,"
    " UNIQUE (user_id, template, ref))",
    /* A welcome owed to a user whose address is not known yet (user.profile_created handled
     * before user.registered: their subscriptions run apart); sent when the address comes. */
    "CREATE TABLE IF NOT EXISTS event_store.notification_pending_welcomes ("
    " user_id TEXT PRIMARY KEY,"
    " display_name TEXT,"
    " created_at TEXT NOT NULL)",
    /* An export's link owed to a user whose address is not known yet (user.data_export_completed
     * handled before user.registered); mailed and deleted when the address comes, deleted with
     * the user's data, dropped once expired. */
    "CREATE TABLE IF NOT EXISTS event_store.notification_pending_exports ("
    " export_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " download_url TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " created_at TEXT NOT NULL)",
    NULL,
};
