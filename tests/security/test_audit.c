/* Tests of the audit chain (eventwire/audit.h) on SQLite and PostgreSQL: entries chain and
 * checkpoints sign; verification names the first entry after an edit, a deletion, an insertion,
 * a swap, a cut-off tail, and a checkpoint signed by another key; the key file is made private
 * and a key file open to others is refused; an entry appended in a transaction commits and
 * rolls back with it; `ewctl audit` lists, verifies and prints heads.
 * ew-fixture: postgres */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "eventwire/audit.h"
#include "store/store_env.h"

/* A folder for the key, and the key file's path in it. */
typedef struct keydir {
    char dir[64];
    char file[128];
} keydir;

static void keydir_make(keydir *k)
{
    snprintf(k->dir, sizeof k->dir, "/tmp/ew-audit-XXXXXX");
    assert_non_null(mkdtemp(k->dir));
    snprintf(k->file, sizeof k->file, "%s/keys/auth-service.audit.key", k->dir);
}

static ew_audit *open_chain(env *e, keydir *k)
{
    ew_audit *a;
    ew_error err = {0};
    if (ew_audit_open(&a, e->s, "auth-service", k->file, &err)) fail_msg("%s", err.msg);
    return a;
}

static void append_n(ew_audit *a, int n)
{
    ew_error err = {0};
    for (int i = 0; i < n; i++) {
        char subject[40], details[64];
        snprintf(subject, sizeof subject, "user-%d", i % 7);
        snprintf(details, sizeof details, "{\"n\":%d}", i);
        int64_t seq;
        if (ew_audit_append(a, i % 3 ? "user:u1" : "operator",
                            i % 2 ? "auth.login" : "auth.login_failed", subject,
                            i % 5 ? details : NULL, &seq, &err))
            fail_msg("%s", err.msg);
    }
}

static ew_audit_report verify(env *e, const char *key_hex)
{
    ew_audit_report r;
    ew_error err = {0};
    if (ew_audit_verify(e->s, key_hex, &r, &err)) fail_msg("verify: %s", err.msg);
    return r;
}

static void sql(env *e, const char *statement)
{
    ew_txn *t;
    ew_error err = {0};
    if (ew_store_begin(e->s, &t, &err) || ew_txn_exec(t, statement, NULL, 0, NULL, &err) ||
        ew_txn_commit(t, &err))
        fail_msg("%s: %s", statement, err.msg);
}

