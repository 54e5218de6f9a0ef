/* eventwire — what the key store (keys.c) shares with the other files of src/security that keep
 * tables in it: its SQLite connection, under the handle's lock, and its migrations.
 *
 * A module that keeps its own keys in the store adds a migration at the end of the lists in
 * keys.c and keys_postgres.c (a new number, never a changed one). To run on both databases it
 * reaches its tables through a table of operations, as the keyring does (datakeys.h); the SQLite
 * connection alone is here: every statement between ew__keys_lock() and ew__keys_unlock() runs
 * with the handle to itself. */
#ifndef EW_SECURITY_KEYS_IMPL_H
#define EW_SECURITY_KEYS_IMPL_H

#include <sqlite3.h>
#include "eventwire/keys.h"

/* The connection, locked for the calling thread until ew__keys_unlock(); NULL (the handle still
 * locked) for a store on PostgreSQL, whose data-key tables the keyring reaches through
 * datakeys.h instead. */
sqlite3 *ew__keys_lock(ew_keys *k);
void ew__keys_unlock(ew_keys *k);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK on the locked connection, waiting for other processes'
 * writers up to the busy timeout. */
int ew__keys_begin(ew_keys *k, ew_error *err);
int ew__keys_commit(ew_keys *k, ew_error *err);
void ew__keys_rollback(ew_keys *k);

/* err from the connection's last error, with what was being done. */
int ew__keys_fail(ew_keys *k, const char *what, ew_error *err);

#endif
