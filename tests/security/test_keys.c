/* Tests of the key store (eventwire/keys.h): where it is by default, the file made 0600 in a 0700
 * folder, a file open to others refused, keys added, read back and listed, a duplicate kid
 * refused, rotation retiring the old key at the end of its grace period, migrations applied once
 * across reopenings, a second opening in one process that leaves the first one's locks alone,
 * bad URLs refused with their reason. Keys, rotation and migrations run on SQLite and on
 * PostgreSQL (KEY_STORE_URL=postgresql://...).
 * ew-fixture: postgres */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "eventwire/keys.h"
#include "support/case_db.h"
#include "support/ew_test.h"

typedef struct fx {
    char dir[64];
    char url[200];
    char path[160];
    int pg;
    char *pg_url; /* PostgreSQL: the case's database */
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-keys-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->path, sizeof f->path, "%s/keys/keys.db", f->dir);
    snprintf(f->url, sizeof f->url, "sqlite:%s", f->path);
    *state = f;
    return 0;
}

static int setup_sqlite(void **state)
{
    return setup(state);
}

static int setup_postgres(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char dir[64];
    if (ew_test_db_create(1, "keys", "", dir, &f->pg_url)) {
        free(f);
        return -1;
    }
    f->pg = 1;
    snprintf(f->url, sizeof f->url, "%s", f->pg_url);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->pg) {
        ew_test_db_drop(1, "", f->pg_url);
        free(f);
        return 0;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0) return -1;
    free(f);
    return 0;
}

static ew_keys *open_store(const fx *f)
{
    ew_keys *k;
    ew_error err = {0};
    if (ew_keys_open(&k, &(ew_keys_options){.url = f->url}, &err)) fail_msg("%s", err.msg);
    return k;
}

static void test_default_url_beside_the_event_store(void **state)
{
    (void)state;
    ew_config *c;
    ew_error err = {0};
    char buf[256];
    assert_int_equal(ew_config_new(&c, &err), 0);
    assert_string_equal(ew_keys_default_url(c, buf, sizeof buf), "sqlite:var/keys/keys.db");
    assert_int_equal(ew_config_set(c, "EVENT_STORE_URL", "sqlite:/srv/ew/events.db", &err), 0);
    assert_string_equal(ew_keys_default_url(c, buf, sizeof buf), "sqlite:/srv/ew/keys/keys.db");
    assert_int_equal(ew_config_set(c, "EVENT_STORE_URL", "sqlite:events.db", &err), 0);
    assert_string_equal(ew_keys_default_url(c, buf, sizeof buf), "sqlite:keys/keys.db");
    assert_int_equal(ew_config_set(c, "EVENT_STORE_URL", "postgresql://h/db", &err), 0);
    assert_string_equal(ew_keys_default_url(c, buf, sizeof buf), "sqlite:var/keys/keys.db");
    assert_int_equal(ew_config_set(c, "KEY_STORE_URL", "sqlite:/etc/ew/k.db", &err), 0);
    assert_string_equal(ew_keys_default_url(c, buf, sizeof buf), "sqlite:/etc/ew/k.db");
    assert_null(ew_keys_default_url(c, buf, 8));
    ew_config_free(c);
}

static void test_file_is_private(void **state)
{
    fx *f = *state;
    ew_keys *k = open_store(f);
    assert_string_equal(ew_keys_path(k), f->path);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char dir[128];
    snprintf(dir, sizeof dir, "%s/keys", f->dir);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    ew_keys_close(k);

    /* opened by others' eyes: refused, and the message says so */
    assert_int_equal(chmod(f->path, 0644), 0);
    ew_keys *k2 = NULL;
    ew_error err = {0};
    assert_int_equal(ew_keys_open(&k2, &(ew_keys_options){.url = f->url}, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "must be 0600"));
    assert_null(k2);
}

