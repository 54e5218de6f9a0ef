/* eventwire — the key store (eventwire/keys.h): one SQLite file of keys, private to its user,
 * with migrations of its own; or the same tables on PostgreSQL (keys_postgres.c). */
#include "eventwire/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/files.h"
#include "eventwire/clock.h"
#include "store/migrations.h" /* ew_migration: number, name, SQL */
#include "security/datakeys.h"
#include "security/keys_impl.h"
#include "security/keys_postgres.h"

#define BUSY_TIMEOUT_MS 10000

/* The key store's migrations, applied in order at open; a number is never reused or changed, and
 * new ones go at the end. */
static const ew_migration migrations[] = {
    {1, "001_keys",
     "CREATE TABLE keys ("
     " kid TEXT PRIMARY KEY,"
     " owner TEXT NOT NULL,"
     " alg TEXT NOT NULL,"
     " material BLOB NOT NULL,"
     " created_us INTEGER NOT NULL,"
     " retired_us INTEGER NOT NULL DEFAULT 0);"
     "CREATE INDEX keys_owner ON keys (owner, created_us);"},
    /* field encryption (keyring.c): the fingerprint of the key-encryption key that wraps the
     * data keys, and each subject's wrapped data key (NULL once erased, the row kept as the
     * subject's tombstone) */
    {2, "002_subject_keys",
     "CREATE TABLE kek ("
     " id INTEGER PRIMARY KEY CHECK (id = 1),"
     " fingerprint TEXT NOT NULL,"
     " rotated_at INTEGER);"
     "CREATE TABLE subject_keys ("
     " subject TEXT PRIMARY KEY,"
     " wrapped BLOB,"
     " created_at INTEGER NOT NULL,"
     " erased_at INTEGER);"},
};
#define NMIGRATIONS (sizeof migrations / sizeof migrations[0])

struct ew_keys {
    sqlite3 *db;        /* an SQLite store; NULL on PostgreSQL */
    ew__keys_pg *pg;    /* a PostgreSQL store; NULL on SQLite */
    pthread_mutex_t mu; /* serialises the calls on either */
    char *path;
};

/* Another connection holds the lock the statement needs: with the rollback journal, a reader
 * waits while a writer commits (which syncs the disk several times), and a commit waits for the
 * readers to end. SQLite's own busy timeout sleeps 1, 2, 5, 10 ... up to 100 ms at a time, which
 * every service paid in latency when it read a new user's key while auth-service made another's;
 * here a waiter sleeps 50 us, doubling to 1.6 ms, and gives up after BUSY_TIMEOUT_MS (as the
 * store's busy_wait in src/store/sqlite.c). */
static int busy_wait(void *ud, int count)
{
    (void)ud;
    static const int64_t limit_us = (int64_t)BUSY_TIMEOUT_MS * 1000;
    int64_t slept = 0, step = 50;
    for (int i = 0; i < count && slept < limit_us; i++) {
        slept += step;
        if (step < 1600) step *= 2;
    }
    if (slept >= limit_us) return 0;
    usleep((useconds_t)step);
    return 1;
}

const char *ew_key_alg_name(ew_key_alg alg)
{
    switch (alg) {
    case EW_KEY_MAC:
        return "mac";
    case EW_KEY_ED25519:
        return "ed25519";
    }
    return NULL;
}

ew_key_alg ew_key_alg_from_name(const char *name)
{
    if (name && !strcmp(name, "mac")) return EW_KEY_MAC;
    if (name && !strcmp(name, "ed25519")) return EW_KEY_ED25519;
    return 0;
}

int ew_key_current(const ew_key *key, int64_t now_us)
{
    return key->retired_us == 0 || now_us < key->retired_us;
}

/* ---- the connection, for this file and the others of src/security ------------------------- */

sqlite3 *ew__keys_lock(ew_keys *k)
{
    pthread_mutex_lock(&k->mu);
    return k->db;
}

void ew__keys_unlock(ew_keys *k)
{
    pthread_mutex_unlock(&k->mu);
}

int ew__keys_fail(ew_keys *k, const char *what, ew_error *err)
{
    int code = sqlite3_extended_errcode(k->db);
    return ew_error_set(err, (code & 0xff) == SQLITE_CONSTRAINT ? EW_EEXIST : EW_EIO,
                        "key store %s: %s: %s", k->path, what, sqlite3_errmsg(k->db));
}

