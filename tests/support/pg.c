/* Test support: per-case PostgreSQL databases (pg.h). */
#include <dirent.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "support/pg.h"

static atomic_uint counter;

char *ew_test_pg_server_url(char *msg, size_t n)
{
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!dir) {
        const char *u = getenv("EW_PG_URL");
        if (!u) snprintf(msg, n, "neither EW_SERVERS_DIR (CTest) nor EW_PG_URL is set");
        return u ? strdup(u) : NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/postgres.url", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, n, "%s: no such file: did the postgres fixture start?", path);
        return NULL;
    }
    char line[1024] = "";
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    if (!ok || !*line) {
        snprintf(msg, n, "%s is empty", path);
        return NULL;
    }
    return strdup(line);
}

/* url with its database replaced by name. */
static char *with_db(const char *url, const char *name)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t host_end = strcspn(auth, "/?");
    const char *query = strchr(auth + host_end, '?');
    size_t n = (size_t)(auth - url) + host_end + strlen(name) + (query ? strlen(query) : 0) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%.*s/%s%s", (int)((auth - url) + (long)host_end), url, name,
                 query ? query : "");
    return out;
}

/* The database name of a URL made by with_db. */
static void db_of(const char *url, char *name, size_t n)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    const char *slash = strchr(auth, '/');
    snprintf(name, n, "%.*s", slash ? (int)strcspn(slash + 1, "?") : 0, slash ? slash + 1 : "");
}

static int admin(const char *server, const char *sql, char *msg, size_t n)
{
    PGconn *c = PQconnectdb(server);
    int rc = 0;
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(msg, n, "%s", PQerrorMessage(c));
        rc = -1;
    } else {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            snprintf(msg, n, "%s: %s", sql, PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    PQfinish(c);
    return rc;
}

char *ew_test_pg_create(char *msg, size_t n)
{
    char *server = ew_test_pg_server_url(msg, n);
    if (!server) return NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char name[64], sql[128];
    snprintf(name, sizeof name, "ewtest_%d_%u_%ld", (int)getpid(), atomic_fetch_add(&counter, 1),
             (long)(ts.tv_nsec % 1000000));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    char *url = NULL;
    if (admin(server, sql, msg, n) == 0) url = with_db(server, name);
    free(server);
    return url;
}

void ew_test_pg_drop(char *url)
{
    if (!url) return;
    char msg[256], name[64], sql[128];
    char *server = ew_test_pg_server_url(msg, sizeof msg);
    db_of(url, name, sizeof name);
    if (server && *name) {
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
        admin(server, sql, msg, sizeof msg);
    }
    free(server);
    free(url);
}

int ew_test_pg_value(const char *url, const char *sql, const char *param, char **out)
{
    *out = NULL;
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQstatus(c) == CONNECTION_OK
                      ? PQexecParams(c, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0)
                      : NULL;
    ExecStatusType t = PQresultStatus(r);
    int rc = 0;
    if (t != PGRES_TUPLES_OK && t != PGRES_COMMAND_OK) {
        fprintf(stderr, "postgres: %s: %s", sql, PQerrorMessage(c));
        rc = -1;
    } else if (t == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        *out = strdup(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

bool ew_test_file_holds(const char *path, const void *needle, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    bool found = false;
    for (;;) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (memmem(buf, len, needle, n)) {
            found = true;
            break;
        }
        if (got == 0) break;
        if (len >= n) { /* keep the tail that a match may straddle */
            memmove(buf, buf + len - (n - 1), n - 1);
            len = n - 1;
        }
    }
    free(buf);
    fclose(f);
    return found;
}

int ew_test_pg_files_holding(const char *url, const void *needle, size_t n, char *first, size_t cap)
{
    char *ck = NULL, *data = NULL, *oid = NULL;
    int count = -1;
    if (ew_test_pg_value(url, "CHECKPOINT", NULL, &ck) ||
        ew_test_pg_value(url, "SHOW data_directory", NULL, &data) ||
        ew_test_pg_value(url, "SELECT oid FROM pg_database WHERE datname = current_database()",
                         NULL, &oid) ||
        !data || !oid)
        goto out;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/base/%s", data, oid);
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "postgres: cannot read %s: the test reads the server's files\n", dir);
        goto out;
    }
    count = 0;
    for (struct dirent *de; (de = readdir(d));) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (de->d_name[0] != '.' && ew_test_file_holds(path, needle, n) && count++ == 0 && first)
            snprintf(first, cap, "%s", path);
    }
    closedir(d);
out:
    free(ck);
    free(data);
    free(oid);
    return count;
}
