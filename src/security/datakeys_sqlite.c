/* eventwire — the data-key tables on the key store's SQLite file (datakeys.h). The file keeps a
 * rollback journal (keys.c) and runs with secure_delete, so a destroyed key is overwritten in the
 * file when its statement ends. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "security/datakeys.h"

struct ew__datakeys {
    sqlite3 *db; /* the key store's: borrowed */
    const char *name;
    sqlite3_stmt *read_st; /* read's, prepared once: every cache miss runs it */
};

static int fail(ew__datakeys *d, const char *what, ew_error *err)
{
    return ew_error_set(err, EW_EIO, "key store %s: %s: %s", d->name, what, sqlite3_errmsg(d->db));
}

static int exec(ew__datakeys *d, const char *sql, const char *what, ew_error *err)
{
    return sqlite3_exec(d->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : fail(d, what, err);
}

/* One statement with text (or NULL) parameters, to the end. */
static int step(ew__datakeys *d, const char *sql, const char *const *params, int n,
                const char *what, ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL) != SQLITE_OK) return fail(d, what, err);
    for (int i = 0; i < n; i++)
        sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    rc = rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(d, what, err);
    sqlite3_finalize(st);
    return rc;
}

static int begin(ew__datakeys *d, ew_error *err)
{
    return exec(d, "BEGIN IMMEDIATE", "begin", err);
}

static void rollback(ew__datakeys *d)
{
    sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
}

/* A COMMIT that fails may leave the transaction open, holding the file's write lock against
 * every other connection (SQLITE_BUSY leaves it so by design): it is rolled back. */
static int commit(ew__datakeys *d, ew_error *err)
{
    int rc = exec(d, "COMMIT", "commit", err);
    if (rc && !sqlite3_get_autocommit(d->db)) rollback(d);
    return rc;
}

static int fingerprint(ew__datakeys *d, char out[65], int lock, ew_error *err)
{
    (void)lock; /* BEGIN IMMEDIATE has every writer wait already */
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db, "SELECT fingerprint FROM kek WHERE id = 1", -1, &st, NULL))
        return fail(d, "reading the key's fingerprint", err);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        snprintf(out, 65, "%s", (const char *)sqlite3_column_text(st, 0));
        found = 1;
    } else if (rc != SQLITE_DONE) {
        found = fail(d, "reading the key's fingerprint", err);
    }
    sqlite3_finalize(st);
    return found;
}

static int set_fingerprint(ew__datakeys *d, const char *fp, bool replace, ew_error *err)
{
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)(ew_now_us() / 1000000));
    const char *params[] = {fp, now};
    return replace ? step(d, "UPDATE kek SET fingerprint = ?1, rotated_at = ?2 WHERE id = 1",
                          params, 2, "recording the new key", err)
                   : step(d, "INSERT OR IGNORE INTO kek (id, fingerprint) VALUES (1, ?1)", params,
                          1, "recording the key's fingerprint", err);
}

static int read_key(ew__datakeys *d, const char *subject, ew__dk_state *state, unsigned char *w,
                    size_t cap, size_t *len, ew_error *err)
{
    if (!d->read_st &&
        sqlite3_prepare_v2(d->db, "SELECT wrapped FROM subject_keys WHERE subject = ?", -1,
                           &d->read_st, NULL))
        return fail(d, "reading a data key", err);
    sqlite3_stmt *st = d->read_st;
    sqlite3_bind_text(st, 1, subject, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), ret = 0;
    *state = EW__DK_NONE;
    *len = 0;
    if (rc == SQLITE_ROW) {
        const void *b = sqlite3_column_blob(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        *state = b ? EW__DK_LIVE : EW__DK_ERASED;
        if (b && n == cap) {
            memcpy(w, b, n);
            *len = n;
        }
    } else if (rc != SQLITE_DONE) {
        ret = fail(d, "reading a data key", err);
    }
    sqlite3_reset(st); /* ends the read: the store's lock is released */
    sqlite3_clear_bindings(st);
    return ret;
}

static int insert(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db,
                           "INSERT OR IGNORE INTO subject_keys (subject, wrapped, created_at) "
                           "VALUES (?, ?, ?)",
                           -1, &st, NULL))
        return fail(d, "storing a data key", err);
    sqlite3_bind_text(st, 1, subject, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, w, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, ew_now_us() / 1000000);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : fail(d, "storing a data key", err);
    sqlite3_finalize(st);
    return rc;
}

