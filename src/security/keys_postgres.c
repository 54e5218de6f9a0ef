/* eventwire — the key store on PostgreSQL (keys_postgres.h), through libpq: the tables of the
 * SQLite store's migrations, in the schema key_store, and its operations as SQL with parameters. */
#include "security/keys_postgres.h"

#include <libpq-fe.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/text.h"
#include "eventwire/clock.h"
#include "store/migrations.h" /* ew_migration: number, name, SQL */

/* Taken by the migration runner of every process: one applies, the others then find it done. */
#define MIGRATION_LOCK "8231632784560172090"

/* The key store's migrations on PostgreSQL: the numbers and names of keys.c's, the same tables
 * and columns (bytea for blobs, bigint for times). A number is never reused or changed. */
static const ew_migration migrations[] = {
    {1, "001_keys",
     "CREATE TABLE key_store.keys ("
     " kid text PRIMARY KEY,"
     " owner text NOT NULL,"
     " alg text NOT NULL,"
     " material bytea NOT NULL,"
     " created_us bigint NOT NULL,"
     " retired_us bigint NOT NULL DEFAULT 0);"
     "CREATE INDEX keys_owner ON key_store.keys (owner, created_us);"},
    {2, "002_subject_keys",
     "CREATE TABLE key_store.kek ("
     " id integer PRIMARY KEY CHECK (id = 1),"
     " fingerprint text NOT NULL,"
     " rotated_at bigint);"
     "CREATE TABLE key_store.subject_keys ("
     " subject text PRIMARY KEY,"
     " wrapped bytea,"
     " created_at bigint NOT NULL,"
     " erased_at bigint);"},
};
#define NMIGRATIONS (sizeof migrations / sizeof migrations[0])

#define KEY_COLUMNS "kid, owner, alg, encode(material, 'hex'), created_us, retired_us"

struct ew__keys_pg {
    PGconn *conn;
    char *url;  /* as given: libpq takes it as dbname */
    char *name; /* without user and password */
};

/* err from r (cleared) or the connection: EW_EEXIST for a unique violation, EW_ECONNECT for a
 * connection that broke, EW_EIO otherwise. */
static int fail(ew__keys_pg *p, PGresult *r, const char *what, ew_error *err)
{
    char msg[240];
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    ew_one_line(msg, sizeof msg, m && *m ? m : PQerrorMessage(p->conn));
    int code = state && !strcmp(state, "23505")      ? EW_EEXIST
               : PQstatus(p->conn) == CONNECTION_BAD ? EW_ECONNECT
                                                     : EW_EIO;
    PQclear(r);
    return ew_error_set(err, code, "key store %s: %s: %s", p->name, what, msg);
}

static void quiet(void *arg, const char *message)
{
    (void)arg, (void)message; /* "schema exists, skipping" and the like */
}

static int simple(ew__keys_pg *p, const char *sql, const char *what, ew_error *err)
{
    PGresult *r = PQexec(p->conn, sql);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) return fail(p, r, what, err);
    PQclear(r);
    return 0;
}

static int ready(ew__keys_pg *p, ew_error *err);

/* Runs sql with n text parameters; *out gets the result when out is not NULL. A statement of its
 * own (no transaction open) whose connection broke is run once more on a new one: the server
 * restarted, or ended an idle session. */
static int run(ew__keys_pg *p, const char *sql, int n, const char *const *params, PGresult **out,
               const char *what, ew_error *err)
{
    bool alone = PQtransactionStatus(p->conn) == PQTRANS_IDLE;
    PGresult *r = PQexecParams(p->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK && alone &&
        PQstatus(p->conn) == CONNECTION_BAD) {
        PQclear(r);
        int rc = ready(p, err);
        if (rc) return rc;
        r = PQexecParams(p->conn, sql, n, NULL, params, NULL, NULL, 0);
        t = PQresultStatus(r);
    }
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) return fail(p, r, what, err);
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

/* A usable connection: the one there is, or it again after it broke. */
static int ready(ew__keys_pg *p, ew_error *err)
{
    if (PQstatus(p->conn) == CONNECTION_OK) return 0;
    PQreset(p->conn);
    if (PQstatus(p->conn) != CONNECTION_OK) {
        char msg[240];
        ew_one_line(msg, sizeof msg, PQerrorMessage(p->conn));
        return ew_error_set(err, EW_ECONNECT, "key store %s: cannot reconnect: %s", p->name, msg);
    }
    PQsetNoticeProcessor(p->conn, quiet, NULL);
    return 0;
}

char *ew__keys_pg_name_of(const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *rest = scheme ? scheme + 3 : url;
    const char *at = strchr(rest, '@'), *slash = strchr(rest, '/');
    ew_buf b;
    ew_buf_init(&b);
    if (at && (!slash || at < slash)) {
        ew_buf_append(&b, url, (size_t)(rest - url));
        ew_buf_puts(&b, at + 1);
    } else {
        ew_buf_puts(&b, url);
    }
    char *q = b.oom ? NULL : strchr(b.data, '?'); /* parameters may hold a password too */
    if (q) *q = '\0';
    return ew_buf_steal(&b, NULL);
}