static void chain_holds_and_checkpoints_sign(env *e)
{
    keydir k;
    keydir_make(&k);
    ew_audit *a = open_chain(e, &k);
    append_n(a, 250);
    ew_audit_report r = verify(e, NULL);
    assert_int_equal(r.first_bad, 0);
    assert_int_equal(r.entries, 250);
    assert_int_equal(r.checkpoints, 2); /* at 100 and 200 */
    ew_audit_close(a);                  /* signs the head: 250 */
    r = verify(e, NULL);
    assert_int_equal(r.checkpoints, 3);
    ew_audit_checkpoint_row c;
    int found;
    ew_error err = {0};
    assert_int_equal(ew_audit_latest_checkpoint(e->s, &c, &found, &err), 0);
    assert_true(found);
    assert_int_equal(c.seq, 250);
    /* the key file is the owner's alone, in a folder of the owner's alone; .pub is the key */
    struct stat st;
    assert_int_equal(stat(k.file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char dir[128];
    snprintf(dir, sizeof dir, "%s/keys", k.dir);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char pub[160], hex[80];
    snprintf(pub, sizeof pub, "%s.pub", k.file);
    FILE *f = fopen(pub, "r");
    assert_non_null(f);
    assert_non_null(fgets(hex, sizeof hex, f));
    fclose(f);
    hex[strcspn(hex, "\n")] = '\0';
    assert_string_equal(hex, c.public_key);
    assert_int_equal(verify(e, hex).first_bad, 0);
    /* reopened, the same key signs on */
    a = open_chain(e, &k);
    append_n(a, 1);
    ew_audit_close(a);
    assert_int_equal(verify(e, hex).first_bad, 0);
    /* a key other than the service's is seen */
    assert_int_equal(
        verify(e, "00000000000000000000000000000000000000000000000000000000000000aa").first_bad,
        100);
    /* the listing: one subject, in order */
    ew_test_rmtree(k.dir);
}
BOTH(chain_holds_and_checkpoints_sign)

typedef struct tamper {
    const char *what;
    const char *const *sql;
    int64_t first_bad;
    const char *reason;
} tamper;

/* Each tampering on a fresh chain of 30 entries names the first entry it touched. */
static void every_tampering_is_named(env *e)
{
    static const char *const edit[] = {
        "UPDATE event_store.audit_log SET actor = 'operator' WHERE seq = 12", NULL};
    static const char *const del[] = {"DELETE FROM event_store.audit_log WHERE seq = 7", NULL};
    /* an insertion: the later entries move up one, a forged entry takes seq 20 */
    static const char *const ins[] = {
        "UPDATE event_store.audit_log SET seq = seq + 1000 WHERE seq >= 20",
        "UPDATE event_store.audit_log SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO event_store.audit_log (seq, recorded_at, actor, action, subject, details,"
        " prev_hash, hash) SELECT 20, recorded_at, 'operator', 'user.role_changed', subject,"
        " NULL, hash, hash FROM event_store.audit_log WHERE seq = 19",
        "UPDATE event_store.audit_head SET seq = seq + 1", NULL};
    /* two entries swap places (their contents trade seqs) */
    static const char *const swap[] = {"UPDATE event_store.audit_log SET seq = -1 WHERE seq = 5",
                                       "UPDATE event_store.audit_log SET seq = 5 WHERE seq = 6",
                                       "UPDATE event_store.audit_log SET seq = 6 WHERE seq = -1",
                                       NULL};
    /* the newest cut off, the head moved back to match: the checkpoint at 30 still says */
    static const char *const cut[] = {
        "DELETE FROM event_store.audit_log WHERE seq > 25",
        "UPDATE event_store.audit_head SET seq = 25,"
        " hash = (SELECT hash FROM event_store.audit_log WHERE seq = 25)",
        NULL};
    tamper cases[] = {
        {"edited", edit, 12, "changed"},  {"deleted", del, 7, "missing"},
        {"inserted", ins, 20, "changed"}, {"swapped", swap, 5, "does not follow"},
        {"cut off", cut, 26, "cut off"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sql(e, "DROP TABLE IF EXISTS event_store.audit_log");
        sql(e, "DROP TABLE IF EXISTS event_store.audit_head");
        sql(e, "DROP TABLE IF EXISTS event_store.audit_checkpoints");
        keydir k;
        keydir_make(&k);
        ew_audit *a = open_chain(e, &k);
        append_n(a, 30);
        ew_audit_close(a); /* the checkpoint at 30 */
        assert_int_equal(verify(e, NULL).first_bad, 0);
        for (const char *const *s = cases[i].sql; *s; s++)
            sql(e, *s);
        ew_audit_report r = verify(e, NULL);
        if (r.first_bad != cases[i].first_bad || !strstr(r.reason, cases[i].reason))
            fail_msg("%s: first_bad %lld (%s), expected %lld (%s)", cases[i].what,
                     (long long)r.first_bad, r.reason, (long long)cases[i].first_bad,
                     cases[i].reason);
        ew_test_rmtree(k.dir);
    }
}
BOTH(every_tampering_is_named)

/* An ew_audit_append waiting for the store while another thread's transaction holds it. */
typedef struct waiter {
    ew_audit *a;
    int rc;
} waiter;

static void *append_one(void *ud)
{
    waiter *w = ud;
    ew_error err = {0};
    w->rc = ew_audit_append(w->a, "operator", "dlq.retried", "d-1", NULL, NULL, &err);
    return NULL;
}

/* ew_audit_append_in: the entry commits and rolls back with the caller's transaction, the
 * chain holds either way, and it does not wait for an ew_audit_append that waits for it. */
static void entries_in_a_transaction_go_with_it(env *e)
{
    keydir k;
    keydir_make(&k);
    ew_audit *a = open_chain(e, &k);
    append_n(a, 3);
    ew_txn *t;
    ew_error err = {0};
    int64_t seq = 0;
    /* rolled back: no entry, and the next one takes its number */
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew_audit_append_in(a, t, "service:user-service", "user.data_erased", "u-1",
                                        "{\"records\":2}", &seq, &err),
                     0);
    assert_int_equal(seq, 4);
    ew_txn_rollback(t);
    ew_audit_report r = verify(e, NULL);
    assert_int_equal(r.first_bad, 0);
    assert_int_equal(r.entries, 3);
    /* committed, with an ew_audit_append of another thread waiting for the store meanwhile */
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    waiter w = {a, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, append_one, &w), 0);
    usleep(100 * 1000); /* it holds the chain's mutex and waits for the store, which t holds */
    assert_int_equal(ew_audit_append_in(a, t, "service:user-service", "user.data_erased", "u-1",
                                        "{\"records\":2}", &seq, &err),
                     0);
    assert_int_equal(seq, 4);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    pthread_join(th, NULL);
    assert_int_equal(w.rc, 0);
    r = verify(e, NULL);
    assert_int_equal(r.first_bad, 0);
    assert_int_equal(r.entries, 5);
    /* an entry without an actor is refused; the chain stays whole */
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    assert_int_equal(ew_audit_append_in(a, t, "", "user.data_erased", "u-1", NULL, NULL, &err),
                     EW_EINVAL);
    ew_txn_rollback(t);
    ew_audit_close(a); /* signs the head: 5 */
    r = verify(e, NULL);
    assert_int_equal(r.first_bad, 0);
    assert_int_equal(r.checkpoints, 1);
    ew_test_rmtree(k.dir);
}
BOTH(entries_in_a_transaction_go_with_it)

static void a_key_file_open_to_others_is_refused(env *e)
{
    keydir k;
    keydir_make(&k);
    ew_audit_close(open_chain(e, &k)); /* makes the key */
    assert_int_equal(chmod(k.file, 0644), 0);
    ew_audit *a = NULL;
    ew_error err = {0};
    assert_int_equal(ew_audit_open(&a, e->s, "auth-service", k.file, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "0600"));
    assert_null(a);
    /* a file that is not a key */
    assert_int_equal(chmod(k.file, 0600), 0);
    assert_int_equal(truncate(k.file, 10), 0);
    assert_int_equal(ew_audit_open(&a, e->s, "auth-service", k.file, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "not an Ed25519 secret key"));
    ew_test_rmtree(k.dir);
}
BOTH(a_key_file_open_to_others_is_refused)

static void test_ewctl_audit(void **state)
{
    env *e = *state;
    keydir k;
    keydir_make(&k);
    ew_audit *a = open_chain(e, &k);
    append_n(a, 12);
    ew_audit_close(a);
    /* the chain is auth-service's database: SERVICE_DB_URL names it for ewctl */
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "%s", e->url);
    setenv("SERVICE_DB_URL", tmpl, 1);
    char *out, *errout;
    assert_int_equal(ew_test_ewctl("audit verify --service auth-service", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"service\":\"auth-service\",\"ok\":true,\"entries\":12"));
    free(out);
    assert_int_equal(
        ew_test_ewctl("audit list --service auth-service --subject user-3", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"seq\":4,"));
    assert_non_null(strstr(out, "\"seq\":11,"));
    assert_null(strstr(out, "\"seq\":5,"));
    free(out);
    assert_int_equal(ew_test_ewctl("audit checkpoint --service auth-service", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"seq\":12,"));
    assert_non_null(strstr(out, "\"signature\":\""));
    free(out);
    sql(e, "UPDATE event_store.audit_log SET subject = 'user-9' WHERE seq = 8");
    assert_int_equal(ew_test_ewctl("audit verify --service auth-service", NULL, &out, NULL), 1);
    assert_non_null(strstr(out, "\"ok\":false"));
    assert_non_null(strstr(out, "\"first_bad\":8"));
    free(out);
    assert_int_equal(ew_test_ewctl("audit verify --service billing", NULL, &out, &errout), 2);
    assert_non_null(strstr(errout, "no service 'billing'"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("audit prove", NULL, &out, &errout), 2);
    free(out);
    free(errout);
    unsetenv("SERVICE_DB_URL");
    ew_test_rmtree(k.dir);
}

static const struct CMUnitTest tests[] = {
    CASES(chain_holds_and_checkpoints_sign),
    CASES(every_tampering_is_named),
    CASES(entries_in_a_transaction_go_with_it),
    CASES(a_key_file_open_to_others_is_refused),
    cmocka_unit_test_setup_teardown(test_ewctl_audit, setup_sqlite, teardown),
};

EW_TEST_MAIN(tests)
