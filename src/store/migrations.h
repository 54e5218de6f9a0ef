/* eventwire — the store's migrations, embedded from src/store/migrations/<dialect>/NNN_*.sql. */
#ifndef EW_STORE_MIGRATIONS_H
#define EW_STORE_MIGRATIONS_H

#include <stddef.h>

typedef struct ew_migration {
    int number;       /* from the file name: 1 for 001_init.sql */
    const char *name; /* the file name without .sql */
    const char *sql;  /* the whole file */
} ew_migration;

extern const ew_migration ew__migrations_sqlite[];
extern const size_t ew__migrations_sqlite_count;
extern const ew_migration ew__migrations_postgresql[];
extern const size_t ew__migrations_postgresql_count;

#endif
