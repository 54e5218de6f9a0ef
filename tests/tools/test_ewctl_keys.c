/* ewctl and encrypted fields: what `ewctl store` and `ewctl tail` print without the key file
 * (ciphertext) and with `tail --decrypt` (plaintext), and `ewctl keys rotate` (the key-encryption
 * key's rotation), which keeps every stored event readable. On the embedded SQLite bus, in a
 * folder of the case's own; with the key store in it, and on PostgreSQL (KEY_STORE_URL).
 * ew-fixture: postgres */
#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "support/case_db.h"
#include "support/ew_test.h"
#include "eventwire/id.h"

typedef struct fx {
    char dir[64], user[EW_UUID_LEN + 1];
    char *pg_url; /* the key store on PostgreSQL: the case's database; NULL on SQLite */
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-ctlkeys-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(chdir(f->dir), 0);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    setenv("EVENT_STORE_URL", "sqlite:var/eventwire.db", 1);
    unsetenv("EVENT_ENCRYPTION");
    ew_uuid7(f->user);
    *state = f;
    return 0;
}

static int setup_postgres(void **state)
{
    char none[64];
    if (setup(state)) return -1;
    fx *f = *state;
    if (ew_test_db_create(1, "ctlkeys", "", none, &f->pg_url)) return -1;
    setenv("KEY_STORE_URL", f->pg_url, 1);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    unsetenv("KEY_STORE_URL");
    if (f->pg_url) ew_test_db_drop(1, "", f->pg_url);
    char cmd[128];
    assert_int_equal(chdir("/"), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* `ewctl ARGS`: its exit status; *out and *err are the caller's to free. */
static int ewctl(const char *args, char **out, char **err)
{
    return ew_test_ewctl(args, NULL, out, err);
}

static void publish(fx *f)
{
    char args[512], *out, *err;
    snprintf(args, sizeof args,
             "publish user.registered --subject %s --data "
             "'{\"user_id\":\"%s\",\"email\":\"grace@example.com\",\"username\":\"grace_h\","
             "\"roles\":[\"user\"]}'",
             f->user, f->user);
    if (ewctl(args, &out, &err) != 0) fail_msg("ewctl %s: %s", args, err);
    free(out);
    free(err);
}

static char *tail_one(const char *extra, int *status)
{
    char args[256], *out, *err;
    snprintf(args, sizeof args, "tail user.registered --from-beginning --count 1 %s", extra);
    *status = ewctl(args, &out, &err);
    if (*status != 0) {
        free(out);
        return err;
    }
    free(err);
    return out;
}

static void test_tail_prints_ciphertext_unless_decrypt(void **state)
{
    fx *f = *state;
    publish(f);
    int st;
    char *plain = tail_one("", &st);
    assert_int_equal(st, 0);
    assert_null(strstr(plain, "grace@example.com"));
    assert_null(strstr(plain, "grace_h"));
    assert_non_null(strstr(plain, "\"email\":\"ewenc1."));
    free(plain);
    char *clear = tail_one("--decrypt", &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(clear, "\"email\":\"grace@example.com\""));
    assert_non_null(strstr(clear, "\"username\":\"grace_h\""));
    free(clear);
    /* the stored copy is ciphertext too */
    char args[128], *out, *err;
    snprintf(args, sizeof args, "store stream %s", f->user);
    assert_int_equal(ewctl(args, &out, &err), 0);
    assert_non_null(strstr(out, f->user));
    assert_null(strstr(out, "grace@example.com"));
    free(out);
    free(err);
    /* without the key file, --decrypt says so and prints nothing in clear */
    assert_int_equal(unlink("var/keys/eventwire.kek"), 0);
    char *msg = tail_one("--decrypt", &st);
    assert_int_not_equal(st, 0);
    assert_non_null(strstr(msg, "is missing"));
    assert_null(strstr(msg, "grace@example.com"));
    free(msg);
    /* the one tail that decrypted is in the operator's chain: what, never what it read */
    assert_int_equal(ewctl("audit list --service ewctl", &out, &err), 0);
    static const char decrypted[] =
        "\"actor\":\"operator\",\"action\":\"events.decrypted\",\"subject\":null,"
        "\"details\":{\"pattern\":\"user.registered\"}";
    const char *e1 = strstr(out, decrypted);
    assert_non_null(e1);
    assert_null(strstr(e1 + sizeof decrypted - 1, "events.decrypted"));
    assert_null(strstr(out, "grace"));
    free(out);
    free(err);
}

static void test_keys_rotate_rewraps_and_keeps_events_readable(void **state)
{
    fx *f = *state;
    publish(f);
    struct stat before, after;
    assert_int_equal(stat("var/keys/eventwire.kek", &before), 0);
    FILE *k = fopen("var/keys/eventwire.kek", "rb");
    unsigned char old[32], now[32];
    assert_int_equal(fread(old, 1, 32, k), 32);
    fclose(k);
    if (f->pg_url) { /* the data key is in PostgreSQL */
        PGconn *c = PQconnectdb(f->pg_url);
        PGresult *r = PQexec(c, "SELECT count(*) FROM key_store.subject_keys WHERE wrapped IS NOT "
                                "NULL");
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(r, 0, 0), "1");
        PQclear(r);
        PQfinish(c);
    }
    char *out, *err;
    if (ewctl("keys rotate", &out, &err) != 0) fail_msg("keys rotate: %s", err);
    assert_non_null(strstr(out, "\"rewrapped\":1"));
    assert_non_null(strstr(out, "\"key_file\":\"var/keys/eventwire.kek\""));
    free(out);
    free(err);
    assert_int_equal(stat("var/keys/eventwire.kek", &after), 0);
    assert_int_equal(after.st_mode & 0777, 0600);
    k = fopen("var/keys/eventwire.kek", "rb");
    assert_int_equal(fread(now, 1, 32, k), 32);
    fclose(k);
    assert_memory_not_equal(old, now, 32);
    int st;
    char *clear = tail_one("--decrypt", &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(clear, "\"email\":\"grace@example.com\""));
    free(clear);
    /* the operator's audit chain has the rotation, with figures only, then the tail that
     * decrypted, and holds */
    if (ewctl("audit list --service ewctl", &out, &err) != 0) fail_msg("audit list: %s", err);
    assert_non_null(strstr(out, "\"actor\":\"operator\",\"action\":\"keys.kek_rotated\""));
    assert_non_null(strstr(out, "\"details\":{\"rewrapped\":1,\"erased\":0}"));
    assert_null(strstr(out, f->user));
    assert_null(strstr(out, "grace"));
    free(out);
    free(err);
    if (ewctl("audit verify --service ewctl --key var/keys/ewctl.audit.key.pub", &out, &err) != 0)
        fail_msg("audit verify: %s", err);
    assert_non_null(strstr(out, "\"service\":\"ewctl\",\"ok\":true,\"entries\":2"));
    free(out);
    free(err);
    assert_int_equal(stat("var/keys/ewctl.audit.key", &after), 0);
    assert_int_equal(after.st_mode & 0777, 0600);
    /* --alg without --service is a mistake, not a key-encryption key rotation */
    assert_int_equal(ewctl("keys rotate --alg mac", &out, &err), 2);
    free(out);
    free(err);
    /* and with EVENT_ENCRYPTION=off there is nothing to rotate */
    setenv("EVENT_ENCRYPTION", "off", 1);
    assert_int_equal(ewctl("keys rotate", &out, &err), 1);
    assert_non_null(strstr(err, "EVENT_ENCRYPTION=off"));
    unsetenv("EVENT_ENCRYPTION");
    free(out);
    free(err);
}

#define CASE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
static const struct CMUnitTest tests[] = {
    CASE(test_tail_prints_ciphertext_unless_decrypt),
    CASE(test_keys_rotate_rewraps_and_keeps_events_readable),
    {"test_keys_rotate_rewraps_and_keeps_events_readable_on_postgresql",
     test_keys_rotate_rewraps_and_keeps_events_readable, setup_postgres, teardown, NULL},
};

EW_TEST_MAIN(tests)
