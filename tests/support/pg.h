/* Test support: a fresh PostgreSQL database for each test case, on the server that CTest starts
 * for test files marked `ew-fixture: postgres` (scripts/test-servers). CTest runs cases in
 * parallel, so no two cases share a database. */
#ifndef EW_TEST_PG_H
#define EW_TEST_PG_H

#include <stdbool.h>
#include <stddef.h>

/* The server's URL, malloc'ed: $EW_SERVERS_DIR/postgres.url under CTest, else $EW_PG_URL. NULL
 * when there is none, with the reason in msg. */
char *ew_test_pg_server_url(char *msg, size_t n);

/* Creates a database with a name no other case uses and returns its URL (malloc'ed), or NULL
 * with the reason in msg. */
char *ew_test_pg_create(char *msg, size_t n);

/* Drops the database of url (from ew_test_pg_create), even while connections to it are open,
 * and frees url. NULL is ignored. */
void ew_test_pg_drop(char *url);

/* The first column of the first row that sql answers on url's database, with one text parameter
 * (none when param is NULL), into *out (malloc'ed; NULL for SQL NULL or no row). 0, or -1 with
 * the reason printed. */
int ew_test_pg_value(const char *url, const char *sql, const char *param, char **out);

/* How many files of url's database (its folder under the server's base/) hold the n bytes of
 * needle, after a checkpoint has written every page to them, the first one's path into first
 * (cap bytes; may be NULL); -1 (the reason printed) when they cannot be read. */
int ew_test_pg_files_holding(const char *url, const void *needle, size_t n, char *first,
                             size_t cap);

/* Does the file at path hold the n bytes of needle? (false when it cannot be read) */
bool ew_test_file_holds(const char *path, const void *needle, size_t n);

#endif
