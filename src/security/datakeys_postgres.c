/* eventwire — the data-key tables on the key store's PostgreSQL schema key_store (datakeys.h),
 * through the store's connection (keys_postgres.c), which reconnects after the server ended the
 * session.
 *
 * A destroyed key must leave the files: PostgreSQL keeps the row version that held it until a
 * vacuum, and a plain vacuum does not overwrite the space it frees, so shred rewrites the table
 * (VACUUM FULL: the old file is truncated and unlinked, the new one never held the key), again
 * until the rewrite had no dead version left to copy (rewrite_until_clean). */
#include <libpq-fe.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eventwire/clock.h"
#include "security/datakeys.h"

#define WRAPPED_MAX 128    /* bytes; a wrapped key is 72 */
#define SHRED_WAIT_MS 5000 /* how long a shred waits for older snapshots to end */
#define RESHRED_S "600"    /* a shred again within this many seconds rewrites again */

struct ew__datakeys {
    ew__keys_pg *pg; /* the key store's: borrowed */
};

static int exec(ew__datakeys *d, const char *sql, int n, const char *const *params, PGresult **out,
                const char *what, ew_error *err)
{
    return ew__keys_pg_exec(d->pg, sql, n, params, out, what, err);
}

static int begin(ew__datakeys *d, ew_error *err)
{
    return exec(d, "BEGIN", 0, NULL, NULL, "begin", err);
}

static int commit(ew__datakeys *d, ew_error *err)
{
    return exec(d, "COMMIT", 0, NULL, NULL, "commit", err);
}

static void rollback(ew__datakeys *d)
{
    exec(d, "ROLLBACK", 0, NULL, NULL, "rollback", NULL);
}

static void now_s(char out[32])
{
    snprintf(out, 32, "%lld", (long long)(ew_now_us() / 1000000));
}

/* "\x" and the bytes in hex: a bytea parameter in text form. */
static void bytea_of(char *out, size_t cap, const unsigned char *w, size_t len)
{
    memcpy(out, "\\x", 2);
    sodium_bin2hex(out + 2, cap - 2, w, len);
}

static int fingerprint(ew__datakeys *d, char out[65], int lock, ew_error *err)
{
    static const char *const sql[] = {
        "SELECT fingerprint FROM key_store.kek WHERE id = 1",
        "SELECT fingerprint FROM key_store.kek WHERE id = 1 FOR SHARE",
        "SELECT fingerprint FROM key_store.kek WHERE id = 1 FOR UPDATE",
    };
    PGresult *r;
    int rc = exec(d,
                  sql[lock < 0   ? 0
                      : lock > 2 ? 2
                                 : lock],
                  0, NULL, &r, "reading the key's fingerprint", err);
    if (rc) return rc;
    int found = PQntuples(r) > 0;
    if (found) snprintf(out, 65, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return found;
}

static int set_fingerprint(ew__datakeys *d, const char *fp, bool replace, ew_error *err)
{
    char now[32];
    now_s(now);
    const char *params[] = {fp, now};
    return replace ? exec(d,
                          "UPDATE key_store.kek SET fingerprint = $1, rotated_at = $2::bigint "
                          "WHERE id = 1",
                          2, params, NULL, "recording the new key", err)
                   : exec(d,
                          "INSERT INTO key_store.kek (id, fingerprint) VALUES (1, $1) "
                          "ON CONFLICT (id) DO NOTHING",
                          1, params, NULL, "recording the key's fingerprint", err);
}

static int read_key(ew__datakeys *d, const char *subject, ew__dk_state *state, unsigned char *w,
                    size_t cap, size_t *len, ew_error *err)
{
    PGresult *r;
    int rc = exec(d, "SELECT encode(wrapped, 'hex') FROM key_store.subject_keys WHERE subject = $1",
                  1, &subject, &r, "reading a data key", err);
    if (rc) return rc;
    *state = EW__DK_NONE;
    *len = 0;
    if (PQntuples(r) > 0 && PQgetisnull(r, 0, 0)) {
        *state = EW__DK_ERASED;
    } else if (PQntuples(r) > 0) {
        *state = EW__DK_LIVE;
        char *hex = PQgetvalue(r, 0, 0);
        size_t n = 0, hl = strlen(hex);
        if (hl == 2 * cap && sodium_hex2bin(w, cap, hex, hl, NULL, &n, NULL) == 0) *len = n;
        sodium_memzero(hex, hl);
    }
    PQclear(r);
    return 0;
}

static int insert(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err)
{
    char hex[2 + 2 * WRAPPED_MAX + 1], now[32];
    if (len > WRAPPED_MAX) return ew_error_set(err, EW_EINVAL, "a wrapped key is too long");
    bytea_of(hex, sizeof hex, w, len);
    now_s(now);
    const char *params[] = {subject, hex, now};
    return exec(d,
                "INSERT INTO key_store.subject_keys (subject, wrapped, created_at) "
                "VALUES ($1, $2::bytea, $3::bigint) ON CONFLICT (subject) DO NOTHING",
                3, params, NULL, "storing a data key", err);
}

/* Rewrites subject_keys until no dead row version is left in it, waiting for the snapshots
 * older than the shred that can still see one (a session's open transaction on this database,
 * a backend still connecting on any): VACUUM FULL copies such versions into the new file. */
static int rewrite_until_clean(ew__datakeys *d, ew_error *err)
{
    int64_t deadline = ew_mono_ns() + (int64_t)SHRED_WAIT_MS * 1000000;
    for (long pause_us = 20000;; pause_us = pause_us < 500000 ? 2 * pause_us : pause_us) {
        long left = 0;
        int rc = ew__keys_pg_vacuum_full(d->pg, "key_store.subject_keys", &left, err);
        if (rc || left == 0) return rc;
        if (ew_mono_ns() + pause_us * 1000 > deadline)
            return ew_error_set(err, EW_EAGAIN,
                                "key store: the destroyed key is still in %ld dead row "
                                "version(s) that a transaction older than the shred can see; "
                                "shred again once it ends",
                                left);
        nanosleep(&(struct timespec){pause_us / 1000000, pause_us % 1000000 * 1000}, NULL);
    }
}

static int shred(ew__datakeys *d, const char *subject, ew_error *err)
{
    char now[32];
    now_s(now);
    const char *params[] = {subject, now};
    PGresult *r;
    /* The tombstone first, so that no key can be made for the subject between the two; then
     * the key, if the row holds one. */
    int rc = exec(d,
                  "INSERT INTO key_store.subject_keys (subject, wrapped, created_at, erased_at) "
                  "VALUES ($1, NULL, $2::bigint, $2::bigint) ON CONFLICT (subject) DO NOTHING",
                  2, params, &r, "destroying a data key", err);
    if (rc) return rc;
    /* A tombstone made now: the subject never had a key, nothing to remove. */
    bool made = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (made) return 0;
    rc = exec(d,
              "UPDATE key_store.subject_keys SET wrapped = NULL, erased_at = $2::bigint "
              "WHERE subject = $1 AND wrapped IS NOT NULL",
              2, params, &r, "destroying a data key", err);
    if (rc) return rc;
    /* A dead version to remove: the key destroyed now, or in the last RESHRED_S seconds by a
     * shred that returned EW_EAGAIN (or whose rewrite an older snapshot may have outwaited) and
     * is tried again. A shred long done rewrites nothing. */
    bool held = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (!held) {
        rc = exec(d,
                  "SELECT 1 FROM key_store.subject_keys WHERE subject = $1 AND "
                  "erased_at >= $2::bigint - " RESHRED_S,
                  2, params, &r, "destroying a data key", err);
        if (rc) return rc;
        held = PQntuples(r) > 0;
        PQclear(r);
    }
    return held ? rewrite_until_clean(d, err) : 0;
}

/* fn for each row of sql (subject, wrapped in hex or NULL). */
static int each_row(ew__datakeys *d, const char *sql, ew__dk_fn fn, void *ud, ew_error *err)
{
    PGresult *r;
    int rc = exec(d, sql, 0, NULL, &r, "reading the data keys", err);
    if (rc) return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        char *hex = PQgetvalue(r, i, 1);
        unsigned char w[WRAPPED_MAX];
        size_t n = 0, hl = strlen(hex);
        if (sodium_hex2bin(w, sizeof w, hex, hl, NULL, &n, NULL) != 0) n = 0;
        sodium_memzero(hex, hl);
        if (!rc) rc = fn(ud, PQgetvalue(r, i, 0), n ? w : NULL, n);
        sodium_memzero(w, sizeof w);
    }
    PQclear(r);
    return rc;
}

