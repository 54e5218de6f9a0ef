/* eventwire — the key store: every key of a deployment in one database.
 *
 * One store serves every kind of key: the services' bus keys (the MAC keys and the Ed25519
 * public keys that authenticate events, docs/security.md#events) and, beside them, whatever
 * other key tables later migrations add. It is an SQLite file, by default `keys.db` beside the
 * event store's file (KEY_STORE_URL, docs/configuration.md); the file is made 0600 in a folder
 * made 0700, and opening a file that others can read, or that is not this user's, is refused.
 * With KEY_STORE_URL=postgresql://... it is the schema key_store of that database instead, with
 * the same tables and migrations (docs/bus-auth.md#the-key-store).
 * The schema is the key store's own (table key_store_migrations numbers its migrations; they
 * are listed in src/security/keys.c and only grow at the end), not the event store's.
 *
 * A key is named by its id (kid: 16 lowercase hex digits, random) and belongs to an owner
 * ("service:auth-service"). Its material is what verifiers need: the MAC key itself for
 * EW_KEY_MAC, the public key for EW_KEY_ED25519 (whose secret key lives only in the owner's key
 * file). A key is current until it is retired: from then on (retired_us) it no longer
 * authenticates what is made after that moment, but still verifies what was made before —
 * so that replays and dead-letter retries of old events still verify. Rotation retires the old
 * key at now + grace, so that old and new are both accepted for the grace period.
 *
 * Threads: a handle may be used from several threads (calls are serialised on it); several
 * processes may open the same file. */
#ifndef EVENTWIRE_KEYS_H
#define EVENTWIRE_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/config.h"
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_keys ew_keys;

#define EW_KEY_ID_LEN 16     /* hex digits of a kid */
#define EW_KEY_OWNER_MAX 128 /* the longest owner, with its NUL */
#define EW_KEY_MATERIAL_MAX 64

typedef enum ew_key_alg {
    EW_KEY_MAC = 1,     /* keyed BLAKE2b-256 (crypto_generichash), 32-byte key */
    EW_KEY_ED25519 = 2, /* Ed25519 (crypto_sign); the store keeps the 32-byte public key */
} ew_key_alg;

/* "mac", "ed25519"; NULL for another value. Static strings. */
const char *ew_key_alg_name(ew_key_alg alg);
/* The other way: 0 when name is neither. */
ew_key_alg ew_key_alg_from_name(const char *name);

/* One key as the store keeps it. */
typedef struct ew_key {
    char kid[EW_KEY_ID_LEN + 1];
    char owner[EW_KEY_OWNER_MAX];
    ew_key_alg alg;
    unsigned char material[EW_KEY_MATERIAL_MAX]; /* the MAC key, or the Ed25519 public key */
    size_t material_len;
    int64_t created_us;
    int64_t retired_us; /* 0: current; else the moment it stops authenticating new things */
} ew_key;

/* Is key current at now_us (not retired, or retired later than now_us)? */
int ew_key_current(const ew_key *key, int64_t now_us);

typedef struct ew_keys_options {
    const ew_config *config; /* KEY_STORE_URL, EVENT_STORE_URL; NULL: the defaults */
    const char *url;         /* overrides KEY_STORE_URL when not NULL */
} ew_keys_options;

/* The key store's URL for cfg: KEY_STORE_URL, or when it is empty sqlite:DIR/keys/keys.db where
 * DIR is the folder of EVENT_STORE_URL's SQLite file (sqlite:var/keys/keys.db when the event
 * store is not SQLite). Into buf (n bytes); returns buf, or NULL when it does not fit. */
const char *ew_keys_default_url(const ew_config *cfg, char *buf, size_t n);

/* Opens the store (creating the file 0600, its folder 0700, when missing; on PostgreSQL the
 * schema key_store) and applies pending migrations. Caller closes it with ew_keys_close().
 * EW_ECONFIG for a URL that is neither sqlite:PATH nor postgresql://... or a file that others may
 * read or that another user owns, EW_ECONNECT for a PostgreSQL server that cannot be reached,
 * EW_EIO for a database error. */
int ew_keys_open(ew_keys **out, const ew_keys_options *opts, ew_error *err);
void ew_keys_close(ew_keys *k);

/* The file path of the store; on PostgreSQL its URL without user, password and parameters.
 * Borrowed until close. */
const char *ew_keys_path(const ew_keys *k);

/* Adds a key (its kid must be new: EW_EEXIST otherwise). key is copied. */
int ew_keys_add(ew_keys *k, const ew_key *key, ew_error *err);

/* The key kid into *out; EW_ENOTFOUND when the store has none. */
int ew_keys_get(ew_keys *k, const char *kid, ew_key *out, ew_error *err);

/* Called for each key listed; the key is borrowed for the call. Nonzero stops the listing and is
 * returned. */
typedef int (*ew_keys_fn)(void *ud, const ew_key *key);

/* Every key of owner (NULL: of everyone), by owner then creation time. */
int ew_keys_list(ew_keys *k, const char *owner, ew_keys_fn fn, void *ud, ew_error *err);

/* Rotation, in one transaction: every key of next->owner with next->alg that is not retired yet
 * is retired at now + grace_us, and next is added. *retired (may be NULL) gets how many were. */
int ew_keys_rotate(ew_keys *k, const ew_key *next, int64_t grace_us, int *retired, ew_error *err);

/* Makes a new key of alg for owner into *key (random kid; for EW_KEY_MAC a random key, for
 * EW_KEY_ED25519 a key pair whose 64-byte secret key goes into sk, which may be NULL for
 * EW_KEY_MAC). Does not add it to any store. */
int ew_key_generate(ew_key *key, const char *owner, ew_key_alg alg,
                    unsigned char sk[EW_KEY_MATERIAL_MAX], ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