static int exec(ew_keys *k, const char *sql, const char *what, ew_error *err)
{
    if (sqlite3_exec(k->db, sql, NULL, NULL, NULL) != SQLITE_OK) return ew__keys_fail(k, what, err);
    return 0;
}

int ew__keys_begin(ew_keys *k, ew_error *err)
{
    return exec(k, "BEGIN IMMEDIATE", "begin", err);
}

/* A COMMIT that fails may leave the transaction open, holding the file's write lock against
 * every other connection (SQLITE_BUSY leaves it so by design): it is rolled back. */
int ew__keys_commit(ew_keys *k, ew_error *err)
{
    int rc = exec(k, "COMMIT", "commit", err);
    if (rc && !sqlite3_get_autocommit(k->db)) ew__keys_rollback(k);
    return rc;
}

void ew__keys_rollback(ew_keys *k)
{
    sqlite3_exec(k->db, "ROLLBACK", NULL, NULL, NULL);
}

int ew__datakeys_open(ew_keys *k, const ew__datakeys_ops **ops, ew__datakeys **out, ew_error *err)
{
    return k->pg ? ew__datakeys_postgres(k->pg, ops, out, err)
                 : ew__datakeys_sqlite(k->db, k->path, ops, out, err);
}

/* ---- open ----------------------------------------------------------------------------------- */

const char *ew_keys_default_url(const ew_config *cfg, char *buf, size_t n)
{
    const char *url = cfg ? ew_config_get(cfg, "KEY_STORE_URL") : NULL;
    int w;
    if (url && *url) {
        w = snprintf(buf, n, "%s", url);
    } else {
        const char *store = cfg ? ew_config_get(cfg, "EVENT_STORE_URL") : "sqlite:var/eventwire.db";
        if (!store || strncmp(store, "sqlite:", 7) != 0) {
            w = snprintf(buf, n, "sqlite:var/keys/keys.db");
        } else {
            const char *path = store + 7, *slash = strrchr(path, '/');
            w = snprintf(buf, n, "sqlite:%.*skeys/keys.db", slash ? (int)(slash - path + 1) : 0,
                         path);
        }
    }
    return w < 0 || (size_t)w >= n ? NULL : buf;
}