static int each_live(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err)
{
    return each_row(d,
                    "SELECT subject, encode(wrapped, 'hex') FROM key_store.subject_keys WHERE "
                    "wrapped IS NOT NULL",
                    fn, ud, err);
}

static int each_erased(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err)
{
    return each_row(d, "SELECT subject, '' FROM key_store.subject_keys WHERE wrapped IS NULL", fn,
                    ud, err);
}

static int rewrap(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err)
{
    char hex[2 + 2 * WRAPPED_MAX + 1];
    if (len > WRAPPED_MAX) return ew_error_set(err, EW_EINVAL, "a wrapped key is too long");
    bytea_of(hex, sizeof hex, w, len);
    const char *params[] = {hex, subject};
    /* not a key destroyed since it was read: that stays destroyed */
    return exec(d,
                "UPDATE key_store.subject_keys SET wrapped = $1::bytea WHERE subject = $2 AND "
                "wrapped IS NOT NULL",
                2, params, NULL, "rewrapping", err);
}

static int count(ew__datakeys *d, size_t *live, size_t *erased, ew_error *err)
{
    PGresult *r;
    int rc = exec(d, "SELECT count(wrapped), count(*) - count(wrapped) FROM key_store.subject_keys",
                  0, NULL, &r, "counting keys", err);
    if (rc) return rc;
    *live = (size_t)strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    *erased = (size_t)strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    return 0;
}

static int clear(ew__datakeys *d, ew_error *err)
{
    int rc =
        exec(d, "DELETE FROM key_store.subject_keys", 0, NULL, NULL, "clearing the data keys", err);
    if (!rc)
        rc = exec(d, "DELETE FROM key_store.kek", 0, NULL, NULL, "clearing the data keys", err);
    return rc ? rc
              : exec(d, "VACUUM FULL key_store.subject_keys", 0, NULL, NULL,
                     "removing the cleared keys from the files", err);
}

static void close_dk(ew__datakeys *d)
{
    free(d);
}

static const ew__datakeys_ops postgres_ops = {
    .begin = begin,
    .commit = commit,
    .rollback = rollback,
    .fingerprint = fingerprint,
    .set_fingerprint = set_fingerprint,
    .read = read_key,
    .insert = insert,
    .shred = shred,
    .each_live = each_live,
    .rewrap = rewrap,
    .count = count,
    .close = close_dk,
    .each_erased = each_erased,
    .clear = clear,
};

int ew__datakeys_postgres(ew__keys_pg *pg, const ew__datakeys_ops **ops, ew__datakeys **out,
                          ew_error *err)
{
    ew__datakeys *d = calloc(1, sizeof *d);
    if (!d) return ew_error_set(err, EW_ENOMEM, "out of memory");
    d->pg = pg;
    *ops = &postgres_ops;
    *out = d;
    return 0;
}
