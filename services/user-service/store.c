/* user-service: its store -- the tables in the service's database. */
#include "user.h"

/* Created at every start, in one transaction; a change is a new statement, never an edit. */
const char *const user_schema[] = {
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
    NULL,
};
