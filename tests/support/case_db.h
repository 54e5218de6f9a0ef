/* Test support: a database of a test case's own, on SQLite (a fresh folder) or PostgreSQL (a
 * database on the fixture server, pg.h), and registering one behaviour on both. */
#ifndef EW_TEST_CASE_DB_H
#define EW_TEST_CASE_DB_H

/* SQLite (pg 0): makes the folder /tmp/ew-TAG-XXXXXX into dir (64 bytes) and *url
 * "sqlite:DIR/FILE" (FILE's folders are left to the store to make). PostgreSQL (pg 1): a database
 * no other case uses; dir is left empty. *url is malloc'ed. 0, or -1 with the reason printed. */
int ew_test_db_create(int pg, const char *tag, const char *file, char dir[64], char **url);

/* Removes what ew_test_db_create made, and frees url. */
void ew_test_db_drop(int pg, const char *dir, char *url);

/* Removes a folder and everything in it. */
void ew_test_rmtree(const char *dir);

/* BOTH(f) makes test_sqlite_f and test_postgres_f, each calling f(*state); CASES(f) registers
 * them with the including file's setup_sqlite, setup_postgres and teardown. */
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