static void add_get_list(fx *f)
{
    ew_keys *k = open_store(f);
    ew_error err = {0};
    ew_key mac, ed;
    unsigned char sk[EW_KEY_MATERIAL_MAX];
    assert_int_equal(ew_key_generate(&mac, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_key_generate(&ed, "service:user-service", EW_KEY_ED25519, sk, &err), 0);
    assert_int_equal(strlen(mac.kid), EW_KEY_ID_LEN);
    assert_string_not_equal(mac.kid, ed.kid);
    assert_int_equal(ew_keys_add(k, &mac, &err), 0);
    assert_int_equal(ew_keys_add(k, &ed, &err), 0);
    assert_int_equal(ew_keys_add(k, &mac, &err), EW_EEXIST);

    ew_key got;
    assert_int_equal(ew_keys_get(k, mac.kid, &got, &err), 0);
    assert_string_equal(got.owner, "service:auth-service");
    assert_int_equal(got.alg, EW_KEY_MAC);
    assert_int_equal(got.material_len, 32);
    assert_memory_equal(got.material, mac.material, 32);
    assert_int_equal(got.retired_us, 0);
    assert_true(ew_key_current(&got, ew_now_us()));
    assert_int_equal(ew_keys_get(k, ed.kid, &got, &err), 0);
    assert_int_equal(got.alg, EW_KEY_ED25519);
    assert_memory_equal(got.material, ed.material, 32);
    assert_int_equal(ew_keys_get(k, "0123456789abcdef", &got, &err), EW_ENOTFOUND);

    /* bad keys are refused with the reason */
    ew_key bad = mac;
    snprintf(bad.kid, sizeof bad.kid, "XYZ");
    assert_int_equal(ew_keys_add(k, &bad, &err), EW_EINVAL);
    bad = mac;
    bad.material_len = 5;
    assert_int_equal(ew_keys_add(k, &bad, &err), EW_EINVAL);
    assert_non_null(strstr(err.msg, "material"));
    ew_keys_close(k);

    /* reopened: migrations are not applied twice, the keys are there */
    k = open_store(f);
    assert_int_equal(ew_keys_get(k, mac.kid, &got, &err), 0);
    ew_keys_close(k);
}

typedef struct listed {
    int n;
    char owners[8][EW_KEY_OWNER_MAX];
    ew_key keys[8];
} listed;

static int keep(void *ud, const ew_key *key)
{
    listed *l = ud;
    if (l->n < 8) {
        snprintf(l->owners[l->n], EW_KEY_OWNER_MAX, "%s", key->owner);
        l->keys[l->n] = *key;
    }
    l->n++;
    return 0;
}

static void rotation_retires_after_grace(fx *f)
{
    ew_keys *k = open_store(f);
    ew_error err = {0};
    ew_key k1, k2, k3, other;
    assert_int_equal(ew_key_generate(&k1, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_key_generate(&other, "service:user-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_keys_add(k, &k1, &err), 0);
    assert_int_equal(ew_keys_add(k, &other, &err), 0);

    int retired = -1;
    int64_t before = ew_now_us();
    assert_int_equal(ew_key_generate(&k2, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_keys_rotate(k, &k2, 3600 * 1000000LL, &retired, &err), 0);
    assert_int_equal(retired, 1);
    ew_key got;
    assert_int_equal(ew_keys_get(k, k1.kid, &got, &err), 0);
    /* retired an hour from now: still current now, not after */
    assert_true(got.retired_us >= before + 3600 * 1000000LL);
    assert_true(ew_key_current(&got, ew_now_us()));
    assert_false(ew_key_current(&got, got.retired_us));
    assert_int_equal(ew_keys_get(k, other.kid, &got, &err), 0);
    assert_int_equal(got.retired_us, 0); /* another owner's key is untouched */

    /* rotating again with no grace retires both earlier keys at once, k1 earlier than planned */
    assert_int_equal(ew_key_generate(&k3, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_keys_rotate(k, &k3, 0, &retired, &err), 0);
    assert_int_equal(retired, 2);
    assert_int_equal(ew_keys_get(k, k1.kid, &got, &err), 0);
    assert_false(ew_key_current(&got, ew_now_us()));
    assert_int_equal(ew_keys_get(k, k3.kid, &got, &err), 0);
    assert_true(ew_key_current(&got, ew_now_us()));

    /* a rotation whose new key cannot be added changes nothing */
    ew_key dup = k3;
    assert_int_equal(ew_keys_rotate(k, &dup, 0, &retired, &err), EW_EEXIST);
    assert_int_equal(ew_keys_get(k, k3.kid, &got, &err), 0);
    assert_int_equal(got.retired_us, 0);

    listed l = {0};
    assert_int_equal(ew_keys_list(k, "service:auth-service", keep, &l, &err), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.keys[0].kid, k1.kid);
    assert_string_equal(l.keys[2].kid, k3.kid);
    listed all = {0};
    assert_int_equal(ew_keys_list(k, NULL, keep, &all, &err), 0);
    assert_int_equal(all.n, 4);
    assert_string_equal(all.owners[3], "service:user-service");
    ew_keys_close(k);
}

BOTH(add_get_list)
BOTH(rotation_retires_after_grace)

/* Two handles on one PostgreSQL store, as two processes have: the second finds the migrations
 * applied and the first one's keys, and a rotation by one is what the other reads; its name
 * (ew_keys_path) shows no password. */
static void test_postgres_two_handles(void **state)
{
    fx *f = *state;
    ew_keys *a = open_store(f), *b = open_store(f);
    assert_null(strstr(ew_keys_path(a), "@"));
    assert_int_equal(strncmp(ew_keys_path(a), "postgres", 8), 0);
    ew_error err = {0};
    ew_key k1, k2, got;
    assert_int_equal(ew_key_generate(&k1, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_keys_add(a, &k1, &err), 0);
    assert_int_equal(ew_keys_get(b, k1.kid, &got, &err), 0);
    assert_memory_equal(got.material, k1.material, 32);
    assert_int_equal(ew_keys_add(b, &k1, &err), EW_EEXIST);
    assert_int_equal(ew_key_generate(&k2, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    int retired = 0;
    assert_int_equal(ew_keys_rotate(b, &k2, 0, &retired, &err), 0);
    assert_int_equal(retired, 1);
    assert_int_equal(ew_keys_get(a, k1.kid, &got, &err), 0);
    assert_false(ew_key_current(&got, ew_now_us()));
    ew_keys_close(b);
    ew_keys_close(a);
}

/* The server ends the store's session (a restart, an idle timeout): the next call connects again
 * and answers. */
static void test_postgres_reconnects(void **state)
{
    fx *f = *state;
    ew_keys *k = open_store(f);
    ew_error err = {0};
    ew_key key, got;
    assert_int_equal(ew_key_generate(&key, "service:auth-service", EW_KEY_MAC, NULL, &err), 0);
    assert_int_equal(ew_keys_add(k, &key, &err), 0);
    PGconn *c = PQconnectdb(f->url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = 'eventwire-keys' AND datname = "
                            "current_database() AND pid <> pg_backend_pid()");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    PQfinish(c);
    if (ew_keys_get(k, key.kid, &got, &err)) fail_msg("after the session ended: %s", err.msg);
    assert_memory_equal(got.material, key.material, 32);
    ew_keys_close(k);
}

static void test_bad_urls(void **state)
{
    (void)state;
    ew_keys *k = NULL;
    ew_error err = {0};
    assert_int_equal(ew_keys_open(&k, &(ew_keys_options){.url = "redis://x"}, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "KEY_STORE_URL"));
    assert_int_equal(ew_keys_open(&k, &(ew_keys_options){.url = "sqlite::memory:"}, &err),
                     EW_ECONFIG);
    /* a server that is not there: the reason, and not the password */
    assert_int_equal(
        ew_keys_open(&k, &(ew_keys_options){.url = "postgresql://ew:hunter2@127.0.0.1:1/db"}, &err),
        EW_ECONNECT);
    assert_non_null(strstr(err.msg, "postgresql://127.0.0.1:1/db"));
    assert_null(strstr(err.msg, "hunter2"));
    assert_int_equal(ew_keys_open(&k, &(ew_keys_options){.url = "sqlite:/proc/nope/keys.db"}, &err),
                     EW_ECONFIG);
    assert_null(k);
}

/* A process that holds a read transaction on the key store opens it again (the bus's signing
 * keys and its field keys each open one): another process must still wait to write. A close() of
 * any descriptor on the file would have dropped this process's locks, and a writer elsewhere could
 * then change the pages under the read (seen as "disk I/O error" on the key store). */
static void test_second_open_keeps_locks(void **state)
{
    fx *f = *state;
    ew_keys *first = open_store(f);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", 0, 0, 0), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT * FROM key_store_migrations", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW); /* holds SHARED */
    ew_keys *second = open_store(f);
    pid_t pid = fork();
    if (pid == 0) {
        sqlite3 *other;
        if (sqlite3_open(f->path, &other) != SQLITE_OK) _exit(2);
        _exit(sqlite3_exec(other, "BEGIN EXCLUSIVE", 0, 0, 0) == SQLITE_BUSY ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* 1: the other process could write */
    sqlite3_finalize(st);
    sqlite3_exec(db, "COMMIT", 0, 0, 0);
    sqlite3_close(db);
    ew_keys_close(second);
    ew_keys_close(first);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_default_url_beside_the_event_store),
    cmocka_unit_test_setup_teardown(test_file_is_private, setup, teardown),
    CASES(add_get_list),
    CASES(rotation_retires_after_grace),
    cmocka_unit_test_setup_teardown(test_postgres_two_handles, setup_postgres, teardown),
    cmocka_unit_test_setup_teardown(test_postgres_reconnects, setup_postgres, teardown),
    cmocka_unit_test_setup_teardown(test_second_open_keeps_locks, setup, teardown),
    cmocka_unit_test(test_bad_urls),
};

EW_TEST_MAIN(tests)
