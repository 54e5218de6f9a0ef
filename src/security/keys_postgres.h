/* eventwire — the key store on PostgreSQL (KEY_STORE_URL=postgresql://...), for keys.c: the same
 * operations as its SQLite file, on tables of the schema key_store, with the same migrations.
 *
 * A handle is one connection, used by one thread at a time (keys.c serialises the calls); a
 * connection that broke is made again, and a statement outside a transaction that met the break
 * is run once more on the new one (a rotation that met it fails, and the next call reconnects). */
#ifndef EW_SECURITY_KEYS_POSTGRES_H
#define EW_SECURITY_KEYS_POSTGRES_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"
#include "eventwire/keys.h"

typedef struct ew__keys_pg ew__keys_pg;
struct pg_result; /* libpq's PGresult */

/* Connects to url and applies the migrations the schema lacks (one process at a time, under an
 * advisory lock). EW_ECONNECT when the server cannot be reached, EW_EIO for a database error.
 * Caller closes it with ew__keys_pg_close(). */
int ew__keys_pg_open(ew__keys_pg **out, const char *url, ew_error *err);
void ew__keys_pg_close(ew__keys_pg *p);

/* The URL without its user and password, for messages. Borrowed until close. */
const char *ew__keys_pg_name(const ew__keys_pg *p);

/* The same of any URL (postgresql://user:password@host/db?... -> postgresql://host/db), malloc'ed
 * (NULL when out of memory). */
char *ew__keys_pg_name_of(const char *url);

/* As ew_keys_add, ew_keys_get and ew_keys_rotate (the key checked already; retire_at_us is when
 * the owner's current keys of that algorithm retire). */
int ew__keys_pg_add(ew__keys_pg *p, const ew_key *key, ew_error *err);
int ew__keys_pg_get(ew__keys_pg *p, const char *kid, ew_key *out, ew_error *err);
int ew__keys_pg_rotate(ew__keys_pg *p, const ew_key *next, int64_t retire_at_us, int *retired,
                       ew_error *err);

/* The keys of owner (NULL: everyone's), by owner then creation time, into *keys (malloc'ed, n of
 * them; the caller zeroes and frees it). */
int ew__keys_pg_list(ew__keys_pg *p, const char *owner, ew_key **keys, size_t *n, ew_error *err);

/* For the other tables of the store (datakeys_postgres.c): runs sql with n text parameters (NULL
 * for SQL NULL) on the connection, made again first if it broke; *out (when out is not NULL)
 * gets the result, which the caller clears. A statement outside a transaction that meets a
 * broken connection is run once more on a new one. */
int ew__keys_pg_exec(ew__keys_pg *p, const char *sql, int n, const char *const *params,
                     struct pg_result **out, const char *what, ew_error *err);

/* VACUUM (FULL, VERBOSE) of table (a trusted name) on the connection: a new file for the table,
 * the old one emptied. *recently_dead gets the number of dead row versions it had to copy into
 * the new file because a snapshot older than their deletion can still see them (the server's
 * "N dead row versions cannot be removed yet"). */
int ew__keys_pg_vacuum_full(ew__keys_pg *p, const char *table, long *recently_dead, ew_error *err);

#endif
