/* Test support: per-case databases (case_db.h). */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "support/case_db.h"
#include "support/pg.h"

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

void ew_test_rmtree(const char *dir)
{
    if (dir && *dir) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int ew_test_db_create(int pg, const char *tag, const char *file, char dir[64], char **url)
{
    dir[0] = '\0';
    if (pg) {
        char msg[512];
        if (!(*url = ew_test_pg_create(msg, sizeof msg))) {
            fprintf(stderr, "postgres: %s\n", msg);
            return -1;
        }
        return 0;
    }
    snprintf(dir, 64, "/tmp/ew-%.20s-XXXXXX", tag);
    size_t n = strlen(dir) + strlen(file) + 16;
    if (!mkdtemp(dir) || !(*url = malloc(n))) {
        fprintf(stderr, "cannot make a folder for the case's database\n");
        return -1;
    }
    snprintf(*url, n, "sqlite:%s/%s", dir, file);
    return 0;
}

void ew_test_db_drop(int pg, const char *dir, char *url)
{
    if (pg) {
        ew_test_pg_drop(url);
        return;
    }
    ew_test_rmtree(dir);
    free(url);
}
