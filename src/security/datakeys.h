/* eventwire — the data-key tables of the key store (kek and subject_keys, its migration 002), for
 * the keyring (keyring.c): the statements it runs, behind one table of operations, so that one
 * keyring serves a key store on SQLite (datakeys_sqlite.c) and on PostgreSQL
 * (datakeys_postgres.c).
 *
 * A handle is used by one thread at a time (the keyring holds its db_mu around every call). The
 * keyring does the cryptography: what crosses this table is wrapped keys and fingerprints. */
#ifndef EW_SECURITY_DATAKEYS_H
#define EW_SECURITY_DATAKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>
#include "eventwire/error.h"
#include "eventwire/keys.h"
#include "security/keys_postgres.h"

typedef struct ew__datakeys ew__datakeys;

typedef enum { EW__DK_NONE, EW__DK_LIVE, EW__DK_ERASED } ew__dk_state;

/* Called for each live data key by each_live: non-zero stops the walk and is returned. */
typedef int (*ew__dk_fn)(void *ud, const char *subject, const unsigned char *wrapped, size_t len);

typedef struct ew__datakeys_ops {
    /* A write transaction: another process's begin waits until it commits or rolls back (SQLite's
     * BEGIN IMMEDIATE; on PostgreSQL, the lock on the kek row that fingerprint(lock) takes). */
    int (*begin)(ew__datakeys *d, ew_error *err);
    int (*commit)(ew__datakeys *d, ew_error *err);
    void (*rollback)(ew__datakeys *d);
    /* The key-encryption key's fingerprint into out: 1, or 0 when the store has none yet. In a
     * transaction, lock 1 keeps a rotation out until it ends and lock 2 keeps out every other
     * writer of data keys. */
    int (*fingerprint)(ew__datakeys *d, char out[65], int lock, ew_error *err);
    /* Records fp when the store has no fingerprint (replace false: one that another process
     * recorded first stays), or replaces it, noting the rotation's time (replace true). */
    int (*set_fingerprint)(ew__datakeys *d, const char *fp, bool replace, ew_error *err);
    /* The subject's row: EW__DK_NONE, EW__DK_ERASED, or EW__DK_LIVE with its wrapped key in w (cap
     * bytes; *len is 0 for one of another size). */
    int (*read)(ew__datakeys *d, const char *subject, ew__dk_state *state, unsigned char *w,
                size_t cap, size_t *len, ew_error *err);
    /* Inserts the subject's wrapped key, unless the subject has a row already (a key, or a
     * tombstone). */
    int (*insert)(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err);
    /* Destroys the subject's key, keeping the row as its tombstone (made when there was none),
     * so that the key's bytes are in none of the store's files when it returns. Idempotent. */
    int (*shred)(ew__datakeys *d, const char *subject, ew_error *err);
    /* Every live key, to fn; then rewrap replaces one (in the same transaction). */
    int (*each_live)(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err);
    int (*rewrap)(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err);
    int (*count)(ew__datakeys *d, size_t *live, size_t *erased, ew_error *err);
    void (*close)(ew__datakeys *d);
    /* Every erased subject (a tombstone), to fn as (ud, subject, NULL, 0). */
    int (*each_erased)(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err);
    /* Deletes every data key, tombstone and the fingerprint (copied to another store), so that
     * no key is left in the files. */
    int (*clear)(ew__datakeys *d, ew_error *err);
} ew__datakeys_ops;

/* The data-key tables of store (which the caller keeps open, and uses for nothing else while
 * the handle is open): *ops and *out, closed with (*ops)->close(). */
int ew__datakeys_open(ew_keys *store, const ew__datakeys_ops **ops, ew__datakeys **out,
                      ew_error *err);

/* The two implementations, which ew__datakeys_open picks from: on the store's SQLite connection
 * (name: its file, for messages), and on its PostgreSQL connection. */
int ew__datakeys_sqlite(sqlite3 *db, const char *name, const ew__datakeys_ops **ops,
                        ew__datakeys **out, ew_error *err);
int ew__datakeys_postgres(ew__keys_pg *pg, const ew__datakeys_ops **ops, ew__datakeys **out,
                          ew_error *err);

#endif
