/* The environment of a store test case: an open store on SQLite (a temporary folder) or on
 * PostgreSQL (a database of its own on the fixture server), and BOTH/CASES to register a
 * behaviour on each. Included by one test file each: its functions are static. */
#ifndef EW_TESTS_STORE_ENV_H
#define EW_TESTS_STORE_ENV_H

#include <ftw.h>
#include <stdlib.h>
#include "support/ew_test.h"
#include "support/pg.h"
#include "eventwire/store.h"

/* ---- the environment of a case -------------------------------------------------------------- */

typedef struct env {
    int pg;
    char dir[64]; /* SQLite: the temporary folder */
    char *url;
    ew_store *s;
} env;

static ew_store *open_url(const char *url, const ew_config *cfg)
{
    ew_store *s = NULL;
    ew_error err = {0};
    ew_store_options o = {.config = cfg, .url = url};
    int rc = ew_store_open(&s, &o, &err);
    if (rc) fail_msg("ew_store_open(%s): %s: %s", url, ew_err_name(rc), err.msg);
    return s;
}

static int setup_sqlite(void **state)
{
    env *e = calloc(1, sizeof *e);
    strcpy(e->dir, "/tmp/ew-store-XXXXXX");
    if (!e || !mkdtemp(e->dir)) return -1;
    e->url = malloc(128);
    /* var/ does not exist yet: opening creates it */
    snprintf(e->url, 128, "sqlite:%s/var/eventwire.db", e->dir);
    e->s = open_url(e->url, NULL);
    *state = e;
    return 0;
}

static int setup_postgres(void **state)
{
    env *e = calloc(1, sizeof *e);
    char msg[512];
    e->pg = 1;
    e->url = ew_test_pg_create(msg, sizeof msg);
    if (!e->url) {
        print_error("postgres: %s\n", msg);
        free(e);
        return -1;
    }
    e->s = open_url(e->url, NULL);
    *state = e;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    env *e = *state;
    ew_store_close(e->s);
    if (e->pg) {
        ew_test_pg_drop(e->url);
    } else {
        nftw(e->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(e->url);
    }
    free(e);
    return 0;
}

/* Each behaviour runs on both backends. */
#define BOTH(name)                                                                                 \
    static void test_sqlite_##name(void **state)                                                   \
    {                                                                                              \
        name(*state);                                                                              \
    }                                                                                              \
    static void test_postgres_##name(void **state)                                                 \
    {                                                                                              \
        name(*state);                                                                              \
    }
#define CASES(name)                                                                                \
    cmocka_unit_test_setup_teardown(test_sqlite_##name, setup_sqlite, teardown),                   \
        cmocka_unit_test_setup_teardown(test_postgres_##name, setup_postgres, teardown)

#endif