/* Every migration the schema lacks, in one transaction under the migrations' lock. */
static int migrate(ew__keys_pg *p, ew_error *err)
{
    int rc = simple(p,
                    "BEGIN; SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ");"
                    "CREATE SCHEMA IF NOT EXISTS key_store;"
                    "CREATE TABLE IF NOT EXISTS key_store.key_store_migrations ("
                    " number integer PRIMARY KEY, name text NOT NULL, applied_us bigint NOT NULL)",
                    "creating key_store_migrations", err);
    for (size_t i = 0; !rc && i < NMIGRATIONS; i++) {
        char num[16], now[32];
        snprintf(num, sizeof num, "%d", migrations[i].number);
        snprintf(now, sizeof now, "%lld", (long long)ew_now_us());
        const char *params[] = {num, migrations[i].name, now};
        PGresult *r = NULL;
        if ((rc = run(p, "SELECT 1 FROM key_store.key_store_migrations WHERE number = $1::integer",
                      1, params, &r, "reading key_store_migrations", err)))
            break;
        int done = PQntuples(r) > 0;
        PQclear(r);
        if (done) continue;
        char what[96];
        snprintf(what, sizeof what, "migration %s", migrations[i].name);
        if (!(rc = simple(p, migrations[i].sql, what, err)))
            rc = run(p,
                     "INSERT INTO key_store.key_store_migrations (number, name, applied_us) "
                     "VALUES ($1::integer, $2, $3::bigint)",
                     3, params, NULL, what, err);
    }
    if (rc) {
        PQclear(PQexec(p->conn, "ROLLBACK"));
        return rc;
    }
    return simple(p, "COMMIT", "committing the migrations", err);
}

int ew__keys_pg_open(ew__keys_pg **out, const char *url, ew_error *err)
{
    *out = NULL;
    ew__keys_pg *p = calloc(1, sizeof *p);
    if (!p || !(p->url = strdup(url)) || !(p->name = ew__keys_pg_name_of(url))) {
        ew__keys_pg_close(p);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    /* Defaults first: what the URL says (dbname is expanded last) wins. */
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"10", "eventwire-keys", p->url, NULL};
    p->conn = PQconnectdbParams(keys, vals, 1);
    int rc = 0;
    if (!p->conn) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else if (PQstatus(p->conn) != CONNECTION_OK) {
        char msg[240];
        ew_one_line(msg, sizeof msg, PQerrorMessage(p->conn));
        rc = ew_error_set(err, EW_ECONNECT, "key store %s: cannot connect: %s", p->name, msg);
    } else {
        PQsetNoticeProcessor(p->conn, quiet, NULL);
        rc = migrate(p, err);
    }
    if (rc) {
        ew__keys_pg_close(p);
        return rc;
    }
    *out = p;
    return 0;
}

void ew__keys_pg_close(ew__keys_pg *p)
{
    if (!p) return;
    if (p->conn) PQfinish(p->conn);
    if (p->url) sodium_memzero(p->url, strlen(p->url)); /* it may hold a password */
    free(p->url);
    free(p->name);
    free(p);
}

const char *ew__keys_pg_name(const ew__keys_pg *p)
{
    return p->name;
}

int ew__keys_pg_exec(ew__keys_pg *p, const char *sql, int n, const char *const *params,
                     PGresult **out, const char *what, ew_error *err)
{
    int rc = ready(p, err);
    return rc ? rc : run(p, sql, n, params, out, what, err);
}

/* The server's INFO of a VACUUM (FULL, VERBOSE), read for its count of dead row versions that
 * could not be removed yet (cluster.c's copy_table_data: "%.0f dead row versions cannot be
 * removed yet."). In English only: a server with lc_messages in another language gives 0. */
static void vacuum_notice(void *ud, const PGresult *r)
{
    const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
    long n;
    if (detail && sscanf(detail, "%ld dead row versions cannot be removed yet", &n) == 1)
        *(long *)ud += n;
}

int ew__keys_pg_vacuum_full(ew__keys_pg *p, const char *table, long *recently_dead, ew_error *err)
{
    int rc = ready(p, err);
    if (rc) return rc;
    char sql[256];
    snprintf(sql, sizeof sql, "VACUUM (FULL, VERBOSE) %s", table);
    long n = 0;
    /* libpq's default receiver, put back after, takes no argument of its own */
    PQnoticeReceiver old = PQsetNoticeReceiver(p->conn, vacuum_notice, &n);
    rc = run(p, sql, 0, NULL, NULL, "rewriting a table of the key store", err);
    PQsetNoticeReceiver(p->conn, old, NULL);
    *recently_dead = n;
    return rc;
}

/* ---- keys ----------------------------------------------------------------------------------- */