static int shred(ew__datakeys *d, const char *subject, ew_error *err)
{
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)(ew_now_us() / 1000000));
    const char *params[] = {subject, now};
    return step(d,
                "INSERT INTO subject_keys (subject, wrapped, created_at, erased_at) VALUES (?1, "
                "NULL, ?2, ?2) ON CONFLICT (subject) DO UPDATE SET wrapped = NULL, erased_at = "
                "coalesce(erased_at, ?2)",
                params, 2, "destroying a data key", err);
}

/* fn for each row of sql (subject, wrapped). */
static int each_row(ew__datakeys *d, const char *sql, ew__dk_fn fn, void *ud, ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db, sql, -1, &st, NULL)) return fail(d, "reading the data keys", err);
    int rc = 0, s;
    while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW)
        rc = fn(ud, (const char *)sqlite3_column_text(st, 0), sqlite3_column_blob(st, 1),
                (size_t)sqlite3_column_bytes(st, 1));
    if (!rc && s != SQLITE_DONE) rc = fail(d, "reading the data keys", err);
    sqlite3_finalize(st);
    return rc;
}

static int each_live(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err)
{
    return each_row(d, "SELECT subject, wrapped FROM subject_keys WHERE wrapped IS NOT NULL", fn,
                    ud, err);
}

static int each_erased(ew__datakeys *d, ew__dk_fn fn, void *ud, ew_error *err)
{
    return each_row(d, "SELECT subject, NULL FROM subject_keys WHERE wrapped IS NULL", fn, ud, err);
}

static int rewrap(ew__datakeys *d, const char *subject, const unsigned char *w, size_t len,
                  ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db, "UPDATE subject_keys SET wrapped = ? WHERE subject = ?", -1, &st,
                           NULL))
        return fail(d, "rewrapping", err);
    sqlite3_bind_blob(st, 1, w, (int)len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, subject, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : fail(d, "rewrapping", err);
    sqlite3_finalize(st);
    return rc;
}

static int count(ew__datakeys *d, size_t *live, size_t *erased, ew_error *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(d->db,
                           "SELECT count(wrapped), count(*) - count(wrapped) FROM subject_keys", -1,
                           &st, NULL))
        return fail(d, "counting keys", err);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : fail(d, "counting keys", err);
    if (!rc) {
        *live = (size_t)sqlite3_column_int64(st, 0);
        *erased = (size_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return rc;
}

static int clear(ew__datakeys *d, ew_error *err)
{
    return exec(d, "DELETE FROM subject_keys; DELETE FROM kek", "clearing the data keys", err);
}

static void close_dk(ew__datakeys *d)
{
    if (!d) return;
    sqlite3_finalize(d->read_st);
    free(d);
}

static const ew__datakeys_ops sqlite_ops = {
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

int ew__datakeys_sqlite(sqlite3 *db, const char *name, const ew__datakeys_ops **ops,
                        ew__datakeys **out, ew_error *err)
{
    ew__datakeys *d = calloc(1, sizeof *d);
    if (!d) return ew_error_set(err, EW_ENOMEM, "out of memory");
    d->db = db;
    d->name = name;
    /* Freed pages zeroed (the store keeps a rollback journal, no WAL): a destroyed key is gone
     * from the file when its transaction ends. */
    int rc = exec(d, "PRAGMA secure_delete=ON", "secure_delete", err);
    if (rc) {
        free(d);
        return rc;
    }
    *ops = &sqlite_ops;
    *out = d;
    return 0;
}
