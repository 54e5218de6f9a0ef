/* The environment of a store test case: an open store on SQLite (a temporary folder) or on
 * PostgreSQL (a database of its own on the fixture server), and BOTH/CASES to register a
 * behaviour on each. Included by one test file each: its functions are static. */
#ifndef EW_TESTS_STORE_ENV_H
#define EW_TESTS_STORE_ENV_H

#include <stdlib.h>
#include "support/ew_test.h"
#include "support/case_db.h"
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
    /* var/ does not exist yet: opening creates it */
    if (!e || ew_test_db_create(0, "store", "var/eventwire.db", e->dir, &e->url)) {
        free(e);
        return -1;
    }
    e->s = open_url(e->url, NULL);
    *state = e;
    return 0;
}

static int setup_postgres(void **state)
{
    env *e = calloc(1, sizeof *e);
    if (!e || ew_test_db_create(1, "store", NULL, e->dir, &e->url)) {
        free(e);
        return -1;
    }
    e->pg = 1;
    e->s = open_url(e->url, NULL);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    env *e = *state;
    ew_store_close(e->s);
    ew_test_db_drop(e->pg, e->dir, e->url);
    free(e);
    return 0;
}

#endif
