/* Tests of the files the library makes for itself (src/core/files.c): private folders whatever
 * the umask, a file written by processes that race appears whole and once (the first one's), and
 * making a file that is there already leaves this process's SQLite locks on it alone. */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "core/files.h"
#include "support/ew_test.h"

typedef struct fx {
    char dir[64];
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-files-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static void test_mkdirs_private_whatever_the_umask(void **state)
{
    fx *f = *state;
    char deep[160], file[200];
    snprintf(deep, sizeof deep, "%s/a/b/c", f->dir);
    mode_t old = umask(0);
    assert_int_equal(ew_mkdirs(deep), 0);
    umask(old);
    assert_int_equal(mode_of(deep), 0700);
    *strrchr(deep, '/') = '\0';
    assert_int_equal(mode_of(deep), 0700);
    /* one that exists is left as it is */
    assert_int_equal(chmod(deep, 0750), 0);
    snprintf(file, sizeof file, "%s/d/key", deep);
    assert_int_equal(ew_mkdirs_for(file), 0);
    assert_int_equal(mode_of(deep), 0750);
    *strrchr(file, '/') = '\0';
    assert_int_equal(mode_of(file), 0700);
    assert_int_equal(ew_mkdirs(deep), 0); /* again: nothing to do */
    /* a file in the way */
    snprintf(file, sizeof file, "%s/plain", f->dir);
    assert_int_equal(ew_file_write_new(file, "x", 1, 0600), 0);
    snprintf(deep, sizeof deep, "%s/plain/sub", f->dir);
    assert_int_equal(ew_mkdirs(deep), -1);
    assert_int_equal(errno, ENOTDIR);
}

static size_t read_all(const char *path, char *buf, size_t n)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t got = read(fd, buf, n);
    close(fd);
    return got < 0 ? 0 : (size_t)got;
}

enum { WRITERS = 8, BYTES = 64 * 1024 };

/* Eight processes write a different 64 KiB to one path at once while the parent reads it: every
 * read finds nothing or one writer's whole file, and all eight find the same winner's. */
static void test_write_new_racing_processes(void **state)
{
    fx *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/k/key", f->dir);
    assert_int_equal(ew_mkdirs_for(path), 0);
    int go[2], results[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(results), 0);
    for (int i = 0; i < WRITERS; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            static char data[BYTES];
            memset(data, 'a' + i, sizeof data);
            char c;
            close(go[1]);
            if (read(go[0], &c, 1) != 0) _exit(9); /* wait for the start */
            int rc = ew_file_write_new(path, data, sizeof data, 0600);
            char r = (char)(rc == 0 ? 'W' : rc == 1 ? 'L' : 'E');
            _exit(write(results[1], &r, 1) == 1 ? 0 : 9);
        }
        assert_true(pid > 0);
    }
    close(go[0]);
    close(go[1]); /* start */
    static char buf[BYTES + 1];
    int seen = 0, left = WRITERS, winners = 0, losers = 0;
    while (left) { /* read while they write */
        size_t n = read_all(path, buf, sizeof buf);
        if (n) {
            assert_int_equal(n, BYTES); /* never a part-written file */
            for (size_t j = 1; j < n; j++)
                assert_int_equal(buf[j], buf[0]);
            seen++;
        }
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0) continue;
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        char r;
        assert_int_equal(read(results[0], &r, 1), 1);
        winners += r == 'W';
        losers += r == 'L';
        left--;
    }
    close(results[0]);
    close(results[1]);
    assert_int_equal(winners, 1);
    assert_int_equal(losers, WRITERS - 1);
    assert_int_equal(read_all(path, buf, sizeof buf), BYTES);
    print_message("%d whole reads while they raced\n", seen);
    assert_int_equal(mode_of(path), 0600);
    /* no temporary file is left beside it */
    char cmd[200];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s/k | wc -l) -eq 1", f->dir);
    assert_int_equal(system(cmd), 0);
}

static void test_replace_and_modes(void **state)
{
    fx *f = *state;
    char path[128], buf[16];
    snprintf(path, sizeof path, "%s/pub", f->dir);
    mode_t old = umask(077);
    assert_int_equal(ew_file_replace(path, "one", 3, 0644), 0);
    umask(old);
    assert_int_equal(mode_of(path), 0644);
    assert_int_equal(ew_file_replace(path, "second", 6, 0644), 0);
    assert_int_equal(read_all(path, buf, sizeof buf), 6);
    assert_memory_equal(buf, "second", 6);
    assert_int_equal(ew_file_write_new(path, "third", 5, 0600), 1); /* kept */
    assert_int_equal(read_all(path, buf, sizeof buf), 6);
    /* a folder that is not there is an error, with errno */
    snprintf(path, sizeof path, "%s/none/pub", f->dir);
    assert_int_equal(ew_file_replace(path, "x", 1, 0600), -1);
    assert_int_equal(errno, ENOENT);
}

/* The parent holds a read transaction on a database; making the file "if missing" must not drop
 * that lock (a close() of any descriptor on the file would), so a writer in another process still
 * waits. Key stores opened twice in one process depend on it. */
static void test_create_empty_keeps_sqlite_locks(void **state)
{
    fx *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/db", f->dir);
    assert_int_equal(ew_file_create_empty(path, 0600), 0);
    assert_int_equal(mode_of(path), 0600);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE t (x); INSERT INTO t VALUES (1)", 0, 0, 0),
                     SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_exec(db, "BEGIN", 0, 0, 0), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT x FROM t", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW); /* holds SHARED */
    assert_int_equal(ew_file_create_empty(path, 0600), 0);
    pid_t pid = fork();
    if (pid == 0) {
        sqlite3 *other;
        if (sqlite3_open(path, &other) != SQLITE_OK) _exit(2);
        int rc = sqlite3_exec(other, "BEGIN EXCLUSIVE", 0, 0, 0);
        _exit(rc == SQLITE_BUSY ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* 1: the other process got the database */
    sqlite3_finalize(st);
    sqlite3_exec(db, "COMMIT", 0, 0, 0);
    sqlite3_close(db);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_mkdirs_private_whatever_the_umask, setup, teardown),
    cmocka_unit_test_setup_teardown(test_write_new_racing_processes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_replace_and_modes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_create_empty_keeps_sqlite_locks, setup, teardown),
};

EW_TEST_MAIN(tests)