static int insert(ew__keys_pg *p, const ew_key *key, ew_error *err)
{
    char hex[2 + 2 * EW_KEY_MATERIAL_MAX + 1] = "\\x", created[32], retired[32];
    sodium_bin2hex(hex + 2, sizeof hex - 2, key->material, key->material_len);
    snprintf(created, sizeof created, "%lld",
             (long long)(key->created_us ? key->created_us : ew_now_us()));
    snprintf(retired, sizeof retired, "%lld", (long long)key->retired_us);
    const char *params[] = {key->kid, key->owner, ew_key_alg_name(key->alg), hex, created, retired};
    int rc = run(p,
                 "INSERT INTO key_store.keys (kid, owner, alg, material, created_us, retired_us) "
                 "VALUES ($1, $2, $3, $4::bytea, $5::bigint, $6::bigint)",
                 6, params, NULL, "adding a key", err);
    sodium_memzero(hex, sizeof hex);
    if (rc == EW_EEXIST) ew_error_set(err, rc, "key store: key %s exists already", key->kid);
    return rc;
}

int ew__keys_pg_add(ew__keys_pg *p, const ew_key *key, ew_error *err)
{
    int rc = ready(p, err);
    return rc ? rc : insert(p, key, err);
}

/* Row i of r (KEY_COLUMNS) into key. */
static void row_to_key(PGresult *r, int i, ew_key *key)
{
    memset(key, 0, sizeof *key);
    snprintf(key->kid, sizeof key->kid, "%s", PQgetvalue(r, i, 0));
    snprintf(key->owner, sizeof key->owner, "%s", PQgetvalue(r, i, 1));
    key->alg = ew_key_alg_from_name(PQgetvalue(r, i, 2));
    const char *hex = PQgetvalue(r, i, 3);
    size_t n = 0;
    if (sodium_hex2bin(key->material, sizeof key->material, hex, strlen(hex), NULL, &n, NULL) == 0)
        key->material_len = n;
    key->created_us = strtoll(PQgetvalue(r, i, 4), NULL, 10);
    key->retired_us = strtoll(PQgetvalue(r, i, 5), NULL, 10);
}

/* Zeroes the key material r holds, then clears it. */
static void clear_keys(PGresult *r)
{
    for (int i = 0; i < PQntuples(r); i++) {
        char *hex = PQgetvalue(r, i, 3);
        sodium_memzero(hex, strlen(hex));
    }
    PQclear(r);
}

int ew__keys_pg_get(ew__keys_pg *p, const char *kid, ew_key *out, ew_error *err)
{
    PGresult *r = NULL;
    int rc = ready(p, err);
    if (!rc)
        rc = run(p, "SELECT " KEY_COLUMNS " FROM key_store.keys WHERE kid = $1", 1, &kid, &r,
                 "reading a key", err);
    if (rc) return rc;
    if (PQntuples(r) == 0)
        rc = ew_error_set(err, EW_ENOTFOUND, "key store: no key %.32s", kid);
    else
        row_to_key(r, 0, out);
    clear_keys(r);
    return rc;
}

int ew__keys_pg_list(ew__keys_pg *p, const char *owner, ew_key **keys, size_t *n, ew_error *err)
{
    *keys = NULL;
    *n = 0;
    PGresult *r = NULL;
    int rc = ready(p, err);
    if (!rc)
        rc = run(p,
                 "SELECT " KEY_COLUMNS " FROM key_store.keys WHERE $1::text IS NULL OR owner = $1 "
                 "ORDER BY owner, created_us, kid",
                 1, &owner, &r, "listing keys", err);
    if (rc) return rc;
    int rows = PQntuples(r);
    if (rows > 0 && !(*keys = calloc((size_t)rows, sizeof **keys))) {
        clear_keys(r);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    for (int i = 0; i < rows; i++)
        row_to_key(r, i, &(*keys)[i]);
    *n = (size_t)rows;
    clear_keys(r);
    return 0;
}

int ew__keys_pg_rotate(ew__keys_pg *p, const ew_key *next, int64_t retire_at_us, int *retired,
                       ew_error *err)
{
    int rc = ready(p, err);
    if (rc || (rc = simple(p, "BEGIN", "begin", err))) return rc;
    char at[32];
    snprintf(at, sizeof at, "%lld", (long long)retire_at_us);
    const char *params[] = {next->owner, ew_key_alg_name(next->alg), at};
    PGresult *r = NULL;
    rc = run(p,
             "UPDATE key_store.keys SET retired_us = $3::bigint WHERE owner = $1 AND alg = $2 AND "
             "(retired_us = 0 OR retired_us > $3::bigint)",
             3, params, &r, "retiring keys", err);
    if (!rc) {
        if (retired) *retired = atoi(PQcmdTuples(r));
        PQclear(r);
        rc = insert(p, next, err);
    }
    if (rc) {
        PQclear(PQexec(p->conn, "ROLLBACK"));
        return rc;
    }
    return simple(p, "COMMIT", "commit", err);
}