/* The file exists and is ours and private, or it is made so (empty, 0600). */
static int private_file(const char *path, ew_error *err)
{
    if (ew_mkdirs_for(path))
        return ew_error_set(err, EW_ECONFIG, "key store %s: cannot create its folder: %s", path,
                            strerror(errno));
    struct stat st;
    if (ew_file_create_empty(path, 0600) || lstat(path, &st))
        return ew_error_set(err, EW_ECONFIG, "key store %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ew_error_set(err, EW_ECONFIG, "key store %s: not a file", path);
    if (st.st_uid != geteuid())
        return ew_error_set(err, EW_ECONFIG, "key store %s: belongs to another user", path);
    if (st.st_mode & 077)
        return ew_error_set(err, EW_ECONFIG,
                            "key store %s: others may read it (mode %03o): it must be 0600", path,
                            (unsigned)(st.st_mode & 0777));
    return 0;
}

/* 1 when migration number is applied, 0 when not, < 0 with err. */
static int applied(ew_keys *k, int number, ew_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(k->db, "SELECT 1 FROM key_store_migrations WHERE number = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return ew__keys_fail(k, "reading key_store_migrations", err);
    sqlite3_bind_int(st, 1, number);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return 1;
    return rc == SQLITE_DONE ? 0 : ew__keys_fail(k, "reading key_store_migrations", err);
}

/* Applies the migrations a store lacks, each in a write transaction of its own; a store that has
 * them all is only read. */
static int migrate(ew_keys *k, ew_error *err)
{
    int rc = exec(k,
                  "CREATE TABLE IF NOT EXISTS key_store_migrations ("
                  " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_us INTEGER NOT NULL)",
                  "creating key_store_migrations", err);
    for (size_t i = 0; !rc && i < NMIGRATIONS; i++) {
        int done = applied(k, migrations[i].number, err);
        if (done) {
            rc = done < 0 ? done : 0;
            continue;
        }
        if ((rc = ew__keys_begin(k, err))) break;
        done = applied(k, migrations[i].number, err); /* another process may have, meanwhile */
        rc = done < 0 ? done : 0;
        if (!rc && !done) {
            char what[96];
            sqlite3_stmt *st = NULL;
            snprintf(what, sizeof what, "migration %s", migrations[i].name);
            rc = exec(k, migrations[i].sql, what, err);
            if (!rc &&
                sqlite3_prepare_v2(k->db,
                                   "INSERT INTO key_store_migrations (number, name, applied_us) "
                                   "VALUES (?1, ?2, ?3)",
                                   -1, &st, NULL) == SQLITE_OK) {
                sqlite3_bind_int(st, 1, migrations[i].number);
                sqlite3_bind_text(st, 2, migrations[i].name, -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, 3, ew_now_us());
                if (sqlite3_step(st) != SQLITE_DONE) rc = ew__keys_fail(k, what, err);
                sqlite3_finalize(st);
            } else if (!rc) {
                rc = ew__keys_fail(k, what, err);
            }
        }
        if (rc)
            ew__keys_rollback(k);
        else
            rc = ew__keys_commit(k, err);
    }
    return rc;
}

int ew_keys_open(ew_keys **out, const ew_keys_options *opts, ew_error *err)
{
    static const ew_keys_options none;
    if (!out) return ew_error_set(err, EW_EINVAL, "ew_keys_open: out is NULL");
    if (!opts) opts = &none;
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium did not start");
    char def[4096];
    const char *url = opts->url ? opts->url : ew_keys_default_url(opts->config, def, sizeof def);
    if (!url) return ew_error_set(err, EW_ECONFIG, "KEY_STORE_URL: the path is too long");
    if (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11)) {
        ew_keys *k = calloc(1, sizeof *k);
        if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
        int rc = ew__keys_pg_open(&k->pg, url, err);
        if (!rc && !(k->path = strdup(ew__keys_pg_name(k->pg))))
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        pthread_mutex_init(&k->mu, NULL);
        if (rc) {
            ew_keys_close(k);
            return rc;
        }
        *out = k;
        return 0;
    }
    if (strncmp(url, "sqlite:", 7) != 0 || !url[7] || !strcmp(url + 7, ":memory:"))
        return ew_error_set(err, EW_ECONFIG,
                            "KEY_STORE_URL: '%.100s' is not sqlite:PATH or postgresql://...", url);
    const char *path = url + 7;
    int rc = private_file(path, err);
    if (rc) return rc;

    ew_keys *k = calloc(1, sizeof *k);
    if (!k || !(k->path = strdup(path))) {
        free(k);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&k->mu, NULL);
    if (sqlite3_open_v2(path, &k->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
                        NULL) != SQLITE_OK) {
        rc = ew_error_set(err, EW_EIO, "key store %s: %s", path,
                          k->db ? sqlite3_errmsg(k->db) : "cannot open it");
        goto fail;
    }
    sqlite3_busy_handler(k->db, busy_wait, NULL);
    /* No WAL: its -wal and -shm files would be made with the process's umask, not 0600. */
    if ((rc = exec(k, "PRAGMA journal_mode=DELETE", "journal mode", err))) goto fail;
    if ((rc = migrate(k, err))) goto fail;
    *out = k;
    return 0;
fail:
    ew_keys_close(k);
    return rc;
}

void ew_keys_close(ew_keys *k)
{
    if (!k) return;
    sqlite3_close(k->db);
    ew__keys_pg_close(k->pg);
    pthread_mutex_destroy(&k->mu);
    free(k->path);
    free(k);
}

const char *ew_keys_path(const ew_keys *k)
{
    return k->path;
}

/* ---- keys ----------------------------------------------------------------------------------- */

static int key_ok(const ew_key *key, ew_error *err)
{
    if (!key) return ew_error_set(err, EW_EINVAL, "no key");
    if (strlen(key->kid) != EW_KEY_ID_LEN || strspn(key->kid, "0123456789abcdef") != EW_KEY_ID_LEN)
        return ew_error_set(err, EW_EINVAL, "a key id is %d lowercase hex digits", EW_KEY_ID_LEN);
    if (!key->owner[0] || memchr(key->owner, 0, sizeof key->owner) == NULL)
        return ew_error_set(err, EW_EINVAL, "a key needs an owner");
    size_t want = key->alg == EW_KEY_MAC       ? crypto_generichash_KEYBYTES
                  : key->alg == EW_KEY_ED25519 ? crypto_sign_PUBLICKEYBYTES
                                               : 0;
    if (!want) return ew_error_set(err, EW_EINVAL, "key %s: unknown algorithm", key->kid);
    if (key->material_len != want)
        return ew_error_set(err, EW_EINVAL, "key %s: %s material is %zu bytes, not %zu", key->kid,
                            ew_key_alg_name(key->alg), want, key->material_len);
    return 0;
}

static int insert(ew_keys *k, const ew_key *key, ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(k->db,
                           "INSERT INTO keys (kid, owner, alg, material, created_us, retired_us) "
                           "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK)
        return ew__keys_fail(k, "adding a key", err);
    sqlite3_bind_text(st, 1, key->kid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key->owner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ew_key_alg_name(key->alg), -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, key->material, (int)key->material_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, key->created_us ? key->created_us : ew_now_us());
    sqlite3_bind_int64(st, 6, key->retired_us);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ew__keys_fail(k, "adding a key", err);
    sqlite3_finalize(st);
    if (rc == EW_EEXIST) ew_error_set(err, rc, "key store: key %s exists already", key->kid);
    return rc;
}

int ew_keys_add(ew_keys *k, const ew_key *key, ew_error *err)
{
    int rc = key_ok(key, err);
    if (rc) return rc;
    ew__keys_lock(k);
    rc = k->pg ? ew__keys_pg_add(k->pg, key, err) : insert(k, key, err);
    ew__keys_unlock(k);
    return rc;
}

static void row_to_key(sqlite3_stmt *st, ew_key *key)
{
    memset(key, 0, sizeof *key);
    snprintf(key->kid, sizeof key->kid, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(key->owner, sizeof key->owner, "%s", (const char *)sqlite3_column_text(st, 1));
    key->alg = ew_key_alg_from_name((const char *)sqlite3_column_text(st, 2));
    int n = sqlite3_column_bytes(st, 3);
    if (n > 0 && n <= EW_KEY_MATERIAL_MAX) {
        memcpy(key->material, sqlite3_column_blob(st, 3), (size_t)n);
        key->material_len = (size_t)n;
    }
    key->created_us = sqlite3_column_int64(st, 4);
    key->retired_us = sqlite3_column_int64(st, 5);
}

#define KEY_COLUMNS "kid, owner, alg, material, created_us, retired_us"

int ew_keys_get(ew_keys *k, const char *kid, ew_key *out, ew_error *err)
{
    if (!kid) return ew_error_set(err, EW_EINVAL, "ew_keys_get: kid is NULL");
    ew__keys_lock(k);
    sqlite3_stmt *st;
    int rc = 0;
    if (k->pg) {
        rc = ew__keys_pg_get(k->pg, kid, out, err);
    } else if (sqlite3_prepare_v2(k->db, "SELECT " KEY_COLUMNS " FROM keys WHERE kid = ?1", -1, &st,
                                  NULL) != SQLITE_OK) {
        rc = ew__keys_fail(k, "reading a key", err);
    } else {
        sqlite3_bind_text(st, 1, kid, -1, SQLITE_STATIC);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            row_to_key(st, out);
        else if (s == SQLITE_DONE)
            rc = ew_error_set(err, EW_ENOTFOUND, "key store: no key %.32s", kid);
        else
            rc = ew__keys_fail(k, "reading a key", err);
        sqlite3_finalize(st);
    }
    ew__keys_unlock(k);
    return rc;
}

int ew_keys_list(ew_keys *k, const char *owner, ew_keys_fn fn, void *ud, ew_error *err)
{
    if (!fn) return ew_error_set(err, EW_EINVAL, "ew_keys_list: no callback");
    /* Read under the lock, called without it (fn may use the store). */
    ew_key *keys = NULL;
    size_t n = 0, cap = 0;
    ew__keys_lock(k);
    sqlite3_stmt *st;
    int rc = 0;
    if (k->pg) {
        rc = ew__keys_pg_list(k->pg, owner, &keys, &n, err);
    } else if (sqlite3_prepare_v2(k->db,
                                  "SELECT " KEY_COLUMNS " FROM keys WHERE ?1 IS NULL OR owner = ?1 "
                                  "ORDER BY owner, created_us, kid",
                                  -1, &st, NULL) != SQLITE_OK) {
        rc = ew__keys_fail(k, "listing keys", err);
    } else {
        if (owner) sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
        int s;
        while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == cap) {
                size_t nc = cap ? 2 * cap : 16;
                ew_key *nk = realloc(keys, nc * sizeof *nk);
                if (!nk) {
                    rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                    break;
                }
                keys = nk;
                cap = nc;
            }
            row_to_key(st, &keys[n++]);
        }
        if (!rc && s != SQLITE_DONE) rc = ew__keys_fail(k, "listing keys", err);
        sqlite3_finalize(st);
    }
    ew__keys_unlock(k);
    for (size_t i = 0; !rc && i < n; i++)
        rc = fn(ud, &keys[i]);
    if (keys) sodium_memzero(keys, n * sizeof *keys);
    free(keys);
    return rc;
}

int ew_keys_rotate(ew_keys *k, const ew_key *next, int64_t grace_us, int *retired, ew_error *err)
{
    int rc = key_ok(next, err);
    if (rc) return rc;
    if (grace_us < 0) return ew_error_set(err, EW_EINVAL, "a grace period is not negative");
    ew__keys_lock(k);
    if (k->pg) {
        rc = ew__keys_pg_rotate(k->pg, next, ew_now_us() + grace_us, retired, err);
        goto out;
    }
    if ((rc = ew__keys_begin(k, err))) goto out;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(k->db,
                           "UPDATE keys SET retired_us = ?3 WHERE owner = ?1 AND alg = ?2 AND "
                           "(retired_us = 0 OR retired_us > ?3)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = ew__keys_fail(k, "retiring keys", err);
    } else {
        sqlite3_bind_text(st, 1, next->owner, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, ew_key_alg_name(next->alg), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, ew_now_us() + grace_us);
        if (sqlite3_step(st) != SQLITE_DONE) rc = ew__keys_fail(k, "retiring keys", err);
        sqlite3_finalize(st);
        if (!rc && retired) *retired = sqlite3_changes(k->db);
    }
    if (!rc) rc = insert(k, next, err);
    if (rc)
        ew__keys_rollback(k);
    else
        rc = ew__keys_commit(k, err);
out:
    ew__keys_unlock(k);
    return rc;
}

int ew_key_generate(ew_key *key, const char *owner, ew_key_alg alg,
                    unsigned char sk[EW_KEY_MATERIAL_MAX], ew_error *err)
{
    if (!key || !owner || !*owner || strlen(owner) >= EW_KEY_OWNER_MAX)
        return ew_error_set(err, EW_EINVAL, "a key needs an owner of 1 to %d bytes",
                            EW_KEY_OWNER_MAX - 1);
    if (sodium_init() < 0) return ew_error_set(err, EW_ENOMEM, "libsodium did not start");
    memset(key, 0, sizeof *key);
    unsigned char id[EW_KEY_ID_LEN / 2];
    randombytes_buf(id, sizeof id);
    sodium_bin2hex(key->kid, sizeof key->kid, id, sizeof id);
    snprintf(key->owner, sizeof key->owner, "%s", owner);
    key->alg = alg;
    key->created_us = ew_now_us();
    switch (alg) {
    case EW_KEY_MAC:
        crypto_generichash_keygen(key->material);
        key->material_len = crypto_generichash_KEYBYTES;
        return 0;
    case EW_KEY_ED25519:
        if (!sk) return ew_error_set(err, EW_EINVAL, "an Ed25519 key needs room for its secret");
        crypto_sign_keypair(key->material, sk);
        key->material_len = crypto_sign_PUBLICKEYBYTES;
        return 0;
    }
    return ew_error_set(err, EW_EINVAL, "unknown key algorithm %d", (int)alg);
}
